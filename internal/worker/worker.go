// Package worker wires a baton worker together. Each duty is a service of its own:
//
//   - session.Rows registers the session (one row per incarnation) and marks it
//     draining or stopped; session.Heartbeater touches it and self-fences;
//   - claimer.Claimer claims dispatched tasks into free slots, runs them and
//     reconciles after a claim error;
//   - completer.Completer writes results in batches, fenced by attempt;
//   - drain.Drainer ends a session in order (shutdown or loss).
//
// When its session is lost — declared dead by a master, self-fenced after
// SelfFenceAfter without a heartbeat, or orphaned claims found — the worker kills
// its running tasks (their attempts belong to the failover now), marks the old
// session stopped if it still can, and registers a new session. Re-registering
// rather than exiting keeps the capacity without relying on a supervisor; the new
// session id is a new fencing identity, so nothing of the old incarnation can write.
package worker

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/baton-scheduler/baton/internal/claimer"
	"github.com/baton-scheduler/baton/internal/completer"
	"github.com/baton-scheduler/baton/internal/contain"
	"github.com/baton-scheduler/baton/internal/drain"
	"github.com/baton-scheduler/baton/internal/executor"
	"github.com/baton-scheduler/baton/internal/logfield"
	"github.com/baton-scheduler/baton/internal/notify"
	"github.com/baton-scheduler/baton/internal/service"
	"github.com/baton-scheduler/baton/internal/session"
	"github.com/baton-scheduler/baton/internal/store"
)

// TestSignals of every service of the worker (tests only). They are shared by the
// services of every session the worker registers.
type TestSignals struct {
	Registered service.TestSignal[int64] // a session was registered (its id)
	Heartbeat  session.HeartbeatTestSignals
	Liveness   session.LivenessTestSignals
	Claimer    claimer.TestSignals
	Completer  completer.TestSignals
	Drain      drain.TestSignals
}

// Worker runs tasks of one group.
type Worker struct {
	TestSignals TestSignals

	cfg       Config
	pool      *pgxpool.Pool
	log       *zap.Logger
	exec      *executor.Executor
	wake      notify.Signal
	cancels   notify.Signal // a task this worker runs was canceled (NOTIFY)
	rows      *session.Rows
	liveConn  *pgx.ConnConfig // the liveness lock's connection (nil: crash detection off)
	completer *completer.Completer
	session   atomic.Int64

	sessionsMu sync.Mutex
	sessions   []int64
}

// New validates cfg and connects; a wrong DSN fails here.
func New(ctx context.Context, cfg Config) (*Worker, error) {
	cfg = cfg.WithDefaults()
	if cfg.Name == "" {
		host, _ := os.Hostname()
		cfg.Name = fmt.Sprintf("%s-%d", host, os.Getpid())
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("worker config: %w", err)
	}
	pool, err := store.Open(ctx, cfg.DatabaseURL, int32(min(cfg.Slots, 8)+4))
	if err != nil {
		return nil, err
	}
	w := &Worker{
		cfg:     cfg,
		pool:    pool,
		log:     cfg.Logger.Named("worker"),
		exec:    &executor.Executor{Handlers: cfg.Handlers, MaxOutput: cfg.MaxOutput, AllowShell: cfg.AllowShell, ShellEnvAllow: cfg.ShellEnvAllow, Logger: cfg.Logger, Contain: contain.Options{FrozenAfter: cfg.SelfFenceAfter}},
		wake:    notify.NewSignal(),
		cancels: notify.NewSignal(),
	}
	if cfg.CrashDetectAfter > 0 {
		if w.liveConn, err = store.ConnConfig(cfg.DatabaseURL); err != nil {
			pool.Close()
			return nil, err
		}
	}
	w.rows = &session.Rows{Base: w.base("session"), Pool: pool,
		Spec: session.Spec{Name: cfg.Name, Group: cfg.Group, Slots: cfg.Slots, Version: cfg.Version}}
	w.completer = completer.New(w.base("completer"), pool, completer.Config{FlushInterval: cfg.Test.ResultFlushInterval, Metrics: cfg.Metrics})
	return w, nil
}

func (w *Worker) base(name string) service.Base {
	return service.NewBase(name, w.log, w.cfg.Clock)
}

// Pool is the worker's connection pool (for its pool metrics).
func (w *Worker) Pool() *pgxpool.Pool { return w.pool }

// SessionID is the current session (0 before registration).
func (w *Worker) SessionID() int64 { return w.session.Load() }

// Sessions returns every session this worker has registered, in order.
func (w *Worker) Sessions() []int64 {
	w.sessionsMu.Lock()
	defer w.sessionsMu.Unlock()
	return append([]int64(nil), w.sessions...)
}

