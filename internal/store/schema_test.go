package store_test

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/baton-scheduler/baton/batontest"
	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/store"
)

var srv *batontest.Server

func TestMain(m *testing.M) {
	os.Exit(batontest.MainNoLeaks(m, func(s *batontest.Server) { srv = s }))
}

// fixture inserts a group, a live worker session, a master and one task.
func fixture(t *testing.T) (*pgxpool.Pool, int64, int64) {
	t.Helper()
	pool, _ := srv.NewPool(t)
	ctx := context.Background()
	var sessionID, taskID int64
	mustExec(t, pool, "INSERT INTO master_sessions (name) VALUES ('m1')")
	sessionID = batontest.NewWorkerSession(t, pool, &batontest.WorkerSessionOpts{Group: batontest.Ptr("g1")})
	// A bare task row without the dispatch row batontest.NewTask would add: the
	// constraint cases below insert dispatch rows for it.
	if err := pool.QueryRow(ctx, "INSERT INTO tasks (group_name, kind) VALUES ('g1', 'shell') RETURNING id").Scan(&taskID); err != nil {
		t.Fatal(err)
	}
	return pool, sessionID, taskID
}

func mustExec(t *testing.T, pool *pgxpool.Pool, sql string, args ...any) {
	t.Helper()
	if _, err := pool.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// Every constraint rejects what it should; the error carries its name.
func TestConstraints(t *testing.T) {
	t.Parallel()
	pool, sessionID, taskID := fixture(t)
	cases := []struct {
		name       string
		sql        string
		args       []any
		constraint string
		code       string
	}{
		{"group name format", "INSERT INTO worker_groups (name) VALUES ('bad name!')", nil, "worker_groups_name_format", store.CodeCheckViolation},
		{"duplicate group", "INSERT INTO worker_groups (name) VALUES ('g1')", nil, "worker_groups_pkey", store.CodeUniqueViolation},
		{"session unknown group", "INSERT INTO worker_sessions (name, group_name, slots) VALUES ('w', 'nope', 1)", nil, "worker_sessions_group_name_fkey", store.CodeForeignKeyViolation},
		{"session slots", "INSERT INTO worker_sessions (name, group_name, slots) VALUES ('w', 'g1', 0)", nil, "worker_sessions_slots", store.CodeCheckViolation},
		{"session state", "UPDATE worker_sessions SET state = 'zombie' WHERE id = $1", []any{sessionID}, "worker_sessions_state", store.CodeCheckViolation},
		{"session dead needs ended_at", "UPDATE worker_sessions SET state = 'dead' WHERE id = $1", []any{sessionID}, "worker_sessions_ended", store.CodeCheckViolation},
		{"master state", "UPDATE master_sessions SET state = 'draining'", nil, "master_sessions_state", store.CodeCheckViolation},
		{"task unknown group", "INSERT INTO tasks (group_name, kind) VALUES ('nope', 'shell')", nil, "tasks_group_name_fkey", store.CodeForeignKeyViolation},
		{"task kind", "INSERT INTO tasks (group_name, kind) VALUES ('g1', 'bad kind')", nil, "tasks_kind", store.CodeCheckViolation},
		{"task payload size", "INSERT INTO tasks (group_name, kind, payload) VALUES ('g1', 'x', jsonb_build_object('p', repeat('a', 1100000)))", nil, "tasks_payload_size", store.CodeCheckViolation},
		{"task priority", "INSERT INTO tasks (group_name, kind, priority) VALUES ('g1', 'x', 5000)", nil, "tasks_priority", store.CodeCheckViolation},
		{"task retries", "INSERT INTO tasks (group_name, kind, max_retries) VALUES ('g1', 'x', -1)", nil, "tasks_retries", store.CodeCheckViolation},
		{"task timeout", "INSERT INTO tasks (group_name, kind, timeout_ms) VALUES ('g1', 'x', -1)", nil, "tasks_timeout", store.CodeCheckViolation},
		{"task state", "UPDATE tasks SET state = 'lost' WHERE id = $1", []any{taskID}, "tasks_state", store.CodeCheckViolation},
		{"running task needs worker", "UPDATE tasks SET state = 'running' WHERE id = $1", []any{taskID}, "tasks_owner", store.CodeCheckViolation},
		{"queued task has no worker", "UPDATE tasks SET worker_session_id = $2 WHERE id = $1", []any{taskID, sessionID}, "tasks_owner", store.CodeCheckViolation},
		{"terminal task needs finished_at", "UPDATE tasks SET state = 'succeeded' WHERE id = $1", []any{taskID}, "tasks_finished", store.CodeCheckViolation},
		{"attempt starts at 1", "INSERT INTO task_attempt_log (task_id, attempt, worker_session_id, reason) VALUES ($1, 0, $2, 'submit')", []any{taskID, sessionID}, "task_attempts_attempt", store.CodeCheckViolation},
		{"attempt reason", "INSERT INTO task_attempt_log (task_id, attempt, worker_session_id, reason) VALUES ($1, 1, $2, 'whim')", []any{taskID, sessionID}, "task_attempts_reason", store.CodeCheckViolation},
		{"attempt outcome", "INSERT INTO task_attempt_log (task_id, attempt, worker_session_id, reason, outcome, finished_at) VALUES ($1, 1, $2, 'submit', 'meh', now())", []any{taskID, sessionID}, "task_attempts_outcome", store.CodeCheckViolation},
		{"attempt outcome needs finished_at", "INSERT INTO task_attempt_log (task_id, attempt, worker_session_id, reason, outcome) VALUES ($1, 1, $2, 'submit', 'failed')", []any{taskID, sessionID}, "task_attempts_finished", store.CodeCheckViolation},
		{"one dispatch row per task", "INSERT INTO dispatch_queue (task_id, attempt, group_name, target_session_id, reason) VALUES ($1, 0, 'g1', $2, 'submit'), ($1, 0, 'g1', $2, 'submit')", []any{taskID, sessionID}, "dispatch_queue_task_id_key", store.CodeUniqueViolation},
		{"dispatch reason", "INSERT INTO dispatch_queue (task_id, attempt, group_name, target_session_id, reason) VALUES ($1, 0, 'g1', $2, 'whim')", []any{taskID, sessionID}, "dispatch_queue_reason", store.CodeCheckViolation},
		{"dispatch needs a target", "INSERT INTO dispatch_queue (task_id, attempt, group_name, reason) VALUES ($1, 0, 'g1', 'submit')", []any{taskID}, "", "23502"},
		{"task attempt reason", "UPDATE tasks SET attempt_reason = 'whim' WHERE id = $1", []any{taskID}, "tasks_attempt_reason", store.CodeCheckViolation},
		{"task queued reason", "UPDATE tasks SET queued_reason = 'whim' WHERE id = $1", []any{taskID}, "tasks_queued_reason", store.CodeCheckViolation},
		{"task backoff cap below base", "UPDATE tasks SET retry_base_ms = 5000, retry_max_ms = 1000 WHERE id = $1", []any{taskID}, "tasks_retry_backoff", store.CodeCheckViolation},
		{"group backoff", "UPDATE worker_groups SET retry_base_ms = -1 WHERE name = 'g1'", nil, "worker_groups_retry_backoff", store.CodeCheckViolation},
		{"failover kind", "INSERT INTO failover_events (kind, session_id, deadline) VALUES ('disk', 1, now())", nil, "failover_events_kind", store.CodeCheckViolation},
		{"one failover per session", "INSERT INTO failover_events (kind, session_id, deadline) VALUES ('worker', $1, now()), ('worker', $1, now())", []any{sessionID}, "failover_events_once", store.CodeUniqueViolation},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := pool.Exec(context.Background(), tc.sql, tc.args...)
			if err == nil {
				t.Fatalf("%s: accepted, want %s", tc.sql, tc.constraint)
			}
			if store.Code(err) != tc.code || store.Constraint(err) != tc.constraint {
				t.Fatalf("%s: err = %v (code %s, constraint %q); want %s %s", tc.sql, err, store.Code(err), store.Constraint(err), tc.code, tc.constraint)
			}
		})
	}
	// Nothing above changed the fixture.
	var state string
	var attempt int
	if err := pool.QueryRow(context.Background(), "SELECT state, attempt FROM tasks WHERE id = $1", taskID).Scan(&state, &attempt); err != nil {
		t.Fatal(err)
	}
	if state != "queued" || attempt != 0 {
		t.Fatalf("fixture task changed: %s/%d", state, attempt)
	}
}

