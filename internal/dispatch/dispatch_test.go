package dispatch_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/baton-scheduler/baton/batontest"
	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/dispatch"
	"github.com/baton-scheduler/baton/internal/failover"
	"github.com/baton-scheduler/baton/internal/master"
	"github.com/baton-scheduler/baton/internal/submit"
)

var srv *batontest.Server

func TestMain(m *testing.M) {
	os.Exit(batontest.MainNoLeaks(m, func(s *batontest.Server) { srv = s }))
}

// Queued tasks go only to alive, heartbeating sessions of their own group, never
// beyond free slots, even with several dispatchers (masters) at once; the rest wait.
func TestDispatchRespectsGroupsHealthAndSlots(t *testing.T) {
	t.Parallel()
	pool, _ := srv.NewPool(t)
	ctx := context.Background()
	q := func(sql string, args ...any) int64 { t.Helper(); return batontest.Int64(t, pool, sql, args...) }
	session := func(group string, slots int, state string, heartbeatAge time.Duration) int64 {
		return batontest.NewWorkerSession(t, pool, &batontest.WorkerSessionOpts{Group: &group, Slots: &slots, State: &state, HeartbeatAge: &heartbeatAge})
	}
	a1 := session("a", 3, "alive", 0)
	a2 := session("a", 2, "alive", 0)
	session("a", 50, "draining", 0)
	session("a", 50, "alive", time.Hour) // stale
	session("b", 50, "alive", 0)

	specs := make([]submit.Spec, 20)
	for i := range specs {
		specs[i] = submit.Spec{Group: "a", Kind: "noop", Payload: json.RawMessage(`{}`), Priority: i % 3}
	}
	if _, err := submit.Many(ctx, pool, specs); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	total := make([]int, 4)
	for i := range total {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := &dispatch.Dispatcher{Pool: pool, WorkerTimeout: 5 * time.Second}
			for range 3 {
				n, err := d.RunOnce(ctx)
				if err != nil {
					t.Error(err)
				}
				total[i] += n
			}
		}()
	}
	wg.Wait()
	if sum := total[0] + total[1] + total[2] + total[3]; sum != 5 {
		t.Fatalf("dispatched %d tasks, want 5 (free slots of a1 and a2)", sum)
	}
	if n := q("SELECT count(*) FROM tasks WHERE state = 'dispatched' AND worker_session_id NOT IN ($1, $2)", a1, a2); n != 0 {
		t.Fatalf("%d tasks sent to a forbidden session", n)
	}
	if n := q("SELECT count(*) FROM tasks WHERE worker_session_id = $1", a1); n != 3 {
		t.Fatalf("a1 got %d tasks, has 3 slots", n)
	}
	if n := q("SELECT count(*) FROM tasks WHERE state = 'queued'"); n != 15 {
		t.Fatalf("queued = %d, want 15", n)
	}
	if n := q(`SELECT count(*) FROM tasks t JOIN dispatch_queue d ON d.task_id = t.id JOIN task_attempts a ON a.task_id = t.id
		WHERE t.state = 'dispatched' AND t.attempt = 1 AND d.attempt = 1 AND d.target_session_id = t.worker_session_id
		AND a.attempt = 1 AND a.reason = 'submit'`); n != 5 {
		t.Fatalf("dispatched tasks with consistent dispatch row and attempt = %d, want 5", n)
	}
	// Highest priority first.
	if n := q("SELECT count(*) FROM tasks WHERE state = 'dispatched' AND priority <> 2"); n != 0 {
		t.Fatalf("%d lower-priority tasks dispatched before priority 2 ones", n)
	}
}

// A dispatch wakes exactly the sessions that got work, with one NOTIFY.
func TestDispatchNotifiesTargets(t *testing.T) {
	t.Parallel()
	pool, _ := srv.NewPool(t)
	ctx := context.Background()
	one := &batontest.WorkerSessionOpts{Group: batontest.Ptr("a"), Slots: batontest.Ptr(1)}
	s1 := batontest.NewWorkerSession(t, pool, one)
	s2 := batontest.NewWorkerSession(t, pool, one)
	conn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, "LISTEN baton_claim"); err != nil {
		t.Fatal(err)
	}
	if _, err := submit.Many(ctx, pool, []submit.Spec{{Group: "a", Kind: "noop"}, {Group: "a", Kind: "noop"}}); err != nil {
		t.Fatal(err)
	}
	if n, err := (&dispatch.Dispatcher{Pool: pool, WorkerTimeout: 5 * time.Second}).RunOnce(ctx); err != nil || n != 2 {
		t.Fatalf("dispatched %d, %v", n, err)
	}
	waitCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	// The submit woke the group's workers first (one NOTIFY per group).
	n, err := conn.Conn().WaitForNotification(waitCtx)
	if err != nil {
		t.Fatal(err)
	}
	if n.Payload != "g:a" {
		t.Fatalf("submit NOTIFY payload %q, want g:a", n.Payload)
	}
	n, err = conn.Conn().WaitForNotification(waitCtx)
	if err != nil {
		t.Fatal(err)
	}
	want1, want2 := fmt.Sprintf("%d,%d", s1, s2), fmt.Sprintf("%d,%d", s2, s1)
	if n.Payload != want1 && n.Payload != want2 {
		t.Fatalf("claim NOTIFY payload %q, want the two session ids", n.Payload)
	}
}

