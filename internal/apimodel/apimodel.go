// Package apimodel is baton's one JSON model: what `baton ... --json` prints and
// what the HTTP API sends and takes. Field names are the snake_case of the Go
// API's (baton.TaskInfo, baton.Attempt, ...), ids are JSON numbers, durations are
// integers with their unit in the name (timeout_ms), and times are RFC 3339 in
// UTC with second precision ("2026-12-05T14:31:14Z"), which jq's
// fromdateiso8601 and every RFC 3339 parser accept; an absent time is null.
// The sqlc row types (package db) never leave the process: they are converted
// here.
package apimodel

import (
	"encoding/json"
	"time"

	"github.com/baton-scheduler/baton/db"
)

// Time is a timestamp as the model prints it: RFC 3339, UTC, whole seconds.
type Time struct{ time.Time }

// TimeFormat is the layout of every time in the model.
const TimeFormat = "2006-01-02T15:04:05Z07:00"

// MarshalJSON prints t in UTC to the second.
func (t Time) MarshalJSON() ([]byte, error) {
	return json.Marshal(t.UTC().Truncate(time.Second).Format(TimeFormat))
}

// UnmarshalJSON reads any RFC 3339 time (fractions allowed).
func (t *Time) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return err
	}
	t.Time = v
	return nil
}

// At converts a time.
func At(t time.Time) Time { return Time{t} }

// AtPtr converts an optional time; nil stays nil (JSON null).
func AtPtr(t *time.Time) *Time {
	if t == nil {
		return nil
	}
	return &Time{*t}
}

// RetryBackoff is baton.RetryBackoff: retry n waits base_ms·2^(n-1), capped at max_ms.
type RetryBackoff struct {
	BaseMs int64 `json:"base_ms"`
	MaxMs  int64 `json:"max_ms"`
}

// Task is baton.TaskInfo.
type Task struct {
	ID       int64           `json:"id"`
	Group    string          `json:"group"`
	Kind     string          `json:"kind"`
	Payload  json.RawMessage `json:"payload"`
	Priority int             `json:"priority"`
	// State: scheduled (RunAt in the future), queued, dispatched, running,
	// succeeded, failed, timed_out, canceled.
	State string `json:"state"`
	// Attempt is the fencing epoch of the current (or last) attempt; 0 before the first.
	Attempt int `json:"attempt"`
	// WorkerSessionID is the session the task is dispatched to or running on; null otherwise.
	WorkerSessionID *int64       `json:"worker_session_id"`
	MaxRetries      int          `json:"max_retries"`
	Retries         int          `json:"retries"`
	RetryBackoff    RetryBackoff `json:"retry_backoff"`
	TimeoutMs       int64        `json:"timeout_ms"`
	FailoverCount   int          `json:"failover_count"`
	// WorkflowRunID is the workflow run the task belongs to; null for a plain task.
	WorkflowRunID *int64 `json:"workflow_run_id"`
	SubmittedAt   Time   `json:"submitted_at"`
	// AvailableAt: a queued task is not claimed before it (retry backoff, snooze).
	AvailableAt  Time   `json:"available_at"`
	DispatchedAt *Time  `json:"dispatched_at"`
	StartedAt    *Time  `json:"started_at"`
	FinishedAt   *Time  `json:"finished_at"`
	ExitCode     *int   `json:"exit_code"`
	Output       string `json:"output"`
	LastError    string `json:"last_error"`
	// Tags label the task (given at submit); [] when none.
	Tags []string `json:"tags"`
}

// TaskFromRow converts a task row.
func TaskFromRow(r db.Task) Task {
	payload := r.Payload
	if len(payload) == 0 {
		payload = json.RawMessage("{}")
	}
	t := Task{
		ID: r.ID, Group: r.GroupName, Kind: r.Kind, Payload: payload, Priority: int(r.Priority), State: r.State,
		Attempt: int(r.Attempt), WorkerSessionID: r.WorkerSessionID, MaxRetries: int(r.MaxRetries), Retries: int(r.Retries),
		RetryBackoff: RetryBackoff{BaseMs: r.RetryBaseMs, MaxMs: r.RetryMaxMs}, TimeoutMs: r.TimeoutMs,
		FailoverCount: int(r.FailoverCount), WorkflowRunID: r.WorkflowRunID,
		SubmittedAt: At(r.SubmittedAt), AvailableAt: At(r.AvailableAt), DispatchedAt: AtPtr(r.DispatchedAt),
		StartedAt: AtPtr(r.StartedAt), FinishedAt: AtPtr(r.FinishedAt), ExitCode: intPtr(r.ExitCode),
		Output: r.Output, LastError: r.LastError, Tags: r.Tags,
	}
	if t.Tags == nil {
		t.Tags = []string{}
	}
	return t
}

// Tasks converts task rows.
func Tasks(rows []db.Task) []Task { return each(rows, TaskFromRow) }

// each converts every element (an empty list, not null, for none).
func each[T, U any](in []T, f func(T) U) []U {
	out := make([]U, 0, len(in))
	for _, v := range in {
		out = append(out, f(v))
	}
	return out
}