// The payload limit is checked where a payload is written (insert, or an update
// that sets it), not on the claims and results that update its task: a row with
// an oversized payload (stored with the check disabled) can still change state,
// and only writing its payload again is refused.
func TestPayloadSizeCheckedOnWrite(t *testing.T) {
	t.Parallel()
	pool, _, _ := fixture(t)
	big := "jsonb_build_object('p', repeat('a', 1100000))"
	mustExec(t, pool, "ALTER TABLE tasks DISABLE TRIGGER tasks_payload_size")
	var id int64
	if err := pool.QueryRow(context.Background(), "INSERT INTO tasks (group_name, kind, payload) VALUES ('g1', 'x', "+big+") RETURNING id").Scan(&id); err != nil {
		t.Fatal(err)
	}
	mustExec(t, pool, "ALTER TABLE tasks ENABLE TRIGGER tasks_payload_size")
	mustExec(t, pool, "UPDATE tasks SET queued_reason = 'retry', priority = 5 WHERE id = $1", id)
	for _, stmt := range []string{"UPDATE tasks SET payload = payload WHERE id = $1", "INSERT INTO tasks (group_name, kind, payload) SELECT 'g1', 'x', payload FROM tasks WHERE id = $1"} {
		_, err := pool.Exec(context.Background(), stmt, id)
		if store.Code(err) != store.CodeCheckViolation || store.Constraint(err) != "tasks_payload_size" || !strings.Contains(err.Error(), "tasks_payload_size") {
			t.Fatalf("%s: %v, want the tasks_payload_size check violation", stmt, err)
		}
	}
}

