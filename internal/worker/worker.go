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
	// errOrphanedClaims: a claim committed but its reply never arrived.
	errOrphanedClaims = errors.New("claimed tasks never received")
)

// runKey names one attempt this process runs: a task can come back to the same
// worker with a new attempt while an old one (a handler ignoring cancellation) lingers.
type runKey struct {
	id      int64
	attempt int32
}

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
	running map[runKey]context.CancelCauseFunc
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
		running: map[runKey]context.CancelCauseFunc{},
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
	reconcile := false
	for {
		select {
		case <-ctx.Done():
			w.drain(log, sessionID, killTasks, lost)
			w.waitUnwritten(log)
			stopHeartbeat()
			w.endSession(log, sessionID)
			return errShutdown
		case err := <-lost:
			stopHeartbeat()
			killTasks(err)
			w.waitTasks(log)
			w.waitUnwritten(log)
			w.endSession(log, sessionID)
			return err
		case <-w.wake:
		case <-poll.C:
		}
		if reconcile {
			orphans, err := w.orphans(ctx, sessionID)
			if err != nil {
				continue // still cannot reach Postgres; the heartbeat decides
			}
			reconcile = false
			if orphans > 0 {
				// A claim committed but its reply was lost: those attempts are
				// ours in the database and nobody runs them. Hand the session back
				// (masters move its tasks at once) and start a new one.
				log.Warn("tasks claimed but never received; abandoning the session", logfield.Count("orphans", orphans))
				select {
				case lost <- errOrphanedClaims:
				default:
				}
				continue
			}
		}
		if err := w.claim(ctx, tasksCtx, log, sessionID); err != nil {
			reconcile = true
		}
	}
}

// orphans counts attempts running on this session in Postgres that this process
// does not run.
func (w *Worker) orphans(ctx context.Context, sessionID int64) (int, error) {
	rows, err := db.New(w.pool).TaskListRunningOnSession(ctx, sessionID)
	if err != nil {
		return 0, err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, r := range rows {
		if _, ok := w.running[runKey{r.ID, r.Attempt}]; !ok {
			n++
		}
	}
	return n, nil
}

// heartbeat touches the session row every interval. It returns when the session is
// lost: declared dead (learned from the row's state), or no successful heartbeat
// for SelfFenceAfter. The fence is measured from when the last successful
// heartbeat was *sent* (earlier than the server's now() that masters compare), and
// no attempt outlives the fence deadline, so the worker always acts first.
func (w *Worker) heartbeat(ctx context.Context, sessionID int64) error {
	q := db.New(w.pool)
	lastOK := w.cfg.Now()
	t := time.NewTicker(w.cfg.HeartbeatInterval)
	defer t.Stop()
	var lastErr error
	fence := func() error {
		since := w.cfg.Now().Sub(lastOK)
		w.log.Error("self-fencing: stop claiming and kill running tasks", logfield.SessionID(sessionID),
			zap.Duration("since_last_heartbeat", since), zap.Error(lastErr))
		return fmt.Errorf("%w (last success sent %s ago)", errSelfFenced, since.Round(time.Millisecond))
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		sent := w.cfg.Now()
		left := w.cfg.SelfFenceAfter - sent.Sub(lastOK)
		if left <= 0 {
			return fence()
		}
		hbCtx, cancel := context.WithTimeout(ctx, min(w.cfg.HeartbeatInterval, left))
		state, err := q.WorkerSessionHeartbeat(hbCtx, sessionID)
		cancel()
		if ctx.Err() != nil {
			return nil
		}
		if err == nil {
			lastOK = sent
			if state == "dead" || state == "stopped" {
				return errSessionDead
			}
			continue
		}
		lastErr = err
		if w.cfg.Now().Sub(lastOK) >= w.cfg.SelfFenceAfter {
			return fence()
		}
		w.log.Warn("heartbeat failed", logfield.SessionID(sessionID), zap.Error(err))
	}
}

// claim takes as many dispatched tasks as there are free slots. An error means a
// claim may have committed without its reply reaching us: the caller reconciles.
func (w *Worker) claim(ctx, tasksCtx context.Context, log *zap.Logger, sessionID int64) error {
	for ctx.Err() == nil && tasksCtx.Err() == nil {
		w.mu.Lock()
		free := w.cfg.Slots - len(w.running)
		w.mu.Unlock()
		if free <= 0 {
			return nil
		}
		rows, err := db.New(w.pool).TaskClaim(ctx, db.TaskClaimParams{SessionID: sessionID, MaxTasks: int32(free)})
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			log.Warn("claim failed", zap.Error(err))
			return err
		}
		for _, r := range rows {
			w.start(tasksCtx, log, sessionID, r)
		}
		if len(rows) < free {
			return nil
		}
	}
	return nil
}

