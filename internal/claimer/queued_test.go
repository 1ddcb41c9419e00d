package claimer_test

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/baton-scheduler/baton/batontest"
	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/submit"
)

// A worker claims waiting tasks of its group straight from the queue (queued task
// rows), in queue order (priority, then submission), one attempt each, held by its
// task row alone (the view task_attempts shows it) — and nothing of another group,
// nothing not yet available, nothing dispatched to another session.
func TestClaimQueuedInQueueOrder(t *testing.T) {
	t.Parallel()
	pool, _ := srv.NewPool(t)
	ctx := context.Background()
	s := batontest.NewWorkerSession(t, pool, &batontest.WorkerSessionOpts{Group: batontest.Ptr("a")})
	batontest.NewWorkerSession(t, pool, &batontest.WorkerSessionOpts{Group: batontest.Ptr("b")})
	ids, err := submit.Many(ctx, pool, []submit.Spec{
		{Group: "a", Kind: "noop"}, {Group: "a", Kind: "noop", Priority: 5}, {Group: "b", Kind: "noop"},
		{Group: "a", Kind: "noop"}, {Group: "a", Kind: "noop"},
	})
	if err != nil {
		t.Fatal(err)
	}
	other := batontest.NewTask(t, pool, &batontest.TaskOpts{Group: batontest.Ptr("a"), State: batontest.Ptr("dispatched")})
	if _, err := pool.Exec(ctx, "UPDATE tasks SET available_at = now() + interval '1 hour' WHERE id = $1", ids[4]); err != nil {
		t.Fatal(err)
	}
	rows, err := db.New(pool).TaskClaimNext(ctx, db.TaskClaimNextParams{SessionID: s, GroupName: "a", MaxTasks: 10})
	if err != nil {
		t.Fatal(err)
	}
	var got []int64
	for _, r := range rows {
		got = append(got, r.ID)
		if r.Attempt != 1 {
			t.Errorf("task %d attempt %d, want 1", r.ID, r.Attempt)
		}
	}
	if want := []int64{ids[1], ids[0], ids[3]}; len(got) != 3 || got[0] != want[0] || got[1] != want[1] || got[2] != want[2] {
		t.Fatalf("claimed %v, want %v", got, want)
	}
	if n := batontest.Int64(t, pool, `SELECT count(*) FROM tasks t JOIN task_attempts a ON a.task_id = t.id AND a.attempt = t.attempt
		WHERE t.state = 'running' AND t.worker_session_id = $1 AND a.worker_session_id = $1 AND a.reason = 'submit'
		  AND a.started_at IS NOT NULL AND t.started_at IS NOT NULL`, s); n != 3 {
		t.Fatalf("running with an open attempt = %d, want 3", n)
	}
	// The open attempts live in the task rows alone (one write per claimed task).
	if n := batontest.Int64(t, pool, "SELECT count(*) FROM task_attempt_log"); n != 0 {
		t.Fatalf("attempt log rows = %d, want 0", n)
	}
	if n := batontest.Int64(t, pool, "SELECT count(*) FROM tasks WHERE state = 'queued' AND attempt = 0 AND id = ANY($1)", []int64{ids[2], ids[4]}); n != 2 {
		t.Fatalf("tasks left queued = %d, want 2 (group b, not yet available)", n)
	}
	if n := batontest.Int64(t, pool, "SELECT count(*) FROM tasks WHERE state = 'queued'"); n != 2 {
		t.Fatalf("queued tasks = %d, want 2", n)
	}
	if n := batontest.Int64(t, pool, "SELECT count(*) FROM dispatch_queue WHERE task_id = $1 AND target_session_id = $2", other.ID, other.SessionID); n != 1 {
		t.Fatal("the task dispatched to another session lost its dispatch row")
	}
	if n := batontest.Int64(t, pool, "SELECT count(*) FROM dispatch_queue"); n != 1 {
		t.Fatalf("dispatch rows = %d, want 1 (a claim from the queue writes none)", n)
	}
}

// The claim locks its session row FOR SHARE: a drain (or a failover marking the
// session dead) that updated the row first makes a concurrent claim wait and then
// claim nothing — no task lands on a session that is leaving.
func TestClaimQueuedWaitsForSessionChange(t *testing.T) {
	t.Parallel()
	for _, to := range []string{"draining", "dead"} {
		t.Run(to, func(t *testing.T) {
			t.Parallel()
			pool, _ := srv.NewPool(t)
			ctx := context.Background()
			s := batontest.NewWorkerSession(t, pool, &batontest.WorkerSessionOpts{Group: batontest.Ptr("a")})
			if _, err := submit.Many(ctx, pool, []submit.Spec{{Group: "a", Kind: "noop"}}); err != nil {
				t.Fatal(err)
			}
			tx, err := pool.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = tx.Rollback(ctx) }()
			if _, err := tx.Exec(ctx, "UPDATE worker_sessions SET state = $2, ended_at = CASE WHEN $2 = 'dead' THEN now() END WHERE id = $1", s, to); err != nil {
				t.Fatal(err)
			}
			type result struct {
				n   int
				err error
			}
			done := make(chan result, 1)
			go func() {
				rows, err := db.New(pool).TaskClaimNext(ctx, db.TaskClaimNextParams{SessionID: s, GroupName: "a", MaxTasks: 10})
				done <- result{len(rows), err}
			}()
			batontest.WaitFor(t, 10*time.Second, func() (bool, string) {
				return batontest.Int64(t, pool, `SELECT count(*) FROM pg_stat_activity
					WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%TaskClaimNext%'`) == 1, "claim waiting for the session row"
			})
			if err := tx.Commit(ctx); err != nil {
				t.Fatal(err)
			}
			r := <-done
			if r.err != nil || r.n != 0 {
				t.Fatalf("claim on a %s session: %d tasks, %v", to, r.n, r.err)
			}
		})
	}
}

