package batontest_test

import (
	"context"
	"testing"
	"time"

	"github.com/baton-scheduler/baton/batontest"
)

// Every state the task factory knows gives rows that satisfy the schema and the
// invariants the code relies on; nil options take consistent defaults.
func TestFactories(t *testing.T) {
	t.Parallel()
	pool, _ := srv.NewPool(t)
	q := func(sql string, args ...any) int64 { t.Helper(); return batontest.Int64(t, pool, sql, args...) }

	if g := batontest.NewGroup(t, pool, nil); g != batontest.FactoryGroup {
		t.Fatalf("default group %q", g)
	}
	batontest.NewGroup(t, pool, nil) // idempotent
	stale := batontest.NewWorkerSession(t, pool, &batontest.WorkerSessionOpts{Group: batontest.Ptr("other"), HeartbeatAge: batontest.Ptr(time.Hour)})
	if n := q("SELECT count(*) FROM worker_sessions WHERE id = $1 AND group_name = 'other' AND state = 'alive' AND slots = $2 AND last_heartbeat_at < now() - interval '59 minutes'", stale, batontest.FactorySlots); n != 1 {
		t.Fatal("stale session not as asked")
	}
	dead := batontest.NewWorkerSession(t, pool, &batontest.WorkerSessionOpts{State: batontest.Ptr("dead")})
	if n := q("SELECT count(*) FROM worker_sessions WHERE id = $1 AND ended_at IS NOT NULL", dead); n != 1 {
		t.Fatal("dead session has no ended_at")
	}

	cases := []struct {
		state            string
		attempt          int
		session          bool
		dispatch, target int64 // dispatch rows, of which targeted
		outcome          string
	}{
		// A queued task is the queue itself: no dispatch row.
		{"queued", 0, false, 0, 0, ""},
		{"dispatched", 1, true, 1, 1, ""},
		{"running", 1, true, 0, 0, ""},
		{"succeeded", 1, true, 0, 0, "succeeded"},
		{"failed", 1, true, 0, 0, "failed"},
		{"timed_out", 1, true, 0, 0, "timed_out"},
		{"canceled", 0, false, 0, 0, ""},
	}
	for _, tc := range cases {
		t.Run(tc.state, func(t *testing.T) {
			r := batontest.NewTask(t, pool, &batontest.TaskOpts{State: &tc.state, Priority: batontest.Ptr(7), StartedAgo: batontest.Ptr(time.Minute)})
			if r.Attempt != tc.attempt || (r.SessionID != 0) != tc.session {
				t.Fatalf("row %+v", r)
			}
			if n := q("SELECT count(*) FROM tasks WHERE id = $1 AND state = $2 AND attempt = $3 AND kind = $4 AND priority = 7", r.ID, tc.state, tc.attempt, batontest.FactoryKind); n != 1 {
				t.Fatal("task row not as asked")
			}
			if n := q("SELECT count(*) FROM dispatch_queue WHERE task_id = $1 AND attempt = $2 AND priority = 7", r.ID, tc.attempt); n != tc.dispatch {
				t.Fatalf("dispatch rows = %d, want %d", n, tc.dispatch)
			}
			if n := q("SELECT count(*) FROM dispatch_queue WHERE task_id = $1 AND target_session_id = $2", r.ID, r.SessionID); n != tc.target {
				t.Fatalf("targeted dispatch rows = %d, want %d", n, tc.target)
			}
			if tc.state == "queued" {
				// In the queue: claimable now (index tasks_queue), as submitted.
				if n := q("SELECT count(*) FROM tasks WHERE id = $1 AND available_at <= now() AND queued_reason = 'submit' AND worker_session_id IS NULL", r.ID); n != 1 {
					t.Fatal("queued task not claimable")
				}
			}
			// The attempt (open or final) is described by the task row alone; the
			// view task_attempts shows it, and the log holds nothing.
			wantAttempts := int64(tc.attempt)
			if n := q("SELECT count(*) FROM task_attempts WHERE task_id = $1 AND worker_session_id = $2 AND coalesce(outcome, '') = $3", r.ID, r.SessionID, tc.outcome); n != wantAttempts {
				t.Fatalf("attempt rows = %d, want %d", n, wantAttempts)
			}
			if n := q("SELECT count(*) FROM task_attempt_log WHERE task_id = $1", r.ID); n != 0 {
				t.Fatalf("attempt log rows = %d, want 0", n)
			}
			var owner int64
			if tc.state == "dispatched" || tc.state == "running" {
				owner = r.SessionID
			}
			if n := q("SELECT count(*) FROM tasks WHERE id = $1 AND coalesce(attempt_session_id, 0) = $2 AND coalesce(worker_session_id, 0) = $3", r.ID, r.SessionID, owner); n != 1 {
				t.Fatal("task row's attempt/owner session not as asked")
			}
			if tc.state == "running" {
				if n := q("SELECT count(*) FROM tasks WHERE id = $1 AND started_at < now() - interval '59 seconds'", r.ID); n != 1 {
					t.Fatal("StartedAgo not applied")
				}
			}
		})
	}
	// A given session owns the attempt; the default session is in the task's group.
	s := batontest.NewWorkerSession(t, pool, &batontest.WorkerSessionOpts{Name: batontest.Ptr("mine")})
	if r := batontest.NewTask(t, pool, &batontest.TaskOpts{State: batontest.Ptr("running"), Session: &s}); r.SessionID != s {
		t.Fatalf("session %d, want %d", r.SessionID, s)
	}
	r := batontest.NewTask(t, pool, &batontest.TaskOpts{Group: batontest.Ptr("other"), State: batontest.Ptr("dispatched")})
	if n := q("SELECT count(*) FROM worker_sessions WHERE id = $1 AND group_name = 'other'", r.SessionID); n != 1 {
		t.Fatal("default session not in the task's group")
	}
	var payload string
	if err := pool.QueryRow(context.Background(), "SELECT payload::text FROM tasks WHERE id = $1", r.ID).Scan(&payload); err != nil || payload != "{}" {
		t.Fatalf("default payload %q, %v", payload, err)
	}
}
