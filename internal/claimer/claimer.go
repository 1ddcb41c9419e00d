// Package claimer is a worker session's claim loop: it claims as many dispatched
// tasks as it has free slots, runs each in its own goroutine, hands results to the
// completer, and reconciles after a claim error.
//
// Slots match the database. A slot is freed when its attempt is settled: the
// executor returned, or — for a Go handler that ignores cancellation, or a shell
// task whose detached descendant keeps its output open — KillGrace after the
// attempt's context ended (timeout or kill). A timed-out attempt is then reported
// timed_out by the worker itself; the lingering goroutine's late result is dropped.
//
// Stop: an attempt whose task row no longer names it running here — the task was
// canceled, or a master timed the attempt out or moved it — is stopped as a
// timeout is: its context is canceled with executor.ErrCanceled (or
// ErrSuperseded) as the cause, a shell task's process tree is killed, and its slot
// is freed when it returns or KillGrace later; nothing is reported for it. The
// claimer checks its running attempts every PollInterval and when woken by a
// NOTIFY on notify.ChannelCancel (Config.Cancels): the NOTIFY only shortens the
// wait.
//
// Reconcile: a claim that fails may have committed without its reply reaching us.
// Attempts running on the session in Postgres that are neither running here nor
// pending in the completer (finished, result not yet written) are orphans: nobody
// runs them, so the session is abandoned and its tasks handed back.
package claimer

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/executor"
	"github.com/baton-scheduler/baton/internal/logfield"
	"github.com/baton-scheduler/baton/internal/metrics"
	"github.com/baton-scheduler/baton/internal/notify"
	"github.com/baton-scheduler/baton/internal/report"
	"github.com/baton-scheduler/baton/internal/service"
)

// Defaults.
const (
	KillGraceDefault   = 2 * time.Second
	CallTimeoutDefault = 5 * time.Second
)

// ErrOrphanedClaims: a claim committed but its reply never arrived.
var ErrOrphanedClaims = errors.New("claimed tasks never received")

// Results is where finished attempts go (the completer).
type Results interface {
	Add(ctx context.Context, r report.Result) bool
	Pending() map[report.Key]bool
}

// Config of a Claimer.
type Config struct {
	SessionID int64
	// Group: when set, the claimer also claims waiting tasks of this group directly
	// from the queue, in one order with the tasks dispatched to it (TaskClaimNext).
	Group        string
	Worker       string // the worker's name, shown to tasks
	Slots        int
	PollInterval time.Duration
	// KillGrace: how long an attempt whose context ended (timeout, kill) may take
	// to return before its slot is freed without it.
	KillGrace   time.Duration
	CallTimeout time.Duration // bounds each claim and reconcile query
	Exec        *executor.Executor
	Results     Results
	Wake        notify.Signal // NOTIFY wake-ups; nil: poll only
	// Cancels is woken by a NOTIFY (notify.ChannelCancel) naming this session:
	// a task it runs was canceled. Nil: running attempts are checked on the
	// poll only.
	Cancels notify.Signal
	// OnOrphans is called when reconcile finds orphaned claims; the worker
	// abandons the session.
	OnOrphans func(error)
	// Lease reports whether the session still owns its attempts (the heartbeat's
	// lease); handlers check it through Task.CheckLease. Nil: always owned.
	Lease func() error
	// Metrics, if set, counts attempts and times claims.
	Metrics *metrics.Worker
}

// claimCooldown: how long a busy worker (more than half its slots taken) waits
// after a wake-up before it claims, so freed slots are claimed in batches.
const claimCooldown = 20 * time.Millisecond

// lostRaceDelay: how long a worker whose last claim found nothing waits after a
// wake-up before it claims. A submit wakes every worker of the group and one
// claim takes the task: the others would each run a claim that finds nothing.
// After such a miss a worker lets a few wake-ups gather into one claim, while
// the worker that got the last tasks claims at once.
const lostRaceDelay = 3 * time.Millisecond

