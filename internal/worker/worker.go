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
//
// A worker serving several groups (Config.Groups) registers one session per
// group, in one transaction, and runs one claimer per session with the group's
// slots; the sessions share the pool, the executor, the result writer, one
// heartbeat statement and one liveness connection holding all their locks, so
// they live, are fenced and are lost together, and each group's tasks fail over
// to workers of that group exactly as for a single-group worker.
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

// Worker runs tasks of one group, or of several (Config.Groups).
type Worker struct {
	TestSignals TestSignals

	cfg       Config
	groups    []GroupSlots // Config.Served()
	pool      *pgxpool.Pool
	log       *zap.Logger
	exec      *executor.Executor
	wakes     []notify.Signal // per group: tasks queued in it or dispatched to its session
	cancels   []notify.Signal // per group: a task its session runs was canceled (NOTIFY)
	rows      []*session.Rows // per group
	liveConn  *pgx.ConnConfig // the liveness lock's connection (nil: crash detection off)
	completer *completer.Completer
	current   atomic.Pointer[[]int64] // the current session of each group, in groups order

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
	groups := cfg.Served()
	slots := 0
	for _, g := range groups {
		slots += g.Slots
	}
	// Every claimer polls on its own: a connection each beyond the usual few.
	pool, err := store.Open(ctx, cfg.DatabaseURL, int32(min(slots, 8)+3+len(groups)))
	if err != nil {
		return nil, err
	}
	w := &Worker{
		cfg:    cfg,
		groups: groups,
		pool:   pool,
		log:    cfg.Logger.Named("worker"),
		exec:   &executor.Executor{Handlers: cfg.Handlers, MaxOutput: cfg.MaxOutput, AllowShell: cfg.AllowShell, ShellEnvAllow: cfg.ShellEnvAllow, Logger: cfg.Logger, Contain: contain.Options{FrozenAfter: cfg.SelfFenceAfter}},
	}
	if cfg.CrashDetectAfter > 0 {
		if w.liveConn, err = store.ConnConfig(cfg.DatabaseURL); err != nil {
			pool.Close()
			return nil, err
		}
	}
	for _, g := range groups {
		w.rows = append(w.rows, &session.Rows{Base: w.base("session"), Pool: pool,
			Spec: session.Spec{Name: cfg.Name, Group: g.Name, Slots: g.Slots, Version: cfg.Version}})
		w.wakes = append(w.wakes, notify.NewSignal())
		w.cancels = append(w.cancels, notify.NewSignal())
	}
	w.completer = completer.New(w.base("completer"), pool, completer.Config{FlushInterval: cfg.Test.ResultFlushInterval, Metrics: cfg.Metrics})
	return w, nil
}

func (w *Worker) base(name string) service.Base {
	return service.NewBase(name, w.log, w.cfg.Clock)
}

// Pool is the worker's connection pool (for its pool metrics).
func (w *Worker) Pool() *pgxpool.Pool { return w.pool }

// SessionID is the current session (0 before registration); of the first group
// when the worker serves several.
func (w *Worker) SessionID() int64 {
	if ids := w.current.Load(); ids != nil {
		return (*ids)[0]
	}
	return 0
}

// SessionIDs maps each group served to its current session (nil before
// registration).
func (w *Worker) SessionIDs() map[string]int64 {
	ids := w.current.Load()
	if ids == nil {
		return nil
	}
	m := make(map[string]int64, len(w.groups))
	for i, g := range w.groups {
		m[g.Name] = (*ids)[i]
	}
	return m
}

// Groups is the groups the worker serves, with their slots.
func (w *Worker) Groups() []GroupSlots { return append([]GroupSlots(nil), w.groups...) }

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
		(&notify.Listener{Pool: w.pool, Channels: []string{notify.ChannelClaim, notify.ChannelCancel}, Logger: w.log, OnNotify: w.onNotify}).Run(bg)
	}()
	w.completer.TestSignals = w.TestSignals.Completer
	_ = w.completer.Start(bg)
	defer func() {
		w.completer.Stop() // final flush of anything left
		stopBG()
		bgWG.Wait()
	}()

	for {
		regs, err := session.RegisterAll(ctx, w.rows)
		if err != nil {
			return nil // ctx canceled before a session existed: nothing to drain
		}
		ids := make([]int64, len(regs))
		for i, r := range regs {
			ids[i] = r.ID
		}
		w.current.Store(&ids)
		w.sessionsMu.Lock()
		w.sessions = append(w.sessions, ids...)
		w.sessionsMu.Unlock()
		for _, id := range ids {
			w.TestSignals.Registered.Signal(id)
			if w.cfg.OnRegistered != nil {
				w.cfg.OnRegistered(id)
			}
		}
		err = w.runSession(ctx, regs)
		if errors.Is(err, drain.ErrShutdown) {
			return nil
		}
		w.cfg.Metrics.SessionLost()
		w.log.Warn("session lost; its tasks were killed; registering a new session",
			logfield.SessionIDs(ids), zap.Error(err))
	}
}

// onNotify wakes the claimer a NOTIFY concerns: tasks queued in its group ("g:"
// payload), dispatched to its session, or canceled while it runs them.
func (w *Worker) onNotify(channel, payload string) {
	ids := w.current.Load()
	for i, g := range w.groups {
		id := ""
		if ids != nil {
			id = strconv.FormatInt((*ids)[i], 10)
		}
		switch {
		case channel == notify.ChannelCancel:
			if notify.ClaimFor(payload, id) {
				w.cancels[i].Wake() // a task we run was canceled
			}
		case payload == "g:"+g.Name: // tasks queued in this group
			w.wakes[i].Wake()
		case notify.ClaimFor(payload, id): // tasks dispatched to this session
			w.wakes[i].Wake()
		}
	}
}

