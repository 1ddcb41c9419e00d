package baton

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/executor"
	"github.com/baton-scheduler/baton/internal/logfield"
)

// KindShell is the task kind of shell commands; the payload is
// {"command": "...", "env": {...}, "dir": "..."}. Only workers that enable shell
// (WorkerConfig.AllowShell, or the baton-worker binary) run them; any other
// worker fails them with an error saying so.
const KindShell = "shell"

// Task is what a Handler sees of the task it runs.
type Task struct {
	ID int64
	// Attempt is the fencing epoch: it grows on every dispatch (first run, retry,
	// failover), so together with ID it names this run of the task.
	Attempt int
	Kind    string
	Payload json.RawMessage
	// Worker is the name of the worker running the task, SessionID its session.
	Worker    string
	SessionID int64

	env   *handlerEnv
	lease func() error
}

// CheckLease returns nil while this attempt still owns the task, and an error once
// it may not: the task was canceled (the error wraps ErrTaskCanceled), the
// attempt was stopped (timeout, shutdown past its grace, ErrAttemptSuperseded),
// or the worker has not heartbeated within its self-fence time, after which a
// master may declare it dead and run the task elsewhere. Call it right before each side
// effect outside baton's database (an e-mail, a payment, a file): a Go handler
// cannot be killed like a process, and a worker that was frozen (SIGSTOP, a VM
// stall) resumes its handlers before it learns it was fenced — its context is
// canceled a moment later, but CheckLease reads the clock itself and reports the
// expiry at once. It costs a mutex and a clock read; it makes no query.
func (t Task) CheckLease() error {
	if t.lease == nil {
		return nil
	}
	return t.lease()
}

// Retries reads how many retries the task has used and its limit (one query;
// nothing is read unless a handler asks). On the last attempt used == limit.
func (t Task) Retries(ctx context.Context) (used, limit int, err error) {
	if t.env == nil || t.env.pool == nil {
		return 0, 0, errors.New("retries: task is not running on a baton worker")
	}
	r, err := db.New(t.env.pool).TaskRetryState(ctx, t.ID)
	if err != nil {
		return 0, 0, fmt.Errorf("read retries of task %d: %w", t.ID, err)
	}
	return int(r.Retries), int(r.MaxRetries), nil
}

// Permanent marks a handler's error as final: the task fails now, whatever
// retries it has left (a payload that can never work). The task's MaxRetries is
// lowered to the retries used, a write fenced by the attempt like any result.
func Permanent(err error) error {
	if err == nil {
		err = errors.New("permanent failure")
	}
	return &permanentError{err}
}

type permanentError struct{ err error }