// Claimed is what one runOnce did.
type Claimed struct {
	Claimed    int  // tasks started
	Reconciled bool // a reconcile ran (after an earlier claim error)
	Orphans    int  // orphaned attempts the reconcile found
}

// Abandoned describes an attempt whose slot was freed without it returning.
type Abandoned struct {
	Key      report.Key
	TimedOut bool // reported timed_out; otherwise killed (left to failover)
}

// TestSignals are sent after meaningful steps (tests only).
type TestSignals struct {
	Claimed     service.TestSignal[Claimed] // a runOnce completed without error
	ClaimFailed service.TestSignal[error]
	Started     service.TestSignal[report.Key]
	Settled     service.TestSignal[report.Key] // an attempt's slot was freed
	Abandoned   service.TestSignal[Abandoned]
	LateResult  service.TestSignal[report.Key] // an abandoned attempt returned; its result dropped
	Stopped     service.TestSignal[Stopped]    // a running attempt was stopped: its task row no longer names it
}

// Stopped describes a running attempt stopped because its task row no longer
// names it; Cause is executor.ErrCanceled or executor.ErrSuperseded.
type Stopped struct {
	Key   report.Key
	Cause error
}

// attempt is a running attempt's context and its cancel.
type attempt struct {
	ctx    context.Context
	cancel context.CancelCauseFunc
}

// Claimer runs one session's claims.
type Claimer struct {
	service.Base
	service.StartStop
	TestSignals TestSignals

	cfg  Config
	pool *pgxpool.Pool
	wake notify.Signal

	tasksCtx  context.Context
	killTasks context.CancelCauseFunc

	mu        sync.Mutex
	running   map[report.Key]attempt
	settled   *sync.Cond
	reconcile bool
	// backlog: the last claim filled every free slot, so tasks may be waiting
	// and a freed slot wakes the loop; false once a claim found fewer than it
	// asked for.
	backlog atomic.Bool
	// claimsDone: the claim loop returned; the stop watch ends once no attempt
	// runs. watchWake wakes it to check (a slot was freed, the loop returned).
	claimsDone atomic.Bool
	watchWake  notify.Signal
}

// New returns a Claimer for one session.
func New(base service.Base, pool *pgxpool.Pool, cfg Config) *Claimer {
	if cfg.Exec == nil || cfg.Results == nil || cfg.Slots < 1 || cfg.PollInterval <= 0 {
		panic("claimer: Exec, Results, Slots and PollInterval are required")
	}
	if cfg.KillGrace <= 0 {
		cfg.KillGrace = KillGraceDefault
	}
	if cfg.CallTimeout <= 0 {
		cfg.CallTimeout = CallTimeoutDefault
	}
	wake := cfg.Wake
	if wake == nil {
		wake = notify.NewSignal()
	}
	// Tasks run under their own context: a SIGTERM must not kill them before the
	// shutdown grace; only Kill does.
	tasksCtx, kill := context.WithCancelCause(context.Background())
	c := &Claimer{Base: base, cfg: cfg, pool: pool, wake: wake, tasksCtx: tasksCtx, killTasks: kill,
		running: map[report.Key]attempt{}, watchWake: notify.NewSignal()}
	c.settled = sync.NewCond(&c.mu)
	return c
}

// Start claims until Stop or until the tasks are killed. Running attempts are
// watched (and stopped when their task row no longer names them) until the last
// one has ended, also after Stop: a canceled task must stop during a drain too.
func (c *Claimer) Start(ctx context.Context) error {
	c.StartLoop(ctx, func(ctx context.Context) {
		go c.watch()
		defer func() {
			c.claimsDone.Store(true)
			c.watchWake.Wake()
		}()
		c.loop(ctx)
	})
	return nil
}

// Kill cancels every running attempt (and every later one): the session is lost
// or the shutdown grace is over. It never blocks.
func (c *Claimer) Kill(cause error) { c.killTasks(cause) }

// Running is the number of occupied slots.
func (c *Claimer) Running() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.running)
}

// RunningKeys returns the attempts occupying slots.
func (c *Claimer) RunningKeys() map[report.Key]bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[report.Key]bool, len(c.running))
	for k := range c.running {
		out[k] = true
	}
	return out
}

