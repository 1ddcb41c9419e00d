package batontest

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Row factories. Each takes an *Opts whose fields are pointers: a nil field (or a
// nil *Opts) takes a default consistent with the rest of the row, so a test spells
// only what it is about. The rows satisfy every constraint of the schema and the
// invariants the code relies on (a dispatched task has its attempt open in the
// task row and a targeted dispatch row, a queued one no dispatch row, and so on).
// Tests may use ad-hoc SQL; these keep the same INSERTs from being written out in
// every package.

// Defaults shared by the factories.
const (
	FactoryGroup = "g"    // group of sessions and tasks when none is given
	FactoryKind  = "noop" // task kind when none is given
	FactorySlots = 4      // slots of a worker session when none are given
)

// Ptr returns a pointer to v, for Opts fields: &TaskOpts{State: Ptr("running")}.
func Ptr[T any](v T) *T { return &v }

func or[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}

// GroupOpts describes a worker group row.
type GroupOpts struct {
	Name        *string // default FactoryGroup
	Description *string // default ""
}

// NewGroup creates a worker group (nothing happens if it exists) and returns its name.
func NewGroup(t testing.TB, pool *pgxpool.Pool, opts *GroupOpts) string {
	t.Helper()
	if opts == nil {
		opts = &GroupOpts{}
	}
	name := or(opts.Name, FactoryGroup)
	if _, err := pool.Exec(context.Background(),
		"INSERT INTO worker_groups (name, description) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
		name, or(opts.Description, "")); err != nil {
		t.Fatalf("batontest: create group %q: %v", name, err)
	}
	return name
}

// WorkerSessionOpts describes a worker session row.
type WorkerSessionOpts struct {
	Group *string // default FactoryGroup, created if missing
	Name  *string // default "w"
	Slots *int    // default FactorySlots
	// State: alive (default), draining, dead or stopped; dead and stopped sessions
	// get ended_at = now().
	State *string
	// HeartbeatAge puts last_heartbeat_at this far before Postgres now(); default 0
	// (a fresh heartbeat). time.Hour makes a session stale for any timeout.
	HeartbeatAge *time.Duration
}

// NewWorkerSession creates a worker session and returns its id.
func NewWorkerSession(t testing.TB, pool *pgxpool.Pool, opts *WorkerSessionOpts) int64 {
	t.Helper()
	if opts == nil {
		opts = &WorkerSessionOpts{}
	}
	group := NewGroup(t, pool, &GroupOpts{Name: opts.Group})
	state := or(opts.State, "alive")
	var id int64
	err := pool.QueryRow(context.Background(), `
		INSERT INTO worker_sessions (name, group_name, slots, state, last_heartbeat_at, ended_at)
		VALUES ($1, $2, $3, $4, now() - $5::interval,
		        CASE WHEN $4 IN ('dead', 'stopped') THEN now() END)
		RETURNING id`,
		or(opts.Name, "w"), group, or(opts.Slots, FactorySlots), state, or(opts.HeartbeatAge, 0)).Scan(&id)
	if err != nil {
		t.Fatalf("batontest: create worker session (group %q, state %q): %v", group, state, err)
	}
	return id
}

// TaskOpts describes a task row, with the attempt and dispatch row its state implies.
type TaskOpts struct {
	Group      *string        // default FactoryGroup, created if missing
	Kind       *string        // default FactoryKind
	Payload    *string        // JSON; default {}
	Priority   *int           // default 0
	MaxRetries *int           // default 0
	Timeout    *time.Duration // per attempt; default 0 (none)
	// State: queued (default: attempt 0), dispatched (attempt 1 open, a dispatch
	// row targeted at Session), running (attempt 1 started), succeeded, failed or
	// timed_out (attempt 1 ended with that outcome, which the task row holds),
	// canceled (never dispatched: attempt 0).
	State *string
	// Session owns the attempt of a dispatched, running or finished task; default a
	// new alive session of the task's group. Ignored for queued and canceled.
	Session *int64
	// StartedAgo puts started_at this far before now() for running and finished
	// tasks (for timeout tests); default 0.
	StartedAgo *time.Duration
}

// TaskRow is what NewTask created.
type TaskRow struct {
	ID        int64
	Attempt   int   // 0 until dispatched
	SessionID int64 // the attempt's session; 0 for queued and canceled tasks
}

// NewTask creates a task in the requested state, consistently with its attempt
// and dispatch row, in one transaction.
func NewTask(t testing.TB, pool *pgxpool.Pool, opts *TaskOpts) TaskRow {
	t.Helper()
	if opts == nil {
		opts = &TaskOpts{}
	}
	ctx := context.Background()
	group := NewGroup(t, pool, &GroupOpts{Name: opts.Group})
	state := or(opts.State, "queued")
	row := TaskRow{}
	switch state {
	case "queued", "canceled":
	case "dispatched", "running", "succeeded", "failed", "timed_out":
		row.Attempt = 1
		if opts.Session != nil {
			row.SessionID = *opts.Session
		} else {
			row.SessionID = NewWorkerSession(t, pool, &WorkerSessionOpts{Group: &group})
		}
	default:
		t.Fatalf("batontest: NewTask: unknown state %q", state)
	}
	var owner *int64
	if state == "dispatched" || state == "running" {
		owner = &row.SessionID
	}
	startedAgo := or(opts.StartedAgo, 0)
	priority := or(opts.Priority, 0)
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if err := tx.QueryRow(ctx, `
			INSERT INTO tasks (group_name, kind, payload, priority, max_retries, timeout_ms, state, attempt,
			                   worker_session_id, attempt_session_id, dispatched_at, started_at, finished_at)
			VALUES ($1, $2, $3::jsonb, $4, $5, $6, $7, $8, $9, nullif($11::bigint, 0),
			        CASE WHEN $8 > 0 THEN now() - $10::interval END,
			        CASE WHEN $7 NOT IN ('queued', 'dispatched', 'canceled') THEN now() - $10::interval END,
			        CASE WHEN $7 IN ('succeeded', 'failed', 'timed_out', 'canceled') THEN now() END)
			RETURNING id`,
			group, or(opts.Kind, FactoryKind), or(opts.Payload, "{}"), priority, or(opts.MaxRetries, 0),
			or(opts.Timeout, 0).Milliseconds(), state, row.Attempt, owner, startedAgo, row.SessionID).Scan(&row.ID); err != nil {
			return err
		}
		if state == "dispatched" {
			if _, err := tx.Exec(ctx, `
				INSERT INTO dispatch_queue (task_id, attempt, group_name, target_session_id, priority, reason)
				VALUES ($1, $2, $3, $4, $5, 'submit')`, row.ID, row.Attempt, group, owner, priority); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("batontest: create %s task in group %q: %v", state, group, err)
	}
	return row
}
