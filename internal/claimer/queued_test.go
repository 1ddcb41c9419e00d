package claimer_test

import (
	"context"
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