func (e *permanentError) Error() string { return "permanent: " + e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// Snooze, returned by a handler, ends the attempt without using a retry: the task
// goes back to the queue and runs again (a new attempt, on any worker of its
// group) after d — for work that is not ready yet (a rate limit, a resource
// still being prepared). d is clamped to 0..30 days. The attempt is recorded with
// outcome "snoozed".
func Snooze(d time.Duration) error {
	return &executor.SnoozeError{For: min(max(d, 0), MaxSnooze)}
}

// MaxSnooze is the longest Snooze.
const MaxSnooze = 30 * 24 * time.Hour

// IsPermanent reports whether err was marked with Permanent.
func IsPermanent(err error) bool {
	var p *permanentError
	return errors.As(err, &p)
}

// handlerEnv is what a handler's Task reaches back to: the worker's pool.
type handlerEnv struct {
	pool *pgxpool.Pool
	log  *zap.Logger
}

// Handler runs one attempt of a task kind inside the worker process. It must
// return when ctx is done (the task timed out or was canceled — then
// context.Cause(ctx) is ErrTaskCanceled —, the worker fenced itself or is
// shutting down). The returned string is stored as the task's output; an error
// fails the attempt (retried while the task has retries left; wrap it with
// Permanent to fail the task for good), and a panic is recovered and recorded
// as a failure.
type Handler func(ctx context.Context, task Task) (output string, err error)

func (h Handler) internal(env *handlerEnv) executor.Handler {
	return func(ctx context.Context, t executor.Task) (string, error) {
		out, err := h(ctx, Task{ID: t.ID, Attempt: int(t.Attempt), Kind: t.Kind, Payload: t.Payload, Worker: t.Worker, SessionID: t.SessionID, env: env, lease: t.Lease})
		if err != nil && IsPermanent(err) && env != nil && env.pool != nil {
			env.exhaustRetries(ctx, t)
		}
		return out, err
	}
}

// exhaustRetries makes the running attempt's failure final. Best effort: if it
// cannot be written, the failure is retried as any other.
func (env *handlerEnv) exhaustRetries(ctx context.Context, t executor.Task) {
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	_, err := db.New(env.pool).TaskExhaustRetries(wctx, db.TaskExhaustRetriesParams{ID: t.ID, Attempt: t.Attempt, SessionID: t.SessionID})
	if err != nil {
		env.log.Warn("permanent failure not recorded; the task may be retried", logfield.TaskID(t.ID), logfield.Attempt(t.Attempt), zap.Error(err))
	}
}

// TaskSpec describes a task to submit.
type TaskSpec struct {
	// Group is the worker group that runs the task; it must exist (a worker of
	// the group registered, or Client.CreateGroup) unless CreateGroup is set.
	Group string
	// Kind is the handler name (or KindShell): 1-128 of letters, digits, _ . : / -.
	Kind string
	// Payload is the task input, JSON of at most 1 MiB; empty means {}.
	Payload json.RawMessage
	// Priority: higher runs first, -1000..1000.
	Priority int
	// MaxRetries is how many times a failed or timed-out attempt is retried
	// (0..100; failovers do not count).
	MaxRetries int
	// Timeout bounds one attempt; 0 means none.
	Timeout time.Duration
	// RetryBackoff is how long a failed or timed-out attempt waits before its
	// retry; nil takes the group's (Client.SetGroupRetryBackoff; default 1 s
	// doubling to 5 minutes).
	RetryBackoff *RetryBackoff
	// CreateGroup creates Group if it does not exist instead of failing with
	// ErrUnknownGroup.
	CreateGroup bool
	// RunAt, when set, is the earliest time the task may run: until then it is
	// in state scheduled and no worker claims it; a time in the past runs at
	// once. Once due it runs within a worker's PollInterval, and takes its
	// place among the queued tasks by priority, then submission order (tasks
	// with the same RunAt and priority run in the order they were submitted).
	RunAt time.Time
	// Delay is RunAt relative to the database's clock (now() + Delay), for
	// "in 7 days" without trusting the submitter's clock; at most 10 years.
	// Set RunAt or Delay, not both.
	Delay time.Duration
	// Unique, when set, stores the task only if no task of the same kind holds
	// Unique.Key in its scope; otherwise the submit returns the holder's id
	// (Insert and InsertTx say it was a duplicate).
	Unique *UniqueOpts
	// Tags label the task, to find it with ListParams.Tags (or baton task list
	// --tag): at most 16, each 1-128 of letters, digits, _ . : / - = (e.g.
	// "customer=acme").
	Tags []string
}

// UniqueOpts makes a task unique by key among tasks of its kind, within a
// scope. A unique index enforces it in the submitting transaction, so it holds
// for concurrent submits from any number of processes, and inside SubmitTx (a
// concurrent submit of the same key waits for that transaction to end).
type UniqueOpts struct {
	// Key is 1-256 bytes of UTF-8 chosen by the application, e.g.
	// "invoice-1234-reminder" or an HTTP request's idempotency key.
	Key string
	// Scope is how long the key is held: UniqueWhileActive (the default),
	// UniqueForPeriod or UniqueUntilPruned.
	Scope UniqueScope
	// Period is the length of UniqueForPeriod's periods: a submit falls in the
	// period (Postgres time, counted from the Unix epoch) that contains its
	// now(), and the key is held once per period. Only for UniqueForPeriod.
	Period time.Duration
}

// UniqueScope says how long a unique key is held.
type UniqueScope string

// Unique scopes.
const (
	// UniqueWhileActive: while the holder is scheduled, queued, dispatched or
	// running; once it has finished, the key can be used again.
	UniqueWhileActive UniqueScope = "active"
	// UniqueForPeriod: once per UniqueOpts.Period, whatever the holder's state.
	UniqueForPeriod UniqueScope = "period"
	// UniqueUntilPruned: as long as the holder's row exists (retention prunes
	// finished tasks: see baton prune).
	UniqueUntilPruned UniqueScope = "forever"
)

// RetryBackoff is a retry policy, stated once per task (TaskSpec.RetryBackoff)
// or per group (Client.SetGroupRetryBackoff), never per process: retry n waits
// Base·2^(n-1), capped at Max, spread ±20%. Postgres computes the delay when the
// failure is recorded, so workers and masters need no configuration for it.
// Base is 0..24 h, Max is Base..7 days; millisecond resolution.
type RetryBackoff struct {
	Base time.Duration
	Max  time.Duration
}

// TaskState is where a task is in its life:
//
//	[scheduled ->] queued -> running -> succeeded | failed | timed_out | canceled
//
// A task submitted with TaskSpec.RunAt or Delay in the future is scheduled until
// then.
// A worker claims a queued task and runs it. A failover may instead place it on
// a chosen worker (dispatched) before it runs. A retry, a snooze or a failover
// returns a task to queued (or dispatched).
type TaskState string

// Task states.
const (
	TaskScheduled  TaskState = "scheduled"  // submitted to run later (TaskSpec.RunAt, Delay): not claimed before TaskInfo.RunAt
	TaskQueued     TaskState = "queued"     // waiting for a worker of its group to claim it
	TaskDispatched TaskState = "dispatched" // assigned to a worker session, not yet claimed
	TaskRunning    TaskState = "running"    // claimed and running on that session
	TaskSucceeded  TaskState = "succeeded"
	TaskFailed     TaskState = "failed"
	TaskTimedOut   TaskState = "timed_out"
	TaskCanceled   TaskState = "canceled"
)

// Terminal reports whether a task in state s will never run again.
func (s TaskState) Terminal() bool {
	switch s {
	case TaskSucceeded, TaskFailed, TaskTimedOut, TaskCanceled:
		return true
	}
	return false
}

// TaskInfo is a task's stored row.
type TaskInfo struct {
	ID       int64
	Group    string
	Kind     string
	Payload  json.RawMessage
	Priority int
	State    TaskState
	// Attempt is the fencing epoch of the current (or last) attempt; 0 before
	// the first dispatch.
	Attempt int
	// WorkerSessionID is the session the task is dispatched to or running on (0
	// unless dispatched or running).
	WorkerSessionID int64
	// MaxRetries is the task's retry limit; a handler's Permanent lowers it to
	// Retries (no retry left), and SubmittedMaxRetries keeps the submitted one.
	MaxRetries          int
	SubmittedMaxRetries int
	// Retries counts the retries used: failed or timed-out attempts that were
	// run again. Attempt counts every run (the first, retries, snoozes and
	// failovers), so after a snooze Attempt is 2 and Retries 0.
	Retries      int          // retries used so far
	RetryBackoff RetryBackoff // the task's retry policy (its own, or its group's at submit)
	Timeout      time.Duration
	// RunAt is when the task may next be claimed: its TaskSpec.RunAt, or the
	// time a retry's backoff or a snooze ends (meaningful while scheduled or
	// queued).
	RunAt         time.Time
	FailoverCount int // times moved off a dead or stopped worker
	SubmittedAt   time.Time
	DispatchedAt  *time.Time
	StartedAt     *time.Time
	FinishedAt    *time.Time
	ExitCode      *int   // shell tasks only
	Output        string // handler result or captured output of the last finished attempt
	LastError     string
	// UniqueKey and UniqueScope are the task's TaskSpec.Unique ("" if none).
	UniqueKey   string
	UniqueScope UniqueScope
	Tags        []string
}

func taskInfoFromRow(r db.Task) TaskInfo {
	return TaskInfo{
		ID: r.ID, Group: r.GroupName, Kind: r.Kind, Payload: r.Payload, Priority: int(r.Priority),
		State: TaskState(r.State), Attempt: int(r.Attempt), WorkerSessionID: deref(r.WorkerSessionID),
		MaxRetries: int(r.MaxRetries), Retries: int(r.Retries),
		RetryBackoff: RetryBackoff{Base: time.Duration(r.RetryBaseMs) * time.Millisecond, Max: time.Duration(r.RetryMaxMs) * time.Millisecond},
		Timeout:      time.Duration(r.TimeoutMs) * time.Millisecond, RunAt: r.AvailableAt,
		FailoverCount: int(r.FailoverCount), SubmittedAt: r.SubmittedAt, DispatchedAt: r.DispatchedAt,
		StartedAt: r.StartedAt, FinishedAt: r.FinishedAt, ExitCode: intPtr(r.ExitCode), Output: r.Output, LastError: r.LastError,
		UniqueKey: deref(r.UniqueKey), UniqueScope: UniqueScope(deref(r.UniqueScope)), Tags: r.Tags,
		SubmittedMaxRetries: int(cmp.Or(deref(r.SubmittedMaxRetries), r.MaxRetries)),
	}
}

// Attempt is one dispatch of a task and how it ended (history; dashboards read it).
type Attempt struct {
	TaskID          int64
	Attempt         int
	WorkerSessionID int64
	// Reason is why the attempt exists: submit, retry, failover or snooze.
	Reason       string
	DispatchedAt time.Time
	StartedAt    *time.Time
	FinishedAt   *time.Time
	// Outcome is empty while in flight; else succeeded, failed, timed_out,
	// canceled, snoozed (the handler returned Snooze), failed_over (its worker
	// died) or fenced (recorded by versions before schema v3: its worker reported
	// after the attempt was superseded).
	Outcome  string
	ExitCode *int
	Error    string
	// RefusedOutcome and RefusedAt record a result its worker reported after the
	// attempt was superseded (failover, timeout, cancel): the write was refused
	// and the outcome above kept. Empty and nil otherwise.
	RefusedOutcome string
	RefusedAt      *time.Time
}

func attemptFromRow(r db.TaskAttempt) Attempt {
	return Attempt{
		TaskID: r.TaskID, Attempt: int(r.Attempt), WorkerSessionID: r.WorkerSessionID, Reason: r.Reason,
		DispatchedAt: r.DispatchedAt, StartedAt: r.StartedAt, FinishedAt: r.FinishedAt,
		Outcome: deref(r.Outcome), ExitCode: intPtr(r.ExitCode), Error: r.Error,
		RefusedOutcome: deref(r.RefusedOutcome), RefusedAt: r.RefusedAt,
	}
}

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}

func intPtr(p *int32) *int {
	if p == nil {
		return nil
	}
	v := int(*p)
	return &v
}