// WaitTasks waits until every slot is free or ctx ends; it reports whether all are.
// Slots are freed at most KillGrace after their attempt's context ended.
func (c *Claimer) WaitTasks(ctx context.Context) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	stop := context.AfterFunc(ctx, func() { c.mu.Lock(); c.settled.Broadcast(); c.mu.Unlock() })
	defer stop()
	for len(c.running) > 0 && ctx.Err() == nil {
		c.settled.Wait()
	}
	return len(c.running) == 0
}

func (c *Claimer) loop(ctx context.Context) {
	poll := time.NewTicker(c.cfg.PollInterval)
	defer poll.Stop()
	c.wake.Wake()
	missed := false // the last claim found nothing
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.tasksCtx.Done():
			return
		case <-c.wake:
		case <-poll.C:
		}
		switch {
		case c.Running() > c.cfg.Slots/2:
			// Busy: let more slots free up so one claim takes several tasks
			// (fewer statements per task); an idle worker claims at once.
			if !c.waitForSlots(ctx) {
				return
			}
		case missed:
			if !service.Sleep(ctx, lostRaceDelay) {
				return
			}
		}
		res, err := c.runOnce(ctx)
		missed = err == nil && res.Claimed == 0
		if err != nil {
			if ctx.Err() != nil || c.tasksCtx.Err() != nil {
				return
			}
			c.Logger.Warn("claim failed", logfield.SessionID(c.cfg.SessionID), zap.Error(err))
			c.TestSignals.ClaimFailed.Signal(err)
			continue
		}
		c.TestSignals.Claimed.Signal(res)
		if res.Orphans > 0 {
			return // the session is being abandoned
		}
	}
}

// waitForSlots waits until at most half the slots are taken, or claimCooldown
// has passed, and reports whether the claimer should go on. A batch write of
// results frees many slots within a millisecond: the first freed slot wakes the
// loop, and a blind cooldown from there paced short tasks at one claim per
// 20 ms however fast they ran (1,000 no-op tasks took 0.8 s instead of 0.3 s,
// measured in BenchmarkWorkflowFanOut). Each freed slot wakes the loop
// while tasks are waiting (backlog), so it re-checks as they free up.
func (c *Claimer) waitForSlots(ctx context.Context) bool {
	t := time.NewTimer(claimCooldown)
	defer t.Stop()
	for c.Running() > c.cfg.Slots/2 {
		select {
		case <-ctx.Done():
			return false
		case <-c.tasksCtx.Done():
			return false
		case <-c.wake:
		case <-t.C:
			return true
		}
	}
	return true
}

// runOnce reconciles if an earlier claim failed, then claims up to the free slots.
func (c *Claimer) runOnce(ctx context.Context) (Claimed, error) {
	var res Claimed
	if c.reconcile {
		orphans, err := c.orphans(ctx)
		if err != nil {
			return res, err // still cannot reach Postgres; the heartbeat decides
		}
		c.reconcile = false
		res.Reconciled, res.Orphans = true, orphans
		if orphans > 0 {
			// A claim committed but its reply was lost: those attempts are ours
			// in the database and nobody runs them. Hand the session back
			// (masters move its tasks at once) and start a new one.
			c.Logger.Warn("tasks claimed but never received; abandoning the session",
				logfield.SessionID(c.cfg.SessionID), logfield.Count("orphans", orphans))
			if c.cfg.OnOrphans != nil {
				c.cfg.OnOrphans(ErrOrphanedClaims)
			}
			return res, nil
		}
	}
	for ctx.Err() == nil && c.tasksCtx.Err() == nil {
		free := c.cfg.Slots - c.Running()
		if free <= 0 {
			// Full: tasks may be waiting, so a freed slot claims again.
			c.backlog.Store(true)
			return res, nil
		}
		// Not canceled by Stop (a drain): a claim that commits must be received,
		// or its tasks would be running in Postgres and nowhere else. Bounded by
		// CallTimeout, and canceled by Kill (the session is lost anyway); a drain
		// waits for the loop, then for the tasks it started.
		claimCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		stopOnKill := context.AfterFunc(c.tasksCtx, cancel)
		sent := time.Now()
		rows, err := service.WithTimeout(claimCtx, c.cfg.CallTimeout, func(ctx context.Context) ([]db.TaskClaimNextRow, error) {
			return c.claim(ctx, free)
		})
		if err == nil {
			c.cfg.Metrics.Claim(time.Since(sent))
		}
		stopOnKill()
		cancel()
		for _, r := range rows { // received: ours to run even if a later statement failed
			c.start(r)
		}
		res.Claimed += len(rows)
		if err != nil {
			// The claim may have committed without its reply reaching us.
			c.reconcile = true
			return res, fmt.Errorf("claim tasks: %w", err)
		}
		if len(rows) < free {
			// The queue ran dry: a freed slot has nothing to claim. New tasks
			// wake the worker (NOTIFY), retries due later are found by the poll.
			c.backlog.Store(false)
			return res, nil
		}
	}
	return res, nil
}

