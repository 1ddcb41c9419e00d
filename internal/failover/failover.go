// Package failover moves a dead (or stopped) worker session's tasks to healthy
// workers of the same group in one transaction, and records dead masters.
package failover

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/notify"
	"github.com/baton-scheduler/baton/internal/slots"
	"github.com/baton-scheduler/baton/internal/state"
	"github.com/baton-scheduler/baton/internal/store"
)

// Defaults.
const (
	// DefaultBatchSize is how many tasks one SELECT ... FOR UPDATE SKIP LOCKED takes.
	DefaultBatchSize = 1000
	// DefaultMaxBatches bounds the batches of one failover transaction, so a dead
	// session with a huge number of tasks is moved in several transactions (each
	// within its deadline), not one that never fits.
	DefaultMaxBatches = 10
	// MaxFailoversDefault is how many times a task that was running when its worker
	// died is failed over; the next such death fails it (a poison task).
	MaxFailoversDefault = 3
	// LockTimeoutDefault bounds each lock wait inside a failover transaction.
	LockTimeoutDefault = time.Second
	// GroupLockWaitDefault bounds the wait for the group's dispatch lock: long
	// enough to queue behind a dispatch transaction (milliseconds), short enough
	// that a hung holder costs a sweep little.
	GroupLockWaitDefault = 250 * time.Millisecond
)

// codeLockNotAvailable is SQLSTATE 55P03: a lock wait ran out (lock_timeout).
const codeLockNotAvailable = "55P03"

// errGroupBusy aborts a failover transaction whose group lock wait ran out.
var errGroupBusy = errors.New("group dispatch lock busy")

// Config of a failover run.
type Config struct {
	WorkerTimeout time.Duration // heartbeat age after which a live session is dead
	MasterTimeout time.Duration // the same for masters
	BatchSize     int
	MaxBatches    int   // batches per transaction (default DefaultMaxBatches); the rest is left to the next pass
	MasterID      int64 // detecting master, recorded on the marker
	// MaxFailovers: a task found running on a dead session after this many
	// failovers already took it away while running fails instead of being moved.
	MaxFailovers int
	// LockTimeout bounds every lock wait of the transaction (a row a hung session
	// holds): the pass fails with a retryable error instead of waiting.
	LockTimeout time.Duration
	// GroupLockWait bounds the wait for the group's dispatch lock; when it runs out
	// the pass reports Busy and the next sweep tries again.
	GroupLockWait time.Duration
	// CrashAfter enables fast crash detection: a session that promised a liveness
	// lock (worker_sessions.liveness_lock) whose lock is free and whose heartbeat is
	// older than this is dead without waiting WorkerTimeout. 0 disables it.
	CrashAfter time.Duration
	// Now replaces Postgres now() in liveness checks (tests only; nil in production).
	Now *time.Time
	// PostmasterStart replaces pg_postmaster_start_time() (tests only).
	PostmasterStart *time.Time
}

// Result of one worker failover pass.
type Result struct {
	Ran        bool // false: busy, another master holds the lock, or the session is not stale
	Busy       bool // the group's dispatch lock is held elsewhere: left to the next pass
	Crash      bool // declared dead by crash detection (liveness lock free), before the timeout
	EventID    int64
	Deadline   time.Time
	Reassigned int
	Queued     int
	Failed     int  // poison tasks failed (failed over MaxFailovers times already)
	Finished   bool // no task of the session is left
	Completed  bool // this pass finished the marker (false when it was finished already)
	Moved      []db.FailoverMoveTasksRow
}