// A claim that finds nothing writes nothing: no transaction id, so no commit record
// to flush (idle workers polling, and every worker a submit wakes, cost no fsync).
// One that finds tasks locks its session row (and so takes an id).
func TestEmptyClaimWritesNothing(t *testing.T) {
	t.Parallel()
	pool, _ := srv.NewPool(t)
	ctx := context.Background()
	s := batontest.NewWorkerSession(t, pool, &batontest.WorkerSessionOpts{Group: batontest.Ptr("e")})
	claim := func() (int, bool) {
		t.Helper()
		tx, err := pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback(ctx) //nolint:errcheck
		rows, err := db.New(tx).TaskClaimNext(ctx, db.TaskClaimNextParams{SessionID: s, GroupName: "e", MaxTasks: 10})
		if err != nil {
			t.Fatal(err)
		}
		var assigned bool
		if err := tx.QueryRow(ctx, "SELECT txid_current_if_assigned() IS NOT NULL").Scan(&assigned); err != nil {
			t.Fatal(err)
		}
		return len(rows), assigned
	}
	if n, assigned := claim(); n != 0 || assigned {
		t.Fatalf("empty claim: %d tasks, transaction id assigned %v; want 0, false", n, assigned)
	}
	if _, err := submit.Many(ctx, pool, []submit.Spec{{Group: "e", Kind: "noop"}}); err != nil {
		t.Fatal(err)
	}
	if n, assigned := claim(); n != 1 || !assigned {
		t.Fatalf("claim of one task: %d tasks, transaction id assigned %v; want 1, true", n, assigned)
	}
}

// A task submitted to run later (RunAt, Delay) is scheduled: no claim takes it
// before its time. Once due it is claimed with the queue, merged by priority and
// then submission order: it keeps its place among equals.
func TestClaimScheduledWhenDue(t *testing.T) {
	t.Parallel()
	pool, _ := srv.NewPool(t)
	ctx := context.Background()
	s := batontest.NewWorkerSession(t, pool, &batontest.WorkerSessionOpts{Group: batontest.Ptr("sch")})
	ids, err := submit.Many(ctx, pool, []submit.Spec{
		{Group: "sch", Kind: "noop", Delay: time.Hour},                      // 0: due later (made due below)
		{Group: "sch", Kind: "noop"},                                        // 1: queued
		{Group: "sch", Kind: "noop", Priority: 5, Delay: time.Hour},         // 2: due later (made due below)
		{Group: "sch", Kind: "noop", RunAt: time.Now().Add(24 * time.Hour)}, // 3: not due
		{Group: "sch", Kind: "noop", RunAt: time.Now().Add(-time.Minute)},   // 4: in the past: queued at once
	})
	if err != nil {
		t.Fatal(err)
	}
	claim := func() []int64 {
		t.Helper()
		rows, err := db.New(pool).TaskClaimNext(ctx, db.TaskClaimNextParams{SessionID: s, GroupName: "sch", MaxTasks: 10})
		if err != nil {
			t.Fatal(err)
		}
		var got []int64
		for _, r := range rows {
			got = append(got, r.ID)
		}
		return got
	}
	if n := batontest.Int64(t, pool, "SELECT count(*) FROM tasks WHERE state = 'scheduled' AND available_at > now() AND id = ANY($1)",
		[]int64{ids[0], ids[2], ids[3]}); n != 3 {
		t.Fatalf("scheduled tasks = %d, want 3", n)
	}
	// Before their time: only the queued ones.
	if got := claim(); len(got) != 2 || got[0] != ids[1] || got[1] != ids[4] {
		t.Fatalf("claimed %v, want %v", got, []int64{ids[1], ids[4]})
	}
	if _, err := pool.Exec(ctx, "UPDATE tasks SET state = 'queued', attempt = 0, worker_session_id = NULL, started_at = NULL, dispatched_at = NULL WHERE id = ANY($1)",
		[]int64{ids[1], ids[4]}); err != nil {
		t.Fatal(err)
	}
	// The clock moves on: 0 and 2 are due (Postgres time decides, as in the claim).
	if _, err := pool.Exec(ctx, "UPDATE tasks SET available_at = now() - interval '1 second' WHERE id = ANY($1)", []int64{ids[0], ids[2]}); err != nil {
		t.Fatal(err)
	}
	want := []int64{ids[2], ids[0], ids[1], ids[4]}
	got := claim()
	if len(got) != len(want) {
		t.Fatalf("claimed %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("claimed %v, want %v (priority, then submission order)", got, want)
		}
	}
	if n := batontest.Int64(t, pool, "SELECT count(*) FROM tasks WHERE state = 'scheduled'"); n != 1 {
		t.Fatalf("scheduled tasks left = %d, want 1 (the one due tomorrow)", n)
	}
}