// claim takes up to free tasks in one statement (TaskClaimNext): those a master
// dispatched to this session and, with a Group, waiting tasks of the group straight
// from the queue, the best by priority then submission whichever way they came.
func (c *Claimer) claim(ctx context.Context, free int) ([]db.TaskClaimNextRow, error) {
	return db.New(c.pool).TaskClaimNext(ctx, db.TaskClaimNextParams{SessionID: c.cfg.SessionID, GroupName: c.cfg.Group, MaxTasks: int32(free)})
}

// orphans counts attempts running on this session in Postgres that this process
// neither runs nor holds a result for. What is ours is read before the query, and
// every attempt enters the completer before it leaves the running set, so an
// attempt that finishes meanwhile is either in the snapshot or no longer running
// in Postgres.
func (c *Claimer) orphans(ctx context.Context) (int, error) {
	ours := c.RunningKeys()
	for k := range c.cfg.Results.Pending() {
		ours[k] = true
	}
	rows, err := service.WithTimeout(ctx, c.cfg.CallTimeout, func(ctx context.Context) ([]db.TaskListRunningOnSessionRow, error) {
		return db.New(c.pool).TaskListRunningOnSession(ctx, c.cfg.SessionID)
	})
	if err != nil {
		return 0, fmt.Errorf("list running attempts: %w", err)
	}
	n := 0
	for _, r := range rows {
		if !ours[report.Key{TaskID: r.ID, Attempt: r.Attempt}] {
			n++
		}
	}
	return n, nil
}

func (c *Claimer) start(r db.TaskClaimNextRow) {
	key := report.Key{TaskID: r.ID, Attempt: r.Attempt}
	attemptCtx, cancel := context.WithCancelCause(c.tasksCtx)
	c.mu.Lock()
	c.running[key] = attempt{ctx: attemptCtx, cancel: cancel}
	c.mu.Unlock()
	c.TestSignals.Started.Signal(key)
	c.cfg.Metrics.AttemptStarted()
	go c.run(attemptCtx, cancel, key, r)
}