// Worker runs one failover pass for session (of group) in one transaction:
//  1. try the session's failover advisory lock (held: another master is on it);
//  2. take the group's dispatch lock so no dispatch races the reassignment, waiting
//     at most GroupLockWait (a dispatch transaction holds it for milliseconds);
//     still held: Busy, the next pass retries — a hung holder never stalls other
//     groups, and a busy dispatcher never starves a failover;
//  3. re-check staleness and mark the session dead (or accept it already ended);
//  4. insert the marker (UNIQUE per session);
//  5. lock its active tasks dispatched before the deadline, SKIP LOCKED, in batches;
//     move each to the least-loaded healthy session of the group, or to the queue,
//     or fail it if it is a poison task (running, and MaxFailovers failovers
//     already took it away while running);
//  6. record the pass on the marker; NOTIFY once at commit.
func Worker(ctx context.Context, pool *pgxpool.Pool, cfg Config, sessionID int64, group string) (Result, error) {
	cfg = cfg.withDefaults()
	var res Result
	err := store.WithTx(ctx, pool, func(q *db.Queries, _ pgx.Tx) error {
		res = Result{}
		got, err := q.LockTryWorkerFailover(ctx, sessionID)
		if err != nil {
			return fmt.Errorf("failover lock: %w", err)
		}
		if !got {
			return nil
		}
		if err := q.LockTimeoutLocal(ctx, cfg.GroupLockWait.Milliseconds()); err != nil {
			return fmt.Errorf("set lock timeout: %w", err)
		}
		if err := q.LockDispatchGroup(ctx, group); err != nil {
			if store.Code(err) == codeLockNotAvailable {
				return errGroupBusy
			}
			return fmt.Errorf("group dispatch lock: %w", err)
		}
		if err := q.LockTimeoutLocal(ctx, cfg.LockTimeout.Milliseconds()); err != nil {
			return fmt.Errorf("set lock timeout: %w", err)
		}
		if err := q.PlanIndexProbesLocal(ctx); err != nil {
			return fmt.Errorf("set planner cost: %w", err)
		}
		lockFree := false
		if cfg.CrashAfter > 0 {
			// Free means no connection of the worker holds it any more; taking it
			// (until commit) keeps the worker from taking it back meanwhile.
			if lockFree, err = q.LockTryWorkerLivenessProbe(ctx, sessionID); err != nil {
				return fmt.Errorf("probe liveness lock: %w", err)
			}
		}
		deadState := state.SessionDead
		var crash *bool // NULL on the marker when the session had stopped
		marked, err := q.WorkerSessionMarkDead(ctx, db.WorkerSessionMarkDeadParams{
			ID: sessionID, Now: cfg.Now, TimeoutMs: float64(cfg.WorkerTimeout.Milliseconds()),
			LockFree: lockFree, CrashMs: float64(cfg.CrashAfter.Milliseconds()), PostmasterStart: cfg.PostmasterStart,
		})
		switch {
		case err == nil:
			res.Deadline, res.Crash = marked.Deadline, marked.CrashDetected
			crash = &res.Crash
		case errors.Is(err, pgx.ErrNoRows):
			s, err := q.WorkerSessionGet(ctx, sessionID)
			if err != nil {
				return fmt.Errorf("read session: %w", err)
			}
			if s.State != state.SessionDead && s.State != state.SessionStopped {
				return nil // heartbeat arrived in time: not dead after all
			}
			deadState = s.State
			res.Deadline = *s.EndedAt
		default:
			return fmt.Errorf("mark session dead: %w", err)
		}
		if err := q.FailoverEventInsert(ctx, db.FailoverEventInsertParams{
			Kind: state.KindWorker, SessionID: sessionID, GroupName: &group, DetectedBy: nullableID(cfg.MasterID), Deadline: res.Deadline,
			CrashDetected: crash,
		}); err != nil {
			return fmt.Errorf("insert failover marker: %w", err)
		}
		ev, err := q.FailoverEventGet(ctx, db.FailoverEventGetParams{Kind: state.KindWorker, SessionID: sessionID})
		if err != nil {
			return fmt.Errorf("read failover marker: %w", err)
		}
		res.EventID, res.Deadline, res.Ran = ev.ID, ev.Deadline, true
		if ev.FinishedAt != nil {
			res.Finished = true
			return nil
		}
		healthy, err := q.WorkerSessionListHealthy(ctx, db.WorkerSessionListHealthyParams{
			GroupName: group, Now: cfg.Now, TimeoutMs: float64(cfg.WorkerTimeout.Milliseconds()),
		})
		if err != nil {
			return fmt.Errorf("list healthy sessions: %w", err)
		}
		picker := slots.NewPicker(healthy, sessionID)
		for batch := 0; batch < cfg.MaxBatches; batch++ {
			locked, err := q.FailoverLockTasks(ctx, db.FailoverLockTasksParams{SessionID: &sessionID, Deadline: &res.Deadline, MaxTasks: int32(cfg.BatchSize)})
			if err != nil {
				return fmt.Errorf("lock tasks of session %d: %w", sessionID, err)
			}
			if len(locked) == 0 {
				break
			}
			p := db.FailoverMoveTasksParams{DeadSessionID: sessionID, DeadState: deadState, MaxFailovers: int32(cfg.MaxFailovers)}
			for _, t := range locked {
				p.TaskIds = append(p.TaskIds, t.ID)
				p.OldAttempts = append(p.OldAttempts, t.Attempt)
				if Poison(t.State, deadState, t.RunningFailovers, cfg.MaxFailovers) {
					p.Targets = append(p.Targets, targetFail)
				} else {
					p.Targets = append(p.Targets, picker.Next())
				}
			}
			moved, err := q.FailoverMoveTasks(ctx, p)
			if err != nil {
				return fmt.Errorf("move tasks of session %d: %w", sessionID, err)
			}
			for _, m := range moved {
				switch {
				case m.State == state.TaskFailed:
					res.Failed++
				case m.WorkerSessionID != nil:
					res.Reassigned++
				default:
					res.Queued++
				}
			}
			res.Moved = append(res.Moved, moved...)
			if len(locked) < cfg.BatchSize {
				break
			}
		}
		remaining, err := q.FailoverCountRemaining(ctx, db.FailoverCountRemainingParams{SessionID: &sessionID, Deadline: &res.Deadline})
		if err != nil {
			return fmt.Errorf("count remaining tasks: %w", err)
		}
		res.Finished = remaining == 0
		res.Completed = res.Finished
		if _, err := q.FailoverEventRecordPass(ctx, db.FailoverEventRecordPassParams{
			ID: ev.ID, Reassigned: int32(res.Reassigned), Queued: int32(res.Queued), Finished: res.Finished,
		}); err != nil {
			return fmt.Errorf("record failover pass: %w", err)
		}
		return notifyMoved(ctx, q, group, res.Moved)
	})
	if errors.Is(err, errGroupBusy) {
		return Result{Busy: true}, nil
	}
	if err != nil {
		return Result{}, err
	}
	return res, nil
}

