// Package worker is a baton worker: it registers a session, heartbeats, claims the
// tasks dispatched to it, runs them and reports results fenced by attempt.
//
// When its session is lost — declared dead by a master, or self-fenced after
// SelfFenceAfter without a heartbeat — the worker kills its running tasks (their
// attempts belong to the failover now), marks the old session stopped if it still
// can, and registers a new session. Re-registering rather than exiting keeps the
// capacity without relying on a supervisor; the new session id is a new fencing
// identity, so nothing of the old incarnation can write.
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

	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/executor"
	"github.com/baton-scheduler/baton/internal/logfield"
	"github.com/baton-scheduler/baton/internal/notify"
	"github.com/baton-scheduler/baton/internal/report"
	"github.com/baton-scheduler/baton/internal/store"
)

var (
	errSessionDead = errors.New("session declared dead by a master")
	errSelfFenced  = errors.New("self-fenced: no successful heartbeat in time")
	errShutdown    = errors.New("worker shutting down")
)

// Worker runs tasks of one group.
type Worker struct {
	cfg     Config
	pool    *pgxpool.Pool
	log     *zap.Logger
	exec    *executor.Executor
	session atomic.Int64
	wake    notify.Signal
	results chan report.Result

	mu      sync.Mutex
	running map[int64]context.CancelCauseFunc
	tasksWG sync.WaitGroup
	// unwritten counts results handed to the completer and not yet written: the
	// session must not be marked stopped before they are, or masters would fail
	// over tasks that finished (and fence their results).
	unwritten sync.WaitGroup

	// Sessions lists every session id this process registered, in order (tests).
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
	return &Worker{
		cfg:     cfg,
		pool:    pool,
		log:     cfg.Logger.Named("worker"),
		exec:    &executor.Executor{Handlers: cfg.Handlers, MaxOutput: cfg.MaxOutput},
		wake:    notify.NewSignal(),
		results: make(chan report.Result, 4096),
		running: map[int64]context.CancelCauseFunc{},
	}, nil
}

// SessionID is the current session (0 before registration).
func (w *Worker) SessionID() int64 { return w.session.Load() }

// Sessions returns every session this worker has registered.
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
	bg, stopBG := context.WithCancel(context.Background())
	var bgWG sync.WaitGroup
	bgWG.Add(2)
	go func() {
		defer bgWG.Done()
		(&notify.Listener{Pool: w.pool, Channels: []string{notify.ChannelClaim}, Logger: w.log, OnNotify: func(_, payload string) {
			if notify.ClaimFor(payload, strconv.FormatInt(w.session.Load(), 10)) {
				w.wake.Wake()
			}
		}}).Run(bg)
	}()
	completerDone := make(chan struct{})
	go func() {
		defer bgWG.Done()
		w.complete(completerDone)
	}()
	defer func() {
		stopBG()
		bgWG.Wait()
	}()

	for {
		if err := w.register(ctx); err != nil {
			close(completerDone)
			return nil // ctx canceled before a session existed: nothing to drain
		}
		err := w.runSession(ctx)
		if errors.Is(err, errShutdown) {
			close(completerDone)
			return nil
		}
		w.log.Warn("session lost; killing its tasks and registering a new session",
			logfield.SessionID(w.session.Load()), zap.Error(err))
	}
}

func (w *Worker) register(ctx context.Context) error {
	backoff := 100 * time.Millisecond
	host, _ := os.Hostname()
	for {
		q := db.New(w.pool)
		err := q.GroupEnsure(ctx, w.cfg.Group)
		var s db.WorkerSession
		if err == nil {
			s, err = q.WorkerSessionRegister(ctx, db.WorkerSessionRegisterParams{
				Name: w.cfg.Name, GroupName: w.cfg.Group, Slots: int32(w.cfg.Slots),
				Host: host, Pid: int32(os.Getpid()), Version: w.cfg.Version,
			})
		}
		if err == nil {
			w.session.Store(s.ID)
			w.sessionsMu.Lock()
			w.sessions = append(w.sessions, s.ID)
			w.sessionsMu.Unlock()
			w.log.Info("session registered", logfield.SessionID(s.ID), logfield.Group(w.cfg.Group), zap.Int("slots", w.cfg.Slots))
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		w.log.Warn("register session failed; retrying", zap.Error(err), zap.Duration("retry_in", backoff))
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 2*time.Second)
	}
}