// Every table and the columns operators read carry a COMMENT.
func TestTablesCommented(t *testing.T) {
	t.Parallel()
	pool, _ := srv.NewPool(t)
	rows, err := pool.Query(context.Background(), `
		SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = 'public' AND c.relkind IN ('r', 'v') AND c.relname <> 'goose_db_version'
		  AND obj_description(c.oid, 'pg_class') IS NULL`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var name string
		_ = rows.Scan(&name)
		t.Errorf("table or view %s has no COMMENT", name)
	}
}

// The reporting views run and return rows of the documented shape.
func TestReportingViews(t *testing.T) {
	t.Parallel()
	pool, _, _ := fixture(t)
	for _, q := range []string{
		"SELECT group_name, state, tasks FROM report_tasks_by_state",
		"SELECT task_id, attempt, group_name, kind, worker_session_id, reason, outcome, wait_time, run_time FROM report_attempt_durations",
		"SELECT session_id, name, group_name, state, slots, heartbeat_age, active_tasks FROM report_worker_health",
		"SELECT id, kind, session_id, duration, tasks_reassigned, tasks_queued, passes FROM report_failover_history",
	} {
		rows, err := pool.Query(context.Background(), q)
		if err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		rows.Close()
		if rows.Err() != nil {
			t.Fatalf("%s: %v", q, rows.Err())
		}
	}
	var n int
	if err := pool.QueryRow(context.Background(), "SELECT tasks FROM report_tasks_by_state WHERE group_name = 'g1' AND state = 'queued'").Scan(&n); err != nil || n != 1 {
		t.Fatalf("report_tasks_by_state queued g1 = %d, %v", n, err)
	}
}

// Heartbeats touch no indexed column, so Postgres can update the row in place
// (HOT) instead of adding index entries: the hot spot stays cheap.
func TestHeartbeatsAreHOT(t *testing.T) {
	t.Parallel()
	pool, sessionID, _ := fixture(t)
	ctx := context.Background()
	conn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	q := db.New(conn)
	for range 50 {
		if state, err := q.WorkerSessionHeartbeat(ctx, sessionID); err != nil || state != "alive" {
			t.Fatalf("heartbeat: %q, %v", state, err)
		}
	}
	if _, err := conn.Exec(ctx, "SELECT pg_stat_force_next_flush()"); err != nil {
		t.Fatal(err)
	}
	var upd, hot int64
	if err := conn.QueryRow(ctx, "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'worker_sessions'").Scan(&upd, &hot); err != nil {
		t.Fatal(err)
	}
	if upd < 50 || hot < 45 {
		t.Fatalf("worker_sessions updates %d, of them HOT %d: heartbeats are not HOT", upd, hot)
	}
}
