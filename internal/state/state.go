// Package state spells, once for Go, the names the schema's CHECK constraints allow:
// task states, attempt outcomes, session states, dispatch reasons and failover
// kinds. The schema is the authority; TestNamesMatchSchema fails when the two
// disagree, so a name added to a CHECK constraint (or here) cannot drift.
package state

// Task states (tasks.state, CHECK tasks_state).
const (
	TaskScheduled  = "scheduled"
	TaskQueued     = "queued"
	TaskDispatched = "dispatched"
	TaskRunning    = "running"
	TaskSucceeded  = "succeeded"
	TaskFailed     = "failed"
	TaskTimedOut   = "timed_out"
	TaskCanceled   = "canceled"
)

// Attempt outcomes (task_attempts.outcome, CHECK task_attempts_outcome).
const (
	OutcomeSucceeded  = "succeeded"
	OutcomeFailed     = "failed"
	OutcomeTimedOut   = "timed_out"
	OutcomeFailedOver = "failed_over"
	OutcomeFenced     = "fenced"
	OutcomeCanceled   = "canceled"
	// OutcomeSnoozed: the handler asked to run again later (baton.Snooze); it
	// uses no retry.
	OutcomeSnoozed = "snoozed"
)

// Session states (worker_sessions.state; master_sessions.state has all but draining).
const (
	SessionAlive    = "alive"
	SessionDraining = "draining"
	SessionDead     = "dead"
	SessionStopped  = "stopped"
)

// Why an attempt or dispatch row exists (task_attempts.reason, dispatch_queue.reason,
// tasks.attempt_reason and tasks.queued_reason).
const (
	ReasonSubmit   = "submit"
	ReasonRetry    = "retry"
	ReasonFailover = "failover"
	ReasonSnooze   = "snooze"
)

// Failover event kinds (failover_events.kind).
const (
	KindWorker = "worker"
	KindMaster = "master"
)

// The sets, by the CHECK constraint that allows them.
var (
	TaskStates     = []string{TaskScheduled, TaskQueued, TaskDispatched, TaskRunning, TaskSucceeded, TaskFailed, TaskTimedOut, TaskCanceled}
	Outcomes       = []string{OutcomeSucceeded, OutcomeFailed, OutcomeTimedOut, OutcomeFailedOver, OutcomeFenced, OutcomeCanceled, OutcomeSnoozed}
	WorkerSessions = []string{SessionAlive, SessionDraining, SessionDead, SessionStopped}
	MasterSessions = []string{SessionAlive, SessionDead, SessionStopped}
	Reasons        = []string{ReasonSubmit, ReasonRetry, ReasonFailover, ReasonSnooze}
	Kinds          = []string{KindWorker, KindMaster}
)

// TaskTerminal reports whether a task in state s will never change again.
func TaskTerminal(s string) bool {
	switch s {
	case TaskSucceeded, TaskFailed, TaskTimedOut, TaskCanceled:
		return true
	}
	return false
}