// runSession serves one session until it is lost or ctx ends (then it drains).
func (w *Worker) runSession(ctx context.Context) error {
	sessionID := w.session.Load()
	log := w.log.With(logfield.SessionID(sessionID))
	// Tasks run under their own context: a SIGTERM must not kill them before the grace.
	tasksCtx, killTasks := context.WithCancelCause(context.Background())
	defer killTasks(errShutdown)

	lost := make(chan error, 1)
	hbCtx, stopHB := context.WithCancel(context.Background())
	hbDone := make(chan struct{})
	go func() {
		defer close(hbDone)
		if err := w.heartbeat(hbCtx, sessionID); err != nil {
			lost <- err
		}
	}()
	stopHeartbeat := func() { stopHB(); <-hbDone }

	w.wake.Wake()
	poll := time.NewTicker(w.cfg.PollInterval)
	defer poll.Stop()
	for {
		select {
		case <-ctx.Done():
			w.drain(log, sessionID, killTasks)
			w.waitUnwritten(log)
			stopHeartbeat()
			w.stopSession(log, sessionID)
			return errShutdown
		case err := <-lost:
			stopHeartbeat()
			killTasks(err)
			w.tasksWG.Wait()
			w.waitUnwritten(log)
			w.stopSession(log, sessionID)
			return err
		case <-w.wake:
		case <-poll.C:
		}
		w.claim(ctx, tasksCtx, log, sessionID)
	}
}

// heartbeat touches the session row every interval. It returns when the session is
// lost: declared dead (learned from the row's state), or no successful heartbeat
// for SelfFenceAfter (measured on this process's monotonic clock).
func (w *Worker) heartbeat(ctx context.Context, sessionID int64) error {
	q := db.New(w.pool)
	lastOK := w.cfg.Now()
	t := time.NewTicker(w.cfg.HeartbeatInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		hbCtx, cancel := context.WithTimeout(ctx, w.cfg.HeartbeatInterval)
		state, err := q.WorkerSessionHeartbeat(hbCtx, sessionID)
		cancel()
		if ctx.Err() != nil {
			return nil
		}
		if err == nil {
			lastOK = w.cfg.Now()
			if state == "dead" || state == "stopped" {
				return errSessionDead
			}
			continue
		}
		if since := w.cfg.Now().Sub(lastOK); since >= w.cfg.SelfFenceAfter {
			w.log.Error("self-fencing: stop claiming and kill running tasks", logfield.SessionID(sessionID),
				zap.Duration("since_last_heartbeat", since), zap.Error(err))
			return fmt.Errorf("%w (last success %s ago)", errSelfFenced, since.Round(time.Millisecond))
		}
		w.log.Warn("heartbeat failed", logfield.SessionID(sessionID), zap.Error(err))
	}
}

func (w *Worker) claim(ctx, tasksCtx context.Context, log *zap.Logger, sessionID int64) {
	for ctx.Err() == nil && tasksCtx.Err() == nil {
		w.mu.Lock()
		free := w.cfg.Slots - len(w.running)
		w.mu.Unlock()
		if free <= 0 {
			return
		}
		rows, err := db.New(w.pool).TaskClaim(ctx, db.TaskClaimParams{SessionID: sessionID, MaxTasks: int32(free)})
		if err != nil {
			if ctx.Err() == nil {
				log.Warn("claim failed", zap.Error(err))
			}
			return
		}
		for _, r := range rows {
			w.start(tasksCtx, log, sessionID, r)
		}
		if len(rows) < free {
			return
		}
	}
}

func (w *Worker) start(tasksCtx context.Context, log *zap.Logger, sessionID int64, r db.TaskClaimRow) {
	taskCtx, cancel := context.WithCancelCause(tasksCtx)
	w.mu.Lock()
	w.running[r.ID] = cancel
	w.mu.Unlock()
	w.tasksWG.Add(1)
	go func() {
		defer w.tasksWG.Done()
		defer func() {
			w.mu.Lock()
			delete(w.running, r.ID)
			w.mu.Unlock()
			cancel(nil)
			w.wake.Wake() // a slot is free
		}()
		tlog := log.With(logfield.TaskID(r.ID), logfield.Attempt(r.Attempt))
		tlog.Debug("task started", logfield.Kind(r.Kind))
		res := w.exec.Run(taskCtx, executor.Task{
			ID: r.ID, Attempt: r.Attempt, Kind: r.Kind, Payload: r.Payload, SessionID: sessionID, Worker: w.cfg.Name,
		}, time.Duration(r.TimeoutMs)*time.Millisecond)
		if res.Outcome == executor.OutcomeCanceled {
			// Killed by self-fencing, a lost session or shutdown: the attempt is
			// handed back by failover, so there is nothing to report.
			tlog.Info("task killed; left to failover", zap.String("reason", res.Error))
			return
		}
		w.unwritten.Add(1)
		w.results <- report.Result{
			TaskID: r.ID, Attempt: r.Attempt, SessionID: sessionID, Outcome: res.Outcome,
			ExitCode: res.ExitCode, Output: res.Output, Error: res.Error,
			RetryDelay: w.cfg.Retry.Delay(int(r.Retries), nil),
		}
	}()
}