// run executes one attempt and settles its slot.
func (c *Claimer) run(ctx context.Context, cancel context.CancelCauseFunc, key report.Key, r db.TaskClaimNextRow) {
	log := c.Logger.With(logfield.SessionID(c.cfg.SessionID), logfield.TaskID(r.ID), logfield.Attempt(r.Attempt))
	defer func() {
		c.mu.Lock()
		delete(c.running, key)
		c.settled.Broadcast()
		c.mu.Unlock()
		cancel(nil)
		c.TestSignals.Settled.Signal(key)
		c.watchWake.Wake()
		if c.backlog.Load() {
			c.wake.Wake() // a slot is free and tasks may be waiting
		}
	}()
	log.Debug("task started", logfield.Kind(r.Kind))
	timeout := time.Duration(r.TimeoutMs) * time.Millisecond
	task := executor.Task{ID: r.ID, Attempt: r.Attempt, Kind: r.Kind, Payload: r.Payload, SessionID: c.cfg.SessionID, Worker: c.cfg.Worker,
		Lease: func() error {
			if ctx.Err() != nil {
				return fmt.Errorf("attempt stopped: %w", context.Cause(ctx))
			}
			if c.cfg.Lease != nil {
				return c.cfg.Lease()
			}
			return nil
		}}

	// The executor enforces the timeout itself; this watch only bounds how long
	// the slot waits for it once the attempt's time is up or it was killed.
	watchCtx := ctx
	if timeout > 0 {
		var stop context.CancelFunc
		watchCtx, stop = context.WithTimeout(ctx, timeout)
		defer stop()
	}
	done := make(chan executor.Result, 1)
	began := time.Now()
	go func() { done <- c.cfg.Exec.Run(ctx, task, timeout) }()
	var res executor.Result
	select {
	case res = <-done:
	case <-watchCtx.Done():
		grace := time.NewTimer(c.cfg.KillGrace)
		select {
		case res = <-done:
			grace.Stop()
		case <-grace.C:
			res = c.abandon(ctx, log, key, done, timeout)
		}
	}
	if res.LeaseExpired && !c.sessionLost() {
		// Its supervisor killed it at the lease's deadline. The attempt belongs
		// to the failover only if the session is lost; if a late heartbeat
		// renews the lease instead, the session keeps the attempt and nobody
		// would hand it back — then the kill is reported.
		res.Outcome = executor.OutcomeFailed
	}
	if res.Outcome == executor.OutcomeCanceled {
		cause := context.Cause(ctx)
		if errors.Is(cause, executor.ErrCanceled) || errors.Is(cause, executor.ErrSuperseded) {
			// Stopped (stopSuperseded): the task row already says how the
			// attempt ended; a report would be refused.
			log.Info("task stopped; nothing to report", zap.String("reason", res.Error))
			c.cfg.Metrics.AttemptFinished(metrics.OutcomeStopped, time.Since(began))
			return
		}
		// Killed by self-fencing, a lost session or shutdown: the attempt is
		// handed back by failover, so there is nothing to report.
		log.Info("task killed; left to failover", zap.String("reason", res.Error))
		c.cfg.Metrics.AttemptFinished(metrics.OutcomeKilled, time.Since(began))
		return
	}
	c.cfg.Metrics.AttemptFinished(res.Outcome, time.Since(began))
	ok := c.cfg.Results.Add(c.tasksCtx, report.Result{
		TaskID: r.ID, Attempt: r.Attempt, SessionID: c.cfg.SessionID, Outcome: res.Outcome,
		ExitCode: res.ExitCode, Output: res.Output, Error: res.Error,
		Snooze: res.Snooze, StepOutputs: string(res.StepOutputs),
	})
	if !ok {
		log.Info("result dropped: the session was lost while the result writer was backed up")
	}
}

// sessionLost waits until the session is lost (its tasks were killed: the
// worker fenced itself or was declared dead) or its lease is valid again, and
// reports which. An expired lease ends in one or the other: the self-fence fires
// by the same deadline, unless a heartbeat renews the lease first.
func (c *Claimer) sessionLost() bool {
	if c.cfg.Lease == nil {
		return c.tasksCtx.Err() != nil
	}
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	bound := time.NewTimer(time.Minute) // a stuck heartbeater must not hold the slot forever
	defer bound.Stop()
	for {
		if c.tasksCtx.Err() != nil {
			return true
		}
		if c.cfg.Lease() == nil {
			return false
		}
		select {
		case <-c.tasksCtx.Done():
			return true
		case <-tick.C:
		case <-bound.C:
			return false
		}
	}
}