// The claim stays an index probe with a million tasks scheduled for later: the
// ones not yet due are never read (index tasks_scheduled, keyed by run time).
// The plan is printed; the test asserts its shape and the buffers it touched,
// not its time.
func TestClaimIgnoresMillionFutureTasks(t *testing.T) {
	t.Parallel()
	pool, _ := srv.NewPool(t)
	ctx := context.Background()
	s := batontest.NewWorkerSession(t, pool, &batontest.WorkerSessionOpts{Group: batontest.Ptr("future")})
	if _, err := pool.Exec(ctx, `INSERT INTO tasks (group_name, kind, state, available_at)
		SELECT 'future', 'noop', 'scheduled', now() + interval '1 day' + g * interval '1 millisecond'
		FROM generate_series(1, 1000000) AS g`); err != nil {
		t.Fatal(err)
	}
	ids, err := submit.Many(ctx, pool, []submit.Spec{{Group: "future", Kind: "noop"}, {Group: "future", Kind: "noop", Delay: time.Hour}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, "UPDATE tasks SET available_at = now() - interval '1 second' WHERE id = $1", ids[1]); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, "ANALYZE tasks"); err != nil {
		t.Fatal(err)
	}
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck
	rows, err := tx.Query(ctx, "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF, TIMING OFF, SUMMARY OFF) "+db.TaskClaimNext,
		s, int32(10), "future")
	if err != nil {
		t.Fatal(err)
	}
	var plan []string
	for rows.Next() {
		var line string
		if err := rows.Scan(&line); err != nil {
			t.Fatal(err)
		}
		plan = append(plan, line)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	text := strings.Join(plan, "\n")
	t.Logf("claim with 1,000,000 tasks scheduled for later:\n%s", text)
	if !strings.Contains(text, "tasks_scheduled") || !strings.Contains(text, "tasks_queue") {
		t.Fatalf("the claim does not use tasks_scheduled and tasks_queue:\n%s", text)
	}
	if strings.Contains(text, "Seq Scan on tasks") {
		t.Fatalf("the claim scans the tasks table:\n%s", text)
	}
	var n int
	if err := tx.QueryRow(ctx, "SELECT count(*) FROM tasks WHERE state = 'running' AND id = ANY($1)", ids).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 2 {
		t.Fatalf("claimed %d of the 2 due tasks", n)
	}
	// Every plan node reads a handful of buffers, not the million rows' pages
	// (planning's catalog reads, listed last, are not the table's).
	for _, line := range plan {
		if strings.TrimSpace(line) == "Planning:" {
			break
		}
		if i := strings.Index(line, "shared hit="); i >= 0 {
			total := 0
			for _, f := range strings.Fields(strings.NewReplacer("=", " ").Replace(line[i:])) {
				if v, err := strconv.Atoi(f); err == nil {
					total += v
				}
			}
			if total > 200 {
				t.Fatalf("a plan node touched %d buffers:\n%s", total, text)
			}
		}
	}
}

// A claim names the session's group: a session claims no queued task of another
// group, even when asked to (a worker serving several groups has a session per
// group, each claiming its own) — the claim re-checks the session row's group in
// the statement, as the dispatcher and failover choose sessions by group.
func TestClaimQueuedOnlyOfTheSessionsGroup(t *testing.T) {
	t.Parallel()
	pool, _ := srv.NewPool(t)
	ctx := context.Background()
	a := batontest.NewWorkerSession(t, pool, &batontest.WorkerSessionOpts{Group: batontest.Ptr("a")})
	batontest.NewWorkerSession(t, pool, &batontest.WorkerSessionOpts{Group: batontest.Ptr("b")})
	ids, err := submit.Many(ctx, pool, []submit.Spec{{Group: "b", Kind: "noop"}, {Group: "a", Kind: "noop"}})
	if err != nil {
		t.Fatal(err)
	}
	rows, err := db.New(pool).TaskClaimNext(ctx, db.TaskClaimNextParams{SessionID: a, GroupName: "b", MaxTasks: 10})
	if err != nil || len(rows) != 0 {
		t.Fatalf("session of group a claiming group b: %d tasks, %v", len(rows), err)
	}
	if n := batontest.Int64(t, pool, "SELECT count(*) FROM tasks WHERE state = 'queued' AND attempt = 0"); n != 2 {
		t.Fatalf("queued tasks = %d, want 2", n)
	}
	rows, err = db.New(pool).TaskClaimNext(ctx, db.TaskClaimNextParams{SessionID: a, GroupName: "a", MaxTasks: 10})
	if err != nil || len(rows) != 1 || rows[0].ID != ids[1] {
		t.Fatalf("session of group a claiming its group: %+v, %v", rows, err)
	}
}