// Attempt is baton.Attempt: one dispatch of a task and how it ended.
type Attempt struct {
	TaskID          int64 `json:"task_id"`
	Attempt         int   `json:"attempt"`
	WorkerSessionID int64 `json:"worker_session_id"`
	// Reason: submit, retry, failover or snooze.
	Reason       string `json:"reason"`
	DispatchedAt Time   `json:"dispatched_at"`
	StartedAt    *Time  `json:"started_at"`
	FinishedAt   *Time  `json:"finished_at"`
	// Outcome is null while in flight: succeeded, failed, timed_out,
	// failed_over, fenced or canceled.
	Outcome        *string `json:"outcome"`
	ExitCode       *int    `json:"exit_code"`
	Error          string  `json:"error"`
	RefusedOutcome *string `json:"refused_outcome"`
	RefusedAt      *Time   `json:"refused_at"`
}

// Attempts converts attempt rows.
func Attempts(rows []db.TaskAttempt) []Attempt {
	return each(rows, func(r db.TaskAttempt) Attempt {
		return Attempt{
			TaskID: r.TaskID, Attempt: int(r.Attempt), WorkerSessionID: r.WorkerSessionID, Reason: r.Reason,
			DispatchedAt: At(r.DispatchedAt), StartedAt: AtPtr(r.StartedAt), FinishedAt: AtPtr(r.FinishedAt),
			Outcome: r.Outcome, ExitCode: intPtr(r.ExitCode), Error: r.Error,
			RefusedOutcome: r.RefusedOutcome, RefusedAt: AtPtr(r.RefusedAt),
		}
	})
}

// TaskDetail is a task with its attempts, oldest first (`task show`, GET /api/v1/tasks/{id}).
type TaskDetail struct {
	Task     Task      `json:"task"`
	Attempts []Attempt `json:"attempts"`
}

// Worker is a worker session.
type Worker struct {
	ID              int64  `json:"id"`
	Name            string `json:"name"`
	Group           string `json:"group"`
	Slots           int    `json:"slots"`
	Host            string `json:"host"`
	Pid             int    `json:"pid"`
	Version         string `json:"version"`
	State           string `json:"state"`
	StartedAt       Time   `json:"started_at"`
	LastHeartbeatAt Time   `json:"last_heartbeat_at"`
	EndedAt         *Time  `json:"ended_at"`
	// HeartbeatAgeSeconds is measured on Postgres' clock.
	HeartbeatAgeSeconds float64 `json:"heartbeat_age_seconds"`
	ActiveTasks         int     `json:"active_tasks"`
}

// Workers converts worker list rows.
func Workers(rows []db.WorkerSessionListRow) []Worker {
	return each(rows, func(w db.WorkerSessionListRow) Worker {
		return Worker{
			ID: w.ID, Name: w.Name, Group: w.GroupName, Slots: int(w.Slots), Host: w.Host, Pid: int(w.Pid),
			Version: w.Version, State: w.State, StartedAt: At(w.StartedAt), LastHeartbeatAt: At(w.LastHeartbeatAt),
			EndedAt: AtPtr(w.EndedAt), HeartbeatAgeSeconds: w.HeartbeatAgeSeconds, ActiveTasks: int(w.ActiveTasks),
		}
	})
}

// Master is a master session.
type Master struct {
	ID              int64  `json:"id"`
	Name            string `json:"name"`
	Host            string `json:"host"`
	Pid             int    `json:"pid"`
	Version         string `json:"version"`
	State           string `json:"state"`
	StartedAt       Time   `json:"started_at"`
	LastHeartbeatAt Time   `json:"last_heartbeat_at"`
	EndedAt         *Time  `json:"ended_at"`
}

// MasterFromRow converts a master session row.
func MasterFromRow(m db.MasterSession) Master {
	return Master{ID: m.ID, Name: m.Name, Host: m.Host, Pid: int(m.Pid), Version: m.Version, State: m.State,
		StartedAt: At(m.StartedAt), LastHeartbeatAt: At(m.LastHeartbeatAt), EndedAt: AtPtr(m.EndedAt)}
}

// FailoverEvent is a failover marker.
type FailoverEvent struct {
	ID int64 `json:"id"`
	// Kind: worker or master.
	Kind            string  `json:"kind"`
	SessionID       int64   `json:"session_id"`
	Group           *string `json:"group"`
	DetectedBy      *int64  `json:"detected_by"`
	Deadline        Time    `json:"deadline"`
	StartedAt       Time    `json:"started_at"`
	FinishedAt      *Time   `json:"finished_at"`
	TasksReassigned int     `json:"tasks_reassigned"`
	TasksQueued     int     `json:"tasks_queued"`
	Passes          int     `json:"passes"`
	// CrashDetected: a worker session declared dead by crash detection (its
	// liveness lock free) when true, by the heartbeat timeout when false; null
	// for a master, a session that had stopped, and markers older than schema 14.
	CrashDetected *bool `json:"crash_detected"`
}