// abandon frees the slot of an attempt that did not return within KillGrace after
// its context ended, and says what to report: timed_out if its timeout passed,
// canceled (nothing) if it was killed. The goroutine still running it is left
// behind; when it returns, its result is dropped.
func (c *Claimer) abandon(ctx context.Context, log *zap.Logger, key report.Key, done <-chan executor.Result, timeout time.Duration) executor.Result {
	killed := ctx.Err() != nil
	go func() {
		<-done
		log.Warn("abandoned task returned; its result is dropped")
		c.TestSignals.LateResult.Signal(key)
	}()
	c.TestSignals.Abandoned.Signal(Abandoned{Key: key, TimedOut: !killed})
	if killed {
		log.Warn("killed task did not return; freeing its slot", zap.Duration("grace", c.cfg.KillGrace))
		return executor.Result{Outcome: executor.OutcomeCanceled, ExitCode: executor.NoExitCode,
			Error: "canceled by worker: " + context.Cause(ctx).Error()}
	}
	log.Warn("timed-out task did not return; freeing its slot and reporting it timed out", zap.Duration("grace", c.cfg.KillGrace))
	return executor.Result{Outcome: executor.OutcomeTimedOut, ExitCode: executor.NoExitCode,
		Error: fmt.Sprintf("timed out after %s; the task did not stop within %s of cancellation and was abandoned", timeout, c.cfg.KillGrace)}
}

// watch stops running attempts whose task row no longer names them, checking on
// every poll tick and when woken (Config.Cancels), until the tasks are killed or
// the claim loop has returned and no attempt runs any more.
func (c *Claimer) watch() {
	poll := time.NewTicker(c.cfg.PollInterval)
	defer poll.Stop()
	cancels := c.cfg.Cancels // nil: never ready
	failing := false
	for {
		if c.claimsDone.Load() && c.Running() == 0 {
			return
		}
		select {
		case <-c.tasksCtx.Done():
			return
		case <-c.watchWake:
			continue
		case <-cancels:
		case <-poll.C:
		}
		_, err := c.stopSuperseded(c.tasksCtx)
		switch {
		case err == nil || c.tasksCtx.Err() != nil:
			failing = false
		case !failing: // once per outage: the heartbeat reports the rest
			failing = true
			c.Logger.Warn("check of running tasks failed; retried on every poll", logfield.SessionID(c.cfg.SessionID), zap.Error(err))
		default:
			c.Logger.Debug("check of running tasks failed", logfield.SessionID(c.cfg.SessionID), zap.Error(err))
		}
	}
}

// stopSuperseded cancels the running attempts whose task row no longer names
// them running on this session (TaskListSuperseded), with executor.ErrCanceled
// as the cause for a canceled task, else executor.ErrSuperseded; it returns how
// many it stopped. An attempt whose result awaits its write has ended already.
func (c *Claimer) stopSuperseded(ctx context.Context) (int, error) {
	keys := c.RunningKeys()
	if len(keys) == 0 {
		return 0, nil
	}
	p := db.TaskListSupersededParams{SessionID: c.cfg.SessionID}
	for k := range keys {
		p.Ids = append(p.Ids, k.TaskID)
		p.Attempts = append(p.Attempts, k.Attempt)
	}
	rows, err := service.WithTimeout(ctx, c.cfg.CallTimeout, func(ctx context.Context) ([]db.TaskListSupersededRow, error) {
		return db.New(c.pool).TaskListSuperseded(ctx, p)
	})
	if err != nil {
		return 0, fmt.Errorf("list superseded attempts: %w", err)
	}
	pending := c.cfg.Results.Pending()
	n := 0
	for _, r := range rows {
		key := report.Key{TaskID: r.ID, Attempt: r.Attempt}
		c.mu.Lock()
		a, ok := c.running[key]
		c.mu.Unlock()
		if !ok || pending[key] || a.ctx.Err() != nil {
			continue // ended meanwhile, or already stopped
		}
		cause := executor.ErrSuperseded
		if r.State == "canceled" {
			cause = executor.ErrCanceled
		}
		c.Logger.Info("stopping a running task: its task row no longer names this attempt",
			logfield.SessionID(c.cfg.SessionID), logfield.TaskID(r.ID), logfield.Attempt(r.Attempt),
			zap.String("task_state", r.State), zap.Error(cause))
		a.cancel(cause)
		n++
		c.TestSignals.Stopped.Signal(Stopped{Key: key, Cause: cause})
	}
	return n, nil
}