// runSession serves one incarnation — a session per group — until it is lost or
// ctx ends (then it drains). The sessions share one heartbeater, one liveness
// connection and one drain: losing any of them loses all.
func (w *Worker) runSession(ctx context.Context, regs []session.Registered) error {
	ids := make([]int64, len(regs))
	since := regs[0].Sent
	for i, r := range regs {
		ids[i] = r.ID
		if r.Sent.Before(since) {
			since = r.Sent
		}
	}
	orphaned := make(chan error, 1)
	var hb *session.Heartbeater // set below, before any task starts
	cls := make(claimers, len(regs))
	for i, reg := range regs {
		g := w.groups[i]
		cls[i] = claimer.New(service.NewBase("claimer", w.log.With(logfield.Group(g.Name)), w.cfg.Clock), w.pool, claimer.Config{
			Lease:     func() error { return hb.LeaseErr() },
			SessionID: reg.ID, Group: g.Name, Worker: w.cfg.Name, Slots: g.Slots, PollInterval: w.cfg.PollInterval,
			KillGrace: w.cfg.KillGrace, Exec: w.exec, Results: w.completer, Wake: w.wakes[i], Cancels: w.cancels[i], Metrics: w.cfg.Metrics,
			OnOrphans: func(err error) {
				select {
				case orphaned <- err:
				default:
				}
			},
		})
		cls[i].TestSignals = w.TestSignals.Claimer
	}
	var lv *session.Liveness // set below, before the heartbeater starts
	crashFence := time.Duration(0)
	if w.liveConn != nil {
		crashFence = w.cfg.CrashFenceAfter
	}
	hb = session.NewHeartbeater(w.base("heartbeat"), w.pool, session.HeartbeatConfig{
		SessionIDs: ids, Interval: w.cfg.HeartbeatInterval, FenceAfter: w.cfg.SelfFenceAfter,
		Since: since, CallTimeout: w.cfg.Test.HeartbeatCallTimeout, CrashFenceAfter: crashFence, Metrics: w.cfg.Metrics,
		// The fence kills the tasks first, from its own goroutine: nothing it
		// could wait for (a hung query, the claim loop) can delay the kill.
		OnLost: cls.Kill,
		// The shell tasks' supervisors enforce the same lease from their own
		// processes, so a frozen worker cannot keep them running past it.
		OnLease: func(long, short time.Time) {
			w.exec.SetLease(contain.Lease{Long: long, Short: short})
		},
		LockHungUp: func() bool { return lv != nil && lv.HungUp() },
		FastBeat:   w.exec.StaleLock,
	})
	hb.TestSignals = w.TestSignals.Heartbeat
	// armed is closed once the liveness lock is first held, its socket shared
	// with the supervisors: the claimers start then. A shell task started
	// before it would hold no lock socket, so its supervisor would have to
	// enforce the crash fence (last heartbeat + CrashFenceAfter) for its whole
	// life, and one slow heartbeat of a busy machine would kill it.
	var armed chan struct{}
	if w.liveConn != nil {
		armed = make(chan struct{})
		var armOnce sync.Once
		lv = session.NewLiveness(w.base("liveness"), session.LivenessConfig{
			SessionIDs: ids, ConnConfig: w.liveConn, OnConn: w.exec.SetLockConn,
			OnHeld: func(held bool) {
				hb.SetLockHeld(held)
				if held {
					armOnce.Do(func() { close(armed) })
				}
			},
		})
		lv.TestSignals = w.TestSignals.Liveness
	}
	d := drain.New(w.base("drain"), drain.Config{
		SessionIDs: ids, Grace: w.cfg.ShutdownGrace, TasksWait: w.cfg.KillGrace + drain.TasksWaitDefault,
		Tasks: cls, Results: w.completer, Session: w.sessionRows(ids), StopHeartbeat: hb.Stop,
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
	startClaimers := func() {
		for _, cl := range cls {
			_ = cl.Start(context.Background())
		}
	}
	if armed == nil {
		startClaimers()
	}
	for {
		select {
		case <-armed:
			startClaimers()
			armed = nil
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
}

// claimers are the claim loops of one incarnation's sessions, drained and killed
// together (drain.Tasks).
type claimers []*claimer.Claimer

func (cs claimers) Stop() {
	for _, c := range cs {
		c.Stop()
	}
}

func (cs claimers) Running() int {
	n := 0
	for _, c := range cs {
		n += c.Running()
	}
	return n
}

// Kill kills every running task of every session, at once (no waiting).
func (cs claimers) Kill(cause error) {
	for _, c := range cs {
		c.Kill(cause)
	}
}

func (cs claimers) WaitTasks(ctx context.Context) bool {
	all := true
	for _, c := range cs {
		if !c.WaitTasks(ctx) {
			all = false
		}
	}
	return all
}

// sessionRows writes each session's row through its group's Rows (drain.Session).
type sessionRows map[int64]*session.Rows

func (w *Worker) sessionRows(ids []int64) sessionRows {
	m := make(sessionRows, len(ids))
	for i, id := range ids {
		m[id] = w.rows[i]
	}
	return m
}

func (s sessionRows) MarkDraining(ctx context.Context, id int64) error {
	return s[id].MarkDraining(ctx, id)
}

func (s sessionRows) MarkStopped(ctx context.Context, id int64) error {
	return s[id].MarkStopped(ctx, id)
}