// DeclaredBy names how a worker session was declared dead: "crash detection"
// (its liveness lock was free), "heartbeat timeout", or "" where the marker does
// not say (a master, a stopped session, a marker older than schema version 14).
func DeclaredBy(crashDetected *bool) string {
	switch {
	case crashDetected == nil:
		return ""
	case *crashDetected:
		return "crash detection"
	default:
		return "heartbeat timeout"
	}
}

// DeclaredBy is DeclaredBy(f.CrashDetected), for the status page.
func (f FailoverEvent) DeclaredBy() string { return DeclaredBy(f.CrashDetected) }

// FailoverEvents converts failover rows.
func FailoverEvents(rows []db.FailoverEvent) []FailoverEvent {
	return each(rows, func(f db.FailoverEvent) FailoverEvent {
		return FailoverEvent{ID: f.ID, Kind: f.Kind, SessionID: f.SessionID, Group: f.GroupName,
			DetectedBy: f.DetectedBy, Deadline: At(f.Deadline), StartedAt: At(f.StartedAt), FinishedAt: AtPtr(f.FinishedAt),
			TasksReassigned: int(f.TasksReassigned), TasksQueued: int(f.TasksQueued), Passes: int(f.Passes),
			CrashDetected: f.CrashDetected}
	})
}

// Group is baton.GroupStatus plus the group's settings.
type Group struct {
	Name         string       `json:"name"`
	Description  string       `json:"description"`
	CreatedAt    Time         `json:"created_at"`
	Paused       bool         `json:"paused"`
	RetryBackoff RetryBackoff `json:"retry_backoff"`
	LiveWorkers  int          `json:"live_workers"`
	WaitingTasks int          `json:"waiting_tasks"`
}

// Error is every 4xx and 5xx body of the HTTP API.
type Error struct {
	Error string `json:"error"`
}

func intPtr(p *int32) *int {
	if p == nil {
		return nil
	}
	v := int(*p)
	return &v
}

// Groups converts group rows.
func Groups(rows []db.GroupListRow) []Group {
	return each(rows, func(g db.GroupListRow) Group {
		return Group{Name: g.Name, Description: g.Description, CreatedAt: At(g.CreatedAt), Paused: g.Paused,
			RetryBackoff: RetryBackoff{BaseMs: g.RetryBaseMs, MaxMs: g.RetryMaxMs},
			LiveWorkers:  int(g.LiveWorkers), WaitingTasks: int(g.WaitingTasks)}
	})
}

// TaskPage is a page of GET /api/v1/tasks, newest first. NextBeforeID, when not
// null, is the before_id of the next page.
type TaskPage struct {
	Tasks        []Task `json:"tasks"`
	NextBeforeID *int64 `json:"next_before_id"`
}

// BulkResult answers a bulk cancel or retry: Matched tasks were eligible;
// Changed of them were changed (0 on a dry run); IDs are the changed ones (the
// matched ones on a dry run).
type BulkResult struct {
	DryRun  bool    `json:"dry_run"`
	Matched int     `json:"matched"`
	Changed int     `json:"changed"`
	IDs     []int64 `json:"ids"`
}

// AuditEntry is one audit_log row.
type AuditEntry struct {
	ID      int64           `json:"id"`
	At      Time            `json:"at"`
	TokenID *int64          `json:"token_id"`
	Actor   string          `json:"actor"`
	Action  string          `json:"action"`
	Target  string          `json:"target"`
	Detail  json.RawMessage `json:"detail"`
}

// AuditEntries converts audit rows.
func AuditEntries(rows []db.AuditLog) []AuditEntry {
	return each(rows, func(r db.AuditLog) AuditEntry {
		return AuditEntry{ID: r.ID, At: At(r.At), TokenID: r.TokenID, Actor: r.Actor, Action: r.Action, Target: r.Target, Detail: r.Detail}
	})
}

// Token is an HTTP API bearer token as listed: never the token itself, which
// is shown once by its creation.
type Token struct {
	ID        int64  `json:"id"`
	Name      string `json:"name"`
	Scope     string `json:"scope"`
	CreatedAt Time   `json:"created_at"`
	RevokedAt *Time  `json:"revoked_at"`
}

// Tokens converts rows.
func Tokens(rows []db.TokenListRow) []Token {
	return each(rows, func(r db.TokenListRow) Token {
		return Token{ID: r.ID, Name: r.Name, Scope: r.Scope, CreatedAt: At(r.CreatedAt), RevokedAt: AtPtr(r.RevokedAt)}
	})
}

// TokenCreated is what creating a token answers: the token, shown once.
type TokenCreated struct {
	ID    int64  `json:"id"`
	Name  string `json:"name"`
	Scope string `json:"scope"`
	Token string `json:"token"`
}

// Migration is one embedded schema migration and whether it is applied.
type Migration struct {
	Version   int64  `json:"version"`
	File      string `json:"file"`
	Applied   bool   `json:"applied"`
	AppliedAt *Time  `json:"applied_at"`
}

// SchemaVersion is the database schema's version and the latest the binary
// knows.
type SchemaVersion struct {
	Version int64 `json:"version"`
	Latest  int64 `json:"latest"`
}
