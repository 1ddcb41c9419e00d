package report_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/baton-scheduler/baton/batontest"
	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/failover"
	"github.com/baton-scheduler/baton/internal/report"
)

var srv *batontest.Server

func TestMain(m *testing.M) {
	os.Exit(batontest.MainNoLeaks(m, func(s *batontest.Server) { srv = s }))
}

// A completion by a superseded attempt changes nothing and is recorded as fenced;
// the current attempt's completion is applied.
func TestSupersededAttemptIsFenced(t *testing.T) {
	t.Parallel()
	pool, _ := srv.NewPool(t)
	ctx := context.Background()
	q := func(sql string, args ...any) int64 { t.Helper(); return batontest.Int64(t, pool, sql, args...) }
	zombie := batontest.NewWorkerSession(t, pool, &batontest.WorkerSessionOpts{Name: batontest.Ptr("z"), HeartbeatAge: batontest.Ptr(time.Hour)})
	healthy := batontest.NewWorkerSession(t, pool, &batontest.WorkerSessionOpts{Name: batontest.Ptr("h")})
	task := batontest.NewTask(t, pool, &batontest.TaskOpts{Kind: batontest.Ptr("shell"), State: batontest.Ptr("running"), Session: &zombie}).ID

	if _, err := failover.Worker(ctx, pool, failover.Config{WorkerTimeout: 5 * time.Second}, zombie, "g"); err != nil {
		t.Fatal(err)
	}
	late := report.Result{TaskID: task, Attempt: 1, SessionID: zombie, Outcome: "succeeded", ExitCode: 0, Output: "stale"}
	sum, err := report.Finish(ctx, pool, []report.Result{late})
	if err != nil {
		t.Fatal(err)
	}
	if len(sum.Applied) != 0 || len(sum.Fenced) != 1 {
		t.Fatalf("late result: applied %v fenced %v; want it fenced", sum.Applied, sum.Fenced)
	}
	if n := q("SELECT count(*) FROM tasks WHERE id = $1 AND state = 'dispatched' AND attempt = 2 AND worker_session_id = $2 AND output = ''", task, healthy); n != 1 {
		t.Fatal("a superseded attempt's write changed the task")
	}
	// History is never rewritten: the attempt stays failed_over with the master's
	// error, and the refusal is recorded beside it.
	if n := q(`SELECT count(*) FROM task_attempts WHERE task_id = $1 AND attempt = 1 AND outcome = 'failed_over'
		AND error = 'worker session ' || $2::bigint || ' is dead' AND refused_outcome = 'succeeded' AND refused_at >= finished_at`, task, zombie); n != 1 {
		t.Fatal("superseded attempt: outcome rewritten or refusal not recorded")
	}

	// The same write with the right attempt but the wrong session is fenced too.
	// (The healthy worker claims attempt 2 first; the setup must take effect.)
	if n := q("WITH u AS (UPDATE tasks SET state = 'running', started_at = now() WHERE id = $1 AND state = 'dispatched' AND attempt = 2 RETURNING 1) SELECT count(*) FROM u", task); n != 1 {
		t.Fatalf("setup: %d tasks set running, want 1", n)
	}
	wrongSession := report.Result{TaskID: task, Attempt: 2, SessionID: zombie, Outcome: "succeeded"}
	if sum, err := report.Finish(ctx, pool, []report.Result{wrongSession}); err != nil || len(sum.Fenced) != 1 {
		t.Fatalf("attempt 2 from the wrong session: %+v, %v", sum, err)
	}
	current := report.Result{TaskID: task, Attempt: 2, SessionID: healthy, Outcome: "succeeded", ExitCode: 0, Output: "ok"}
	sum, err = report.Finish(ctx, pool, []report.Result{current})
	if err != nil || sum.Applied[task] != "succeeded" {
		t.Fatalf("current attempt: %+v, %v", sum, err)
	}
	if n := q("SELECT count(*) FROM task_attempts WHERE task_id = $1 AND outcome = 'succeeded'", task); n != 1 {
		t.Fatalf("succeeded attempts = %d, want 1", n)
	}
	// A second delivery of the same result is fenced, not applied twice.
	if sum, err := report.Finish(ctx, pool, []report.Result{current}); err != nil || len(sum.Fenced) != 1 {
		t.Fatalf("duplicate result: %+v, %v", sum, err)
	}
}