// Failed-over work keeps its place: tasks taken from a dead worker when no slot was
// free wait in the queue ahead of the backlog submitted after them (same priority),
// so they are the first dispatched when a slot frees up.
func TestFailedOverTasksKeepTheirPlace(t *testing.T) {
	t.Parallel()
	pool, _ := srv.NewPool(t)
	ctx := context.Background()
	q := func(sql string, args ...any) int64 { t.Helper(); return batontest.Int64(t, pool, sql, args...) }
	q("INSERT INTO worker_groups (name) VALUES ('a') RETURNING 1")
	first := q("INSERT INTO worker_sessions (name, group_name, slots) VALUES ('first', 'a', 2) RETURNING id")
	specs := make([]submit.Spec, 50)
	for i := range specs {
		specs[i] = submit.Spec{Group: "a", Kind: "noop"}
	}
	ids, err := submit.Many(ctx, pool, specs)
	if err != nil {
		t.Fatal(err)
	}
	d := &dispatch.Dispatcher{Pool: pool, WorkerTimeout: 5 * time.Second}
	if n, err := d.RunOnce(ctx); err != nil || n != 2 {
		t.Fatalf("dispatched %d, %v; want 2", n, err)
	}
	q("UPDATE tasks SET state = 'running', started_at = now() WHERE worker_session_id = $1 RETURNING 1", first)
	q("DELETE FROM dispatch_queue WHERE target_session_id = $1 RETURNING 1", first)
	// The worker dies with no other worker alive: its tasks go back to the queue.
	q("UPDATE worker_sessions SET last_heartbeat_at = now() - interval '1 hour' WHERE id = $1 RETURNING 1", first)
	res, err := failover.Worker(ctx, pool, failover.Config{WorkerTimeout: 5 * time.Second}, first, "a")
	if err != nil || res.Queued != 2 {
		t.Fatalf("failover: %+v, %v", res, err)
	}
	second := q("INSERT INTO worker_sessions (name, group_name, slots) VALUES ('second', 'a', 2) RETURNING id")
	if n, err := d.RunOnce(ctx); err != nil || n != 2 {
		t.Fatalf("dispatched %d, %v; want 2", n, err)
	}
	for _, id := range ids[:2] {
		if n := q("SELECT count(*) FROM tasks WHERE id = $1 AND worker_session_id = $2 AND attempt = 2", id, second); n != 1 {
			t.Fatalf("failed-over task %d was not dispatched first: it went behind the backlog", id)
		}
	}
}

// The dispatch queries stay index-backed: the waiting-task scan (the query
// DispatchLockWaiting) follows the queue order index tasks_queue and never sorts
// the backlog, and the waiting-groups probe (DispatchListWaitingGroups) reads that
// index, not the tasks table.
func TestDispatchPlanUsesQueueIndex(t *testing.T) {
	t.Parallel()
	pool, _ := srv.NewPool(t)
	ctx := context.Background()
	q := func(sql string, args ...any) int64 { t.Helper(); return batontest.Int64(t, pool, sql, args...) }
	q("INSERT INTO worker_groups (name) VALUES ('a') RETURNING 1")
	// A backlog of queued tasks next to as many finished ones (the index is partial).
	// The backlog has waited past the dispatcher's minimum wait: with tasks only
	// just submitted (none passing available_at <= now() - min wait) the planner
	// rightly prefers a scan of nothing to sort, and the plan would depend on how
	// fast this test reaches its EXPLAIN.
	q(`INSERT INTO tasks (group_name, kind, available_at) SELECT 'a', 'noop', now() - interval '1 hour'
		FROM generate_series(1, 20000) RETURNING 1`)
	q(`INSERT INTO tasks (group_name, kind, state, finished_at) SELECT 'a', 'noop', 'succeeded', now()
		FROM generate_series(1, 20000) RETURNING 1`)
	if _, err := pool.Exec(ctx, "ANALYZE tasks"); err != nil {
		t.Fatal(err)
	}
	// The statements the dispatcher runs (the sqlc-generated constants), with the
	// arguments it passes: a hand copy would drift from them.
	explain := func(sql string, args ...any) string {
		t.Helper()
		rows, err := pool.Query(ctx, "EXPLAIN "+sql, args...)
		if err != nil {
			t.Fatal(err)
		}
		plan, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		return strings.Join(plan, "\n")
	}
	minWait := master.DispatchMinWaitDefault.Seconds()
	text := explain(db.DispatchLockWaiting, "a", minWait, int32(100))
	if !strings.Contains(text, "tasks_queue") || strings.Contains(text, "Sort") || strings.Contains(text, "Seq Scan") {
		t.Fatalf("waiting-task scan does not follow tasks_queue:\n%s", text)
	}
	text = explain(db.DispatchListWaitingGroups, minWait)
	if !strings.Contains(text, "tasks_queue") || strings.Contains(text, "Seq Scan on tasks") {
		t.Fatalf("waiting-groups probe does not use tasks_queue:\n%s", text)
	}
}