// complete writes results in batches: whatever has arrived goes in one transaction.
// A failed write is retried; a result is dropped only when it is fenced.
func (w *Worker) complete(done <-chan struct{}) {
	var batch []report.Result
	backoff := 50 * time.Millisecond
	var giveUp <-chan time.Time
	for {
		if len(batch) == 0 {
			select {
			case r := <-w.results:
				batch = append(batch, r)
			case <-done:
				if len(w.results) == 0 {
					return
				}
				continue
			}
		}
	fill:
		for len(batch) < 1000 {
			select {
			case r := <-w.results:
				batch = append(batch, r)
			default:
				break fill
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		sum, err := report.Finish(ctx, w.pool, batch)
		cancel()
		if err != nil {
			w.log.Warn("report results failed; retrying", logfield.BatchSize(len(batch)), zap.Error(err))
			if giveUp == nil {
				select {
				case <-done:
					// Shutting down: keep trying for a bounded time; whatever is
					// not written is handed back by failover and runs again.
					giveUp = time.After(5 * time.Second)
				default:
				}
			}
			select {
			case <-time.After(backoff):
			case <-giveUp:
				w.log.Error("giving up reporting results at shutdown", logfield.BatchSize(len(batch)+len(w.results)))
				for range batch {
					w.unwritten.Done()
				}
				for range len(w.results) {
					<-w.results
					w.unwritten.Done()
				}
				return
			}
			backoff = min(backoff*2, 2*time.Second)
			continue
		}
		backoff = 50 * time.Millisecond
		for _, f := range sum.Fenced {
			w.log.Warn("result refused: attempt superseded (fenced)", logfield.TaskID(f.TaskID),
				logfield.Attempt(f.Attempt), logfield.SessionID(f.SessionID), logfield.Outcome(f.Outcome))
		}
		for _, r := range batch {
			if st, ok := sum.Applied[r.TaskID]; ok {
				w.log.Debug("task finished", logfield.TaskID(r.TaskID), logfield.Attempt(r.Attempt),
					logfield.SessionID(r.SessionID), logfield.Outcome(r.Outcome), zap.String("task_state", st))
			}
		}
		for range batch {
			w.unwritten.Done()
		}
		batch = batch[:0]
	}
}

// drain stops claiming (state draining), lets running tasks finish within the
// grace period, then kills the rest.
func (w *Worker) drain(log *zap.Logger, sessionID int64, killTasks context.CancelCauseFunc) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	if _, err := db.New(w.pool).WorkerSessionDrain(ctx, sessionID); err != nil {
		log.Warn("mark session draining failed", zap.Error(err))
	}
	cancel()
	w.mu.Lock()
	n := len(w.running)
	w.mu.Unlock()
	log.Info("draining", logfield.Count("running", n), zap.Duration("grace", w.cfg.ShutdownGrace))
	finished := make(chan struct{})
	go func() { w.tasksWG.Wait(); close(finished) }()
	select {
	case <-finished:
	case <-time.After(w.cfg.ShutdownGrace):
		log.Warn("shutdown grace over; killing running tasks, masters hand them back")
		killTasks(errShutdown)
		<-finished
	}
}

// waitUnwritten waits, bounded, until the completer has written every result.
func (w *Worker) waitUnwritten(log *zap.Logger) {
	done := make(chan struct{})
	go func() { w.unwritten.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		log.Warn("results still unwritten at shutdown; their tasks will be handed back and may run again")
	}
}

// stopSession marks the session stopped and wakes the masters' sweep, which hands
// back any task still on it at once. Best effort: if Postgres is unreachable the
// heartbeat timeout does the same later.
func (w *Worker) stopSession(log *zap.Logger, sessionID int64) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for {
		var n int64
		err := store.WithTx(ctx, w.pool, func(q *db.Queries, tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1, hashtext($2::text))",
				store.LockClassDispatchGroup, w.cfg.Group); err != nil {
				return err
			}
			var err error
			n, err = q.WorkerSessionStop(ctx, sessionID)
			return err
		})
		if err == nil {
			if n > 0 {
				_, _ = w.pool.Exec(ctx, "SELECT pg_notify($1, $2)", notify.ChannelSweep, strconv.FormatInt(sessionID, 10))
			}
			log.Info("session stopped")
			return
		}
		select {
		case <-ctx.Done():
			log.Warn("could not mark session stopped; masters will declare it dead", zap.Error(err))
			return
		case <-time.After(200 * time.Millisecond):
		}
	}
}