// A failed attempt with retries left goes back to the queue with a backoff;
// without retries left it is final. Overdue attempts are timed out by the sweep.
func TestRetryAndTimeout(t *testing.T) {
	t.Parallel()
	pool, _ := srv.NewPool(t)
	ctx := context.Background()
	q := func(sql string, args ...any) int64 { t.Helper(); return batontest.Int64(t, pool, sql, args...) }
	s := batontest.NewWorkerSession(t, pool, &batontest.WorkerSessionOpts{Slots: batontest.Ptr(10)})
	mk := func(maxRetries int, timeout, startedAgo time.Duration) int64 {
		return batontest.NewTask(t, pool, &batontest.TaskOpts{Kind: batontest.Ptr("shell"), State: batontest.Ptr("running"), Session: &s,
			MaxRetries: &maxRetries, Timeout: &timeout, StartedAgo: &startedAgo}).ID
	}
	retry := mk(1, 0, 0)
	q("UPDATE tasks SET retry_base_ms = 3600000, retry_max_ms = 7200000 WHERE id = $1 RETURNING 1", retry)
	final := mk(0, 0, 0)
	sum, err := report.Finish(ctx, pool, []report.Result{
		{TaskID: retry, Attempt: 1, SessionID: s, Outcome: "failed", ExitCode: 1, Error: "boom"},
		{TaskID: final, Attempt: 1, SessionID: s, Outcome: "failed", ExitCode: 1, Error: "boom"},
	})
	if err != nil || sum.Applied[retry] != "queued" || sum.Applied[final] != "failed" {
		t.Fatalf("finish: %+v, %v", sum, err)
	}
	// The same batch again (its commit reply was lost): refused, and nothing is
	// recorded as refused — it is the attempt's own result.
	if sum, err := report.Finish(ctx, pool, []report.Result{{TaskID: retry, Attempt: 1, SessionID: s, Outcome: "failed", ExitCode: 1, Error: "boom"}}); err != nil || len(sum.Fenced) != 1 {
		t.Fatalf("redelivery: %+v, %v", sum, err)
	}
	if n := q("SELECT count(*) FROM task_attempt_log WHERE task_id = $1 AND refused_at IS NOT NULL", retry); n != 0 {
		t.Fatal("a redelivered own result was recorded as a refused write")
	}
	// The task's own backoff (1 h base): retry 1 waits 1 h ±20%, computed by Postgres.
	if n := q(`SELECT count(*) FROM tasks WHERE id = $1 AND state = 'queued' AND queued_reason = 'retry'
		AND available_at BETWEEN now() + interval '47 minutes' AND now() + interval '73 minutes'`, retry); n != 1 {
		t.Fatal("retry not queued with its backoff")
	}
	if n := q(`SELECT count(*) FROM task_attempts WHERE task_id = $1 AND attempt = 1 AND outcome = 'failed' AND error = 'boom'`, retry); n != 1 {
		t.Fatal("retried attempt not closed in the history")
	}
	if n := q(`SELECT count(*) FROM task_attempt_log WHERE task_id = $1`, final); n != 0 {
		t.Fatal("an attempt that ended its task wrote a history row (the task row holds it)")
	}
	if n := q(`SELECT count(*) FROM task_attempts WHERE task_id = $1 AND attempt = 1 AND outcome = 'failed' AND error = 'boom'`, final); n != 1 {
		t.Fatal("final attempt missing from the task_attempts view")
	}
	if n := q("SELECT count(*) FROM tasks WHERE id = $1 AND retries = 1 AND worker_session_id IS NULL AND finished_at IS NULL", retry); n != 1 {
		t.Fatal("retried task state wrong")
	}

	overdue := mk(0, time.Second, time.Hour)
	notYet := mk(0, time.Hour, time.Second)
	n, err := report.TimeOutOverdue(ctx, pool, time.Second, nil)
	if err != nil || n != 1 {
		t.Fatalf("TimeOutOverdue = %d, %v; want 1", n, err)
	}
	if c := q("SELECT count(*) FROM tasks WHERE id = $1 AND state = 'timed_out'", overdue); c != 1 {
		t.Fatal("overdue task not timed out")
	}
	if c := q("SELECT count(*) FROM task_attempts WHERE task_id = $1 AND outcome = 'timed_out'", overdue); c != 1 {
		t.Fatal("overdue attempt not recorded timed_out")
	}
	if c := q("SELECT count(*) FROM tasks WHERE id = $1 AND state = 'running'", notYet); c != 1 {
		t.Fatal("task within its timeout was touched")
	}
}