// targetFail as a FailoverMoveTasks target fails the task (a poison task).
const targetFail = -1

// Poison reports whether a task found on a dead session must fail instead of being
// moved: it was running (so it may be what killed its worker), its worker died
// (declared dead; a worker that stopped by itself — a drain past its grace, a
// self-fence — is no evidence against the task) and maxFailovers such failovers
// already took it away while running. A task merely dispatched to a dead worker
// never is, and such moves do not count; neither do moves off stopped sessions.
func Poison(taskState, sessionState string, runningFailovers int32, maxFailovers int) bool {
	return taskState == state.TaskRunning && sessionState == state.SessionDead && int(runningFailovers) >= maxFailovers
}

// notifyMoved sends one NOTIFY per transaction: the sessions that got tasks, and a
// dispatcher wake-up if some went back to the queue.
func notifyMoved(ctx context.Context, q *db.Queries, group string, moved []db.FailoverMoveTasksRow) error {
	seen := map[int64]bool{}
	var ids []string
	queued := false
	for _, m := range moved {
		if m.WorkerSessionID == nil {
			queued = queued || m.State != state.TaskFailed
			continue
		}
		if !seen[*m.WorkerSessionID] {
			seen[*m.WorkerSessionID] = true
			ids = append(ids, strconv.FormatInt(*m.WorkerSessionID, 10))
		}
	}
	if len(ids) > 0 {
		if err := q.NotifyClaim(ctx, notify.ClaimPayload(ids)); err != nil {
			return fmt.Errorf("notify workers: %w", err)
		}
	}
	if queued {
		// The group's workers claim queued tasks directly; masters' dispatchers
		// are the fallback.
		if err := q.NotifyQueued(ctx, []string{group}); err != nil {
			return fmt.Errorf("notify queued: %w", err)
		}
		if err := q.NotifyDispatch(ctx); err != nil {
			return fmt.Errorf("notify dispatch: %w", err)
		}
	}
	return nil
}

// Master records a dead master: re-check, mark dead, one marker. Workflow runs it
// owns will be taken over here when workflows exist; tasks need no master.
func Master(ctx context.Context, pool *pgxpool.Pool, cfg Config, masterID int64) (bool, error) {
	cfg = cfg.withDefaults()
	ran := false
	err := store.WithTx(ctx, pool, func(q *db.Queries, _ pgx.Tx) error {
		if err := q.LockTimeoutLocal(ctx, cfg.LockTimeout.Milliseconds()); err != nil {
			return fmt.Errorf("set lock timeout: %w", err)
		}
		got, err := q.LockTryMasterFailover(ctx, masterID)
		if err != nil || !got {
			return err
		}
		deadline, err := q.MasterSessionMarkDead(ctx, db.MasterSessionMarkDeadParams{ID: masterID, Now: cfg.Now, TimeoutMs: float64(cfg.MasterTimeout.Milliseconds())})
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("mark master dead: %w", err)
		}
		if err := q.FailoverEventInsert(ctx, db.FailoverEventInsertParams{
			Kind: state.KindMaster, SessionID: masterID, DetectedBy: nullableID(cfg.MasterID), Deadline: deadline,
		}); err != nil {
			return fmt.Errorf("insert master failover marker: %w", err)
		}
		ran = true
		if _, err := q.FailoverEventFinishMaster(ctx, masterID); err != nil {
			return fmt.Errorf("finish master failover marker: %w", err)
		}
		return nil
	})
	return ran, err
}

func nullableID(id int64) *int64 {
	if id == 0 {
		return nil
	}
	return &id
}

func (c Config) withDefaults() Config {
	if c.WorkerTimeout <= 0 {
		c.WorkerTimeout = 5 * time.Second
	}
	if c.MasterTimeout <= 0 {
		c.MasterTimeout = c.WorkerTimeout
	}
	if c.BatchSize <= 0 {
		c.BatchSize = DefaultBatchSize
	}
	if c.MaxBatches <= 0 {
		c.MaxBatches = DefaultMaxBatches
	}
	if c.MaxFailovers <= 0 {
		c.MaxFailovers = MaxFailoversDefault
	}
	if c.LockTimeout <= 0 {
		c.LockTimeout = LockTimeoutDefault
	}
	if c.GroupLockWait <= 0 {
		c.GroupLockWait = GroupLockWaitDefault
	}
	return c
}