func (w *Worker) start(tasksCtx context.Context, log *zap.Logger, sessionID int64, r db.TaskClaimRow) {
	taskCtx, cancel := context.WithCancelCause(tasksCtx)
	key := runKey{r.ID, r.Attempt}
	w.mu.Lock()
	w.running[key] = cancel
	w.mu.Unlock()
	w.tasksWG.Add(1)
	go func() {
		defer w.tasksWG.Done()
		defer func() {
			w.mu.Lock()
			delete(w.running, key)
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
		if err != nil && permanent(err) {
			// The batch can never be written as it is (bad data, not a lost
			// connection): write the results one by one so one bad result cannot
			// hold back the others.
			w.log.Error("report results rejected; writing them one by one", logfield.BatchSize(len(batch)), zap.Error(err))
			sum, err = w.finishOneByOne(batch)
		}
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

// permanent reports whether a write failed because of its data (SQLSTATE classes
// 22 data exception, 23 constraint, 42 syntax/access) rather than the connection.
func permanent(err error) bool {
	c := store.Code(err)
	return len(c) == 5 && (c[:2] == "22" || c[:2] == "23" || c[:2] == "42")
}

// finishOneByOne writes each result alone; a result that still cannot be written is
// replaced by a failure naming why, so its task ends instead of hanging.
func (w *Worker) finishOneByOne(batch []report.Result) (report.Summary, error) {
	all := report.Summary{Applied: map[int64]string{}}
	for _, r := range batch {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		sum, err := report.Finish(ctx, w.pool, []report.Result{r})
		if err != nil && permanent(err) {
			w.log.Error("result cannot be stored; recording a failure instead", logfield.TaskID(r.TaskID),
				logfield.Attempt(r.Attempt), zap.Error(err))
			r.Outcome, r.Output = executor.OutcomeFailed, ""
			r.Error = executor.Clean(fmt.Sprintf("result could not be stored: %v", err))
			sum, err = report.Finish(ctx, w.pool, []report.Result{r})
		}
		cancel()
		if err != nil && !permanent(err) {
			return all, err // connection trouble: retry the whole batch later
		}
		if err != nil {
			w.log.Error("dropping a result that cannot be stored", logfield.TaskID(r.TaskID), logfield.Attempt(r.Attempt), zap.Error(err))
		}
		for id, st := range sum.Applied {
			all.Applied[id] = st
		}
		all.Fenced = append(all.Fenced, sum.Fenced...)
	}
	return all, nil
}

// drain stops claiming (state draining), lets running tasks finish within the
// grace period, then kills the rest. Losing the session meanwhile (self-fence,
// declared dead) kills them at once: their attempts belong to failover now.
func (w *Worker) drain(log *zap.Logger, sessionID int64, killTasks context.CancelCauseFunc, lost <-chan error) {
	// Marking the session draining must not delay the watch for a lost session
	// below (Postgres may be unreachable right now), so it runs on its own.
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := w.updateSessionLocked(ctx, func(q *db.Queries) (int64, error) {
			return q.WorkerSessionDrain(ctx, sessionID)
		}); err != nil {
			log.Warn("mark session draining failed", zap.Error(err))
		}
	}()
	w.mu.Lock()
	n := len(w.running)
	w.mu.Unlock()
	log.Info("draining", logfield.Count("running", n), zap.Duration("grace", w.cfg.ShutdownGrace))
	finished := make(chan struct{})
	go func() { w.tasksWG.Wait(); close(finished) }()
	select {
	case <-finished:
		return
	case err := <-lost:
		log.Warn("session lost while draining; killing running tasks", zap.Error(err))
		killTasks(err)
	case <-time.After(w.cfg.ShutdownGrace):
		log.Warn("shutdown grace over; killing running tasks, masters hand them back")
		killTasks(errShutdown)
	}
	w.waitTasks(log)
}

// waitTasks waits, bounded, for killed tasks to return. A Go handler that ignores
// cancellation is abandoned: its attempt is handed back and its result fenced.
func (w *Worker) waitTasks(log *zap.Logger) {
	if !waitBounded(&w.tasksWG, 5*time.Second) {
		log.Warn("tasks did not return after being killed; abandoning them")
	}
}

// waitUnwritten waits, bounded, until the completer has written every result.
func (w *Worker) waitUnwritten(log *zap.Logger) {
	if !waitBounded(&w.unwritten, 10*time.Second) {
		log.Warn("results still unwritten; their tasks will be handed back and may run again")
	}
}

func waitBounded(wg *sync.WaitGroup, d time.Duration) bool {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}

// updateSessionLocked changes the session's state under the group's dispatch lock,
// so no dispatch or failover that read the old state can commit after the change
// (no task is sent to a draining or stopped session).
func (w *Worker) updateSessionLocked(ctx context.Context, fn func(q *db.Queries) (int64, error)) (int64, error) {
	var n int64
	err := store.WithTx(ctx, w.pool, func(q *db.Queries, tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1, hashtext($2::text))",
			store.LockClassDispatchGroup, w.cfg.Group); err != nil {
			return err
		}
		var err error
		n, err = fn(q)
		return err
	})
	return n, err
}

// endSession marks the session stopped and wakes the masters' sweep, which hands
// back any task still on it at once. Best effort: if Postgres is unreachable the
// heartbeat timeout does the same later.
func (w *Worker) endSession(log *zap.Logger, sessionID int64) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for {
		n, err := w.updateSessionLocked(ctx, func(q *db.Queries) (int64, error) {
			return q.WorkerSessionStop(ctx, sessionID)
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