// A late write to an attempt the master already timed out keeps timed_out (and its
// error) and records the refusal beside it; so does a late write to an attempt a
// cancel closed.
func TestFencedWriteKeepsHistory(t *testing.T) {
	t.Parallel()
	pool, _ := srv.NewPool(t)
	ctx := context.Background()
	q := func(sql string, args ...any) int64 { t.Helper(); return batontest.Int64(t, pool, sql, args...) }
	q("INSERT INTO worker_groups (name) VALUES ('g') RETURNING 1")
	s := q("INSERT INTO worker_sessions (name, group_name, slots) VALUES ('w', 'g', 2) RETURNING id")
	overdue := q(`INSERT INTO tasks (group_name, kind, state, attempt, worker_session_id, attempt_session_id, dispatched_at, started_at, timeout_ms)
		VALUES ('g', 'shell', 'running', 1, $1, $1, now(), now() - interval '1 hour', 1000) RETURNING id`, s)
	if n, err := report.TimeOutOverdue(ctx, pool, time.Second, nil); err != nil || n != 1 {
		t.Fatalf("TimeOutOverdue = %d, %v", n, err)
	}
	late := report.Result{TaskID: overdue, Attempt: 1, SessionID: s, Outcome: "succeeded", ExitCode: 0, Output: "late"}
	for range 2 { // a redelivery records nothing new
		if sum, err := report.Finish(ctx, pool, []report.Result{late}); err != nil || len(sum.Fenced) != 1 {
			t.Fatalf("late result: %+v, %v", sum, err)
		}
	}
	if n := q(`SELECT count(*) FROM task_attempts WHERE task_id = $1 AND attempt = 1 AND outcome = 'timed_out'
		AND error LIKE 'timed out:%' AND refused_outcome = 'succeeded' AND refused_at IS NOT NULL`, overdue); n != 1 {
		t.Fatal("timed_out attempt rewritten by a late write, or refusal not recorded")
	}
	if n := q("SELECT count(*) FROM tasks WHERE id = $1 AND state = 'timed_out' AND output = ''", overdue); n != 1 {
		t.Fatal("late write changed the task")
	}

	// A running attempt canceled: the cancel closes it; the worker's late result
	// is refused and recorded beside "canceled".
	running := q(`INSERT INTO tasks (group_name, kind, state, attempt, worker_session_id, attempt_session_id, dispatched_at, started_at)
		VALUES ('g', 'shell', 'running', 1, $1, $1, now(), now()) RETURNING id`, s)
	if _, err := db.New(pool).TaskCancel(ctx, db.TaskCancelParams{ID: running, Reason: "canceled by test"}); err != nil {
		t.Fatal(err)
	}
	if sum, err := report.Finish(ctx, pool, []report.Result{{TaskID: running, Attempt: 1, SessionID: s, Outcome: "failed", ExitCode: 3}}); err != nil || len(sum.Fenced) != 1 {
		t.Fatalf("late result of a canceled attempt: %+v, %v", sum, err)
	}
	if n := q(`SELECT count(*) FROM task_attempts WHERE task_id = $1 AND attempt = 1 AND outcome = 'canceled'
		AND error = 'canceled by test' AND refused_outcome = 'failed'`, running); n != 1 {
		t.Fatal("canceled attempt rewritten by a late write, or refusal not recorded")
	}
}