// Run works until ctx is canceled, then drains: no new claims, running tasks get
// ShutdownGrace to finish, the rest are killed and handed back at once (the
// session is marked stopped, which masters fail over without waiting).
func (w *Worker) Run(ctx context.Context) error {
	defer w.pool.Close()
	_ = w.exec.Open() // containment detection, a previous incarnation's leftovers removed; errors fail shell tasks
	defer w.exec.Close()
	bg, stopBG := context.WithCancel(context.Background())
	var bgWG sync.WaitGroup
	bgWG.Add(1)
	go func() {
		defer bgWG.Done()
		(&notify.Listener{Pool: w.pool, Channels: []string{notify.ChannelClaim, notify.ChannelCancel}, Logger: w.log, OnNotify: func(channel, payload string) {
			switch {
			case channel == notify.ChannelCancel:
				if notify.ClaimFor(payload, strconv.FormatInt(w.session.Load(), 10)) {
					w.cancels.Wake() // a task we run was canceled
				}
			case payload == "g:"+w.cfg.Group: // tasks queued in our group
				w.wake.Wake()
			case notify.ClaimFor(payload, strconv.FormatInt(w.session.Load(), 10)): // tasks dispatched to us
				w.wake.Wake()
			}
		}}).Run(bg)
	}()
	w.completer.TestSignals = w.TestSignals.Completer
	_ = w.completer.Start(bg)
	defer func() {
		w.completer.Stop() // final flush of anything left
		stopBG()
		bgWG.Wait()
	}()

	for {
		reg, err := w.rows.Register(ctx)
		if err != nil {
			return nil // ctx canceled before a session existed: nothing to drain
		}
		w.session.Store(reg.ID)
		w.sessionsMu.Lock()
		w.sessions = append(w.sessions, reg.ID)
		w.sessionsMu.Unlock()
		w.TestSignals.Registered.Signal(reg.ID)
		if w.cfg.OnRegistered != nil {
			w.cfg.OnRegistered(reg.ID)
		}
		err = w.runSession(ctx, reg)
		if errors.Is(err, drain.ErrShutdown) {
			return nil
		}
		w.cfg.Metrics.SessionLost()
		w.log.Warn("session lost; its tasks were killed; registering a new session",
			logfield.SessionID(reg.ID), zap.Error(err))
	}
}

// runSession serves one session until it is lost or ctx ends (then it drains).
func (w *Worker) runSession(ctx context.Context, reg session.Registered) error {
	orphaned := make(chan error, 1)
	var hb *session.Heartbeater // set below, before any task starts
	cl := claimer.New(w.base("claimer"), w.pool, claimer.Config{
		Lease:     func() error { return hb.LeaseErr() },
		SessionID: reg.ID, Group: w.cfg.Group, Worker: w.cfg.Name, Slots: w.cfg.Slots, PollInterval: w.cfg.PollInterval,
		KillGrace: w.cfg.KillGrace, Exec: w.exec, Results: w.completer, Wake: w.wake, Cancels: w.cancels, Metrics: w.cfg.Metrics,
		OnOrphans: func(err error) {
			select {
			case orphaned <- err:
			default:
			}
		},
	})
	cl.TestSignals = w.TestSignals.Claimer
	var lv *session.Liveness // set below, before the heartbeater starts
	crashFence := time.Duration(0)
	if w.liveConn != nil {
		crashFence = w.cfg.CrashFenceAfter
	}
	hb = session.NewHeartbeater(w.base("heartbeat"), w.pool, session.HeartbeatConfig{
		SessionID: reg.ID, Interval: w.cfg.HeartbeatInterval, FenceAfter: w.cfg.SelfFenceAfter,
		Since: reg.Sent, CallTimeout: w.cfg.Test.HeartbeatCallTimeout, CrashFenceAfter: crashFence, Metrics: w.cfg.Metrics,
		// The fence kills the tasks first, from its own goroutine: nothing it
		// could wait for (a hung query, the claim loop) can delay the kill.
		OnLost: cl.Kill,
		// The shell tasks' supervisors enforce the same lease from their own
		// processes, so a frozen worker cannot keep them running past it.
		OnLease: func(long, short time.Time) {
			w.exec.SetLease(contain.Lease{Long: long, Short: short})
		},
		LockHungUp: func() bool { return lv != nil && lv.HungUp() },
		FastBeat:   w.exec.StaleLock,
	})
	hb.TestSignals = w.TestSignals.Heartbeat
	if w.liveConn != nil {
		lv = session.NewLiveness(w.base("liveness"), session.LivenessConfig{
			SessionID: reg.ID, ConnConfig: w.liveConn, OnHeld: hb.SetLockHeld, OnConn: w.exec.SetLockConn,
		})
		lv.TestSignals = w.TestSignals.Liveness
	}
	d := drain.New(w.base("drain"), drain.Config{
		SessionID: reg.ID, Grace: w.cfg.ShutdownGrace, TasksWait: w.cfg.KillGrace + drain.TasksWaitDefault,
		Tasks: cl, Results: w.completer, Session: w.rows, StopHeartbeat: hb.Stop,
	})
	d.TestSignals = w.TestSignals.Drain

	// Neither runs under ctx: a SIGTERM drains the session, it does not cut it off.
	_ = hb.Start(context.Background())
	if lv != nil {
		// Stopped (the lock let go) only once the session's tasks were killed or
		// drained: from then on the session may be declared dead at once.
		_ = lv.Start(context.Background())
		defer lv.Stop()
	}
	_ = cl.Start(context.Background())
	select {
	case <-ctx.Done():
		d.Drain(hb.Lost())
		return drain.ErrShutdown
	case err := <-hb.Lost():
		d.Abandon(err)
		return err
	case err := <-orphaned:
		d.Abandon(err)
		return err
	}
}
