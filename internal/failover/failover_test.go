package failover_test

import (
	"context"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/baton-scheduler/baton/batontest"
	"github.com/baton-scheduler/baton/internal/failover"
)

var srv *batontest.Server

func TestMain(m *testing.M) {
	os.Exit(batontest.MainNoLeaks(m, func(s *batontest.Server) { srv = s }))
}

type bundle struct {
	pool *pgxpool.Pool
	ctx  context.Context
	t    *testing.T
}

func setup(t *testing.T) *bundle {
	t.Helper()
	pool, _ := srv.NewPool(t)
	b := &bundle{pool: pool, ctx: context.Background(), t: t}
	b.exec("INSERT INTO worker_groups (name) VALUES ('g1'), ('g2')")
	return b
}

func (b *bundle) exec(sql string, args ...any) {
	b.t.Helper()
	if _, err := b.pool.Exec(b.ctx, sql, args...); err != nil {
		b.t.Fatalf("%s: %v", sql, err)
	}
}

func (b *bundle) int64(sql string, args ...any) int64 {
	b.t.Helper()
	return batontest.Int64(b.t, b.pool, sql, args...)
}

// session inserts a worker session; stale ones last heartbeated an hour ago.
func (b *bundle) session(group, state string, slots int, stale bool) int64 {
	b.t.Helper()
	age := "0"
	if stale {
		age = "3600"
	}
	ended := "NULL"
	if state == "dead" || state == "stopped" {
		ended = "now()"
	}
	return b.int64(`INSERT INTO worker_sessions (name, group_name, slots, state, last_heartbeat_at, ended_at)
		VALUES ('w', $1, $2, $3, now() - make_interval(secs => $4::int), `+ended+`) RETURNING id`, group, slots, state, age)
}

// task inserts a task in state dispatched (with its undelivered dispatch row) or
// running on session, at attempt 1, the open attempt held by the task row.
func (b *bundle) task(group string, session int64, state string) int64 {
	b.t.Helper()
	id := b.int64(`INSERT INTO tasks (group_name, kind, state, attempt, worker_session_id, attempt_session_id, dispatched_at, started_at)
		VALUES ($1, 'shell', $2, 1, $3, $3, now() - interval '1 minute', CASE WHEN $2 = 'running' THEN now() END) RETURNING id`, group, state, session)
	if state == "dispatched" {
		b.exec(`INSERT INTO dispatch_queue (task_id, attempt, group_name, target_session_id, reason) VALUES ($1, 1, $2, $3, 'submit')`, id, group, session)
	}
	return id
}

var cfg = failover.Config{WorkerTimeout: 5 * time.Second}

func (b *bundle) failover(session int64, group string) failover.Result {
	b.t.Helper()
	res, err := failover.Worker(b.ctx, b.pool, cfg, session, group)
	if err != nil {
		b.t.Fatalf("failover of %d: %v", session, err)
	}
	return res
}

func TestReassignsOnlyToHealthySameGroup(t *testing.T) {
	t.Parallel()
	b := setup(t)
	dead := b.session("g1", "alive", 4, true)
	small := b.session("g1", "alive", 2, false)
	big := b.session("g1", "alive", 10, false)
	draining := b.session("g1", "draining", 50, false)
	staleAlive := b.session("g1", "alive", 50, true)
	otherGroup := b.session("g2", "alive", 50, false)
	_ = b.session("g1", "dead", 50, true)
	var tasks []int64
	for i := range 8 {
		state := "running"
		if i%2 == 0 {
			state = "dispatched"
		}
		tasks = append(tasks, b.task("g1", dead, state))
	}
	// small already runs one task: one free slot left.
	b.task("g1", small, "running")

	res := b.failover(dead, "g1")
	if !res.Ran || res.Reassigned != 8 || res.Queued != 0 || !res.Finished {
		t.Fatalf("result = %+v, want 8 reassigned, finished", res)
	}
	perTarget := map[int64]int{}
	for _, id := range tasks {
		var state string
		var attempt, failovers int
		var target int64
		if err := b.pool.QueryRow(b.ctx, "SELECT state, attempt, failover_count, worker_session_id FROM tasks WHERE id = $1", id).Scan(&state, &attempt, &failovers, &target); err != nil {
			t.Fatal(err)
		}
		if state != "dispatched" || attempt != 2 || failovers != 1 {
			t.Fatalf("task %d: state %s attempt %d failovers %d", id, state, attempt, failovers)
		}
		switch target {
		case small, big:
		case draining, staleAlive, otherGroup, dead:
			t.Fatalf("task %d sent to forbidden session %d", id, target)
		default:
			t.Fatalf("task %d sent to unknown session %d", id, target)
		}
		perTarget[target]++
		if n := b.int64("SELECT count(*) FROM dispatch_queue WHERE task_id = $1 AND target_session_id = $2 AND attempt = 2 AND reason = 'failover'", id, target); n != 1 {
			t.Fatalf("task %d: dispatch row for new attempt missing", id)
		}
		// The old attempt is closed in the log; the new one is the task row's.
		if o := b.int64(`SELECT count(*) FROM task_attempt_log WHERE task_id = $1 AND attempt = 1 AND outcome = 'failed_over'
			AND worker_session_id = $2 AND reason = 'submit' AND finished_at IS NOT NULL`, id, dead); o != 1 {
			t.Fatalf("task %d: old attempt not recorded failed_over", id)
		}
		if o := b.int64("SELECT count(*) FROM tasks WHERE id = $1 AND attempt_session_id = $2 AND attempt_reason = 'failover' AND dispatched_at IS NOT NULL AND started_at IS NULL", id, target); o != 1 {
			t.Fatalf("task %d: new attempt not opened in the task row", id)
		}
		if o := b.int64("SELECT count(*) FROM task_attempts WHERE task_id = $1 AND attempt = 2 AND reason = 'failover' AND worker_session_id = $2 AND outcome IS NULL", id, target); o != 1 {
			t.Fatalf("task %d: new attempt missing from the view task_attempts", id)
		}
		if o := b.int64("SELECT count(*) FROM task_attempts WHERE task_id = $1", id); o != 2 {
			t.Fatalf("task %d: %d attempts in the view, want 2", id, o)
		}
	}
	if perTarget[small] > 1 {
		t.Fatalf("session with 1 free slot got %d tasks", perTarget[small])
	}
	if st := b.int64("SELECT count(*) FROM worker_sessions WHERE id = $1 AND state = 'dead' AND ended_at IS NOT NULL", dead); st != 1 {
		t.Fatal("dead session not marked dead")
	}
	if n := b.int64("SELECT count(*) FROM dispatch_queue WHERE target_session_id = $1", dead); n != 0 {
		t.Fatalf("%d dispatch rows still target the dead session", n)
	}
	if n := b.int64("SELECT count(*) FROM failover_events WHERE kind = 'worker' AND session_id = $1 AND tasks_reassigned = 8 AND finished_at IS NOT NULL", dead); n != 1 {
		t.Fatal("marker missing or wrong counts")
	}
}

func TestNoHealthyWorkerQueues(t *testing.T) {
	t.Parallel()
	b := setup(t)
	dead := b.session("g1", "alive", 4, true)
	b.session("g1", "draining", 4, false)
	b.session("g2", "alive", 4, false)
	var tasks []int64
	for _, st := range []string{"running", "dispatched", "running"} {
		tasks = append(tasks, b.task("g1", dead, st))
	}
	res := b.failover(dead, "g1")
	if res.Queued != 3 || res.Reassigned != 0 || !res.Finished {
		t.Fatalf("result = %+v, want 3 queued", res)
	}
	for _, id := range tasks {
		// Back in its group's queue (the task row), claimable at once, no dispatch row.
		if n := b.int64(`SELECT count(*) FROM tasks
			WHERE id = $1 AND state = 'queued' AND worker_session_id IS NULL AND group_name = 'g1' AND attempt = 1
			  AND queued_reason = 'failover' AND available_at <= now() AND failover_count = 1`, id); n != 1 {
			t.Fatalf("task %d is not queued in its group for failover", id)
		}
		if n := b.int64("SELECT count(*) FROM dispatch_queue WHERE task_id = $1", id); n != 0 {
			t.Fatalf("task %d: queued with a dispatch row", id)
		}
		if n := b.int64("SELECT count(*) FROM task_attempt_log WHERE task_id = $1 AND attempt = 1 AND outcome = 'failed_over' AND worker_session_id = $2", id, dead); n != 1 {
			t.Fatalf("task %d: its attempt not closed failed_over", id)
		}
		if n := b.int64("SELECT count(*) FROM task_attempts WHERE task_id = $1", id); n != 1 {
			t.Fatalf("task %d: %d attempts in the view, want 1 (the closed one)", id, n)
		}
	}
}

func TestConcurrentFailoverRunsOnce(t *testing.T) {
	t.Parallel()
	b := setup(t)
	dead := b.session("g1", "alive", 100, true)
	b.session("g1", "alive", 100, false)
	b.session("g1", "alive", 100, false)
	const n = 60
	for i := range n {
		st := "running"
		if i%3 == 0 {
			st = "dispatched"
		}
		b.task("g1", dead, st)
	}
	var wg sync.WaitGroup
	results := make([]failover.Result, 5)
	errs := make([]error, 5)
	for i := range 5 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = failover.Worker(b.ctx, b.pool, cfg, dead, "g1")
		}()
	}
	wg.Wait()
	moved := 0
	for i := range 5 {
		if errs[i] != nil {
			t.Fatalf("goroutine %d: %v", i, errs[i])
		}
		moved += results[i].Reassigned + results[i].Queued
	}
	// Run twice more, sequentially: nothing left to move.
	for range 2 {
		r := b.failover(dead, "g1")
		moved += r.Reassigned + r.Queued
	}
	if moved != n {
		t.Fatalf("tasks moved across runs = %d, want %d (each exactly once)", moved, n)
	}
	if c := b.int64("SELECT count(*) FROM failover_events WHERE session_id = $1", dead); c != 1 {
		t.Fatalf("failover markers = %d, want 1", c)
	}
	if c := b.int64("SELECT count(*) FROM tasks WHERE attempt = 2 AND failover_count = 1 AND state = 'dispatched'"); c != n {
		t.Fatalf("tasks reassigned exactly once = %d, want %d", c, n)
	}
	if c := b.int64("SELECT count(*) FROM task_attempts WHERE outcome = 'failed_over'"); c != n {
		t.Fatalf("failed_over attempts = %d, want %d", c, n)
	}
}

func TestLockedRowLeftForNextPass(t *testing.T) {
	t.Parallel()
	b := setup(t)
	dead := b.session("g1", "alive", 4, true)
	b.session("g1", "alive", 10, false)
	free := b.task("g1", dead, "running")
	busy := b.task("g1", dead, "running")

	// A concurrent completion holds busy's row.
	tx, err := b.pool.Begin(b.ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(b.ctx) //nolint:errcheck
	if _, err := tx.Exec(b.ctx, "SELECT 1 FROM tasks WHERE id = $1 FOR UPDATE", busy); err != nil {
		t.Fatal(err)
	}
	res := b.failover(dead, "g1")
	if res.Reassigned != 1 || res.Finished {
		t.Fatalf("first pass = %+v, want 1 reassigned, unfinished", res)
	}
	if a := b.int64("SELECT attempt FROM tasks WHERE id = $1", busy); a != 1 {
		t.Fatalf("locked task touched: attempt %d", a)
	}
	if a := b.int64("SELECT attempt FROM tasks WHERE id = $1", free); a != 2 {
		t.Fatalf("free task not moved: attempt %d", a)
	}
	if err := tx.Rollback(b.ctx); err != nil {
		t.Fatal(err)
	}
	res = b.failover(dead, "g1")
	if res.Reassigned != 1 || !res.Finished {
		t.Fatalf("second pass = %+v, want 1 reassigned, finished", res)
	}
	if n := b.int64("SELECT count(*) FROM failover_events WHERE session_id = $1 AND passes = 2 AND tasks_reassigned = 2 AND finished_at IS NOT NULL", dead); n != 1 {
		t.Fatal("marker does not show two passes and two tasks")
	}
}

func TestTasksAfterDeadlineUntouched(t *testing.T) {
	t.Parallel()
	b := setup(t)
	dead := b.session("g1", "alive", 4, true)
	b.session("g1", "alive", 10, false)
	before := b.task("g1", dead, "running")
	after := b.task("g1", dead, "running")
	b.exec("UPDATE tasks SET dispatched_at = now() + interval '1 hour' WHERE id = $1", after)
	res := b.failover(dead, "g1")
	if res.Reassigned != 1 || !res.Finished {
		t.Fatalf("result = %+v", res)
	}
	if a := b.int64("SELECT attempt FROM tasks WHERE id = $1 AND worker_session_id = $2", after, dead); a != 1 {
		t.Fatalf("task dispatched after the deadline was touched")
	}
	if a := b.int64("SELECT attempt FROM tasks WHERE id = $1", before); a != 2 {
		t.Fatalf("task dispatched before the deadline not moved")
	}
}

func TestFreshSessionIsNotFailedOver(t *testing.T) {
	t.Parallel()
	b := setup(t)
	live := b.session("g1", "alive", 4, false)
	id := b.task("g1", live, "running")
	res := b.failover(live, "g1")
	if res.Ran {
		t.Fatalf("failover ran on a session that heartbeats: %+v", res)
	}
	if n := b.int64("SELECT count(*) FROM worker_sessions WHERE id = $1 AND state = 'alive'", live); n != 1 {
		t.Fatal("live session was marked dead")
	}
	if a := b.int64("SELECT attempt FROM tasks WHERE id = $1", id); a != 1 {
		t.Fatal("task of a live session moved")
	}
	if n := b.int64("SELECT count(*) FROM failover_events"); n != 0 {
		t.Fatal("marker written for a live session")
	}
}

// A session that stopped cleanly but left tasks is failed over without waiting
// for the heartbeat timeout.
func TestStoppedSessionHandsBackAtOnce(t *testing.T) {
	t.Parallel()
	b := setup(t)
	stopped := b.session("g1", "alive", 4, false)
	b.session("g1", "alive", 4, false)
	id := b.task("g1", stopped, "running")
	b.exec("UPDATE worker_sessions SET state = 'stopped', ended_at = now() WHERE id = $1", stopped)
	res := b.failover(stopped, "g1")
	if res.Reassigned != 1 || !res.Finished {
		t.Fatalf("result = %+v", res)
	}
	if a := b.int64("SELECT attempt FROM tasks WHERE id = $1", id); a != 2 {
		t.Fatal("stopped session's task not handed back")
	}
	if n := b.int64("SELECT count(*) FROM failover_events WHERE session_id = $1 AND crash_detected IS NULL", stopped); n != 1 {
		t.Fatal("a stopped session's marker names a way it was declared dead")
	}
}

// Liveness is judged by Postgres time: a session whose heartbeat is fresh by the
// database clock is alive whatever the caller's clock says, and vice versa.
func TestMasterFailoverOnce(t *testing.T) {
	t.Parallel()
	b := setup(t)
	m := b.int64("INSERT INTO master_sessions (name, last_heartbeat_at) VALUES ('m', now() - interval '1 hour') RETURNING id")
	live := b.int64("INSERT INTO master_sessions (name) VALUES ('m2') RETURNING id")
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _ = failover.Master(b.ctx, b.pool, failover.Config{MasterID: live}, m)
		}()
	}
	wg.Wait()
	if ran, err := failover.Master(b.ctx, b.pool, failover.Config{}, live); err != nil || ran {
		t.Fatalf("live master failed over: %v %v", ran, err)
	}
	if n := b.int64("SELECT count(*) FROM failover_events WHERE kind = 'master' AND session_id = $1 AND detected_by = $2 AND crash_detected IS NULL", m, live); n != 1 {
		t.Fatalf("master markers = %d, want 1", n)
	}
}

// A task that was running each time its worker died is failed over at most
// MaxFailovers times; found running on a dead worker once more, it fails with an
// error that says so. A task merely dispatched to a dead worker is always moved,
// and such moves do not count towards the limit.
func TestPoisonTaskFailsAfterMaxFailovers(t *testing.T) {
	t.Parallel()
	b := setup(t)
	dead := b.session("g1", "alive", 10, true)
	b.session("g1", "alive", 10, false)
	poison := b.task("g1", dead, "running")
	b.exec("UPDATE tasks SET failover_count = 5, running_failovers = 3 WHERE id = $1", poison)
	below := b.task("g1", dead, "running")
	b.exec("UPDATE tasks SET failover_count = 6, running_failovers = 2 WHERE id = $1", below)
	waiting := b.task("g1", dead, "dispatched")
	b.exec("UPDATE tasks SET failover_count = 7, running_failovers = 7 WHERE id = $1", waiting)
	unlucky := b.task("g1", dead, "running") // moved often, but never while running
	b.exec("UPDATE tasks SET failover_count = 9, running_failovers = 0 WHERE id = $1", unlucky)

	res, err := failover.Worker(b.ctx, b.pool, failover.Config{WorkerTimeout: 5 * time.Second, MaxFailovers: 3}, dead, "g1")
	if err != nil {
		t.Fatal(err)
	}
	if res.Failed != 1 || res.Reassigned != 3 || !res.Finished {
		t.Fatalf("result = %+v, want 1 failed, 3 reassigned, finished", res)
	}
	var state, lastErr string
	var failovers int
	if err := b.pool.QueryRow(b.ctx, `SELECT state, last_error, running_failovers FROM tasks
		WHERE id = $1 AND worker_session_id IS NULL AND finished_at IS NOT NULL AND attempt = 1`, poison).Scan(&state, &lastErr, &failovers); err != nil {
		t.Fatal(err)
	}
	if state != "failed" || failovers != 3 || !strings.Contains(lastErr, "failed over 3 times (its workers died while running it)") {
		t.Fatalf("poison task: state %s, failovers %d, error %q", state, failovers, lastErr)
	}
	if n := b.int64("SELECT count(*) FROM dispatch_queue WHERE task_id = $1", poison); n != 0 {
		t.Fatal("poison task still has a dispatch row")
	}
	if n := b.int64("SELECT count(*) FROM task_attempts WHERE task_id = $1 AND attempt = 1 AND outcome = 'failed_over'", poison); n != 1 {
		t.Fatal("poison task's last attempt not closed as failed_over")
	}
	if n := b.int64("SELECT count(*) FROM task_attempts WHERE task_id = $1", poison); n != 1 {
		t.Fatal("poison task got a new attempt")
	}
	for id, running := range map[int64]int64{below: 3, waiting: 7, unlucky: 1} {
		if n := b.int64("SELECT count(*) FROM tasks WHERE id = $1 AND state = 'dispatched' AND attempt = 2 AND running_failovers = $2", id, running); n != 1 {
			t.Fatalf("task %d not failed over, or its running failovers not %d", id, running)
		}
	}
}

// A worker that stopped by itself (SIGTERM past its shutdown grace, a self-fence)
// hands its running tasks back: that is no evidence against the tasks, so it
// neither fails one as poison nor counts toward the limit (chaos seed 7 failed an
// innocent task after three rolling restarts).
func TestStoppedSessionDoesNotCountTowardPoison(t *testing.T) {
	t.Parallel()
	b := setup(t)
	stopped := b.session("g1", "alive", 10, true)
	b.session("g1", "alive", 10, false)
	task := b.task("g1", stopped, "running")
	b.exec("UPDATE tasks SET failover_count = 3, running_failovers = 3 WHERE id = $1", task)
	b.exec("UPDATE worker_sessions SET state = 'stopped', ended_at = now() WHERE id = $1", stopped)
	res, err := failover.Worker(b.ctx, b.pool, failover.Config{WorkerTimeout: 5 * time.Second, MaxFailovers: 3}, stopped, "g1")
	if err != nil {
		t.Fatal(err)
	}
	if res.Failed != 0 || res.Reassigned != 1 {
		t.Fatalf("result = %+v, want the task moved, not failed", res)
	}
	if n := b.int64("SELECT count(*) FROM tasks WHERE id = $1 AND state = 'dispatched' AND attempt = 2 AND running_failovers = 3", task); n != 1 {
		t.Fatal("task off a stopped session not moved, or counted toward the poison limit")
	}
}

func TestPoison(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		state   string
		count   int32
		want    bool
		session string
	}{{"running", 2, false, "dead"}, {"running", 3, true, "dead"}, {"running", 4, true, "dead"}, {"dispatched", 9, false, "dead"},
		{"running", 9, false, "stopped"}} {
		if got := failover.Poison(c.state, c.session, c.count, 3); got != c.want {
			t.Errorf("Poison(%s, %s, %d, 3) = %v", c.state, c.session, c.count, got)
		}
	}
}

// A group whose dispatch lock another session holds (and does not release) is
// skipped, not waited for: the pass reports Busy and touches nothing; once the
// lock is released the next pass fails the session over.
func TestBusyGroupIsSkipped(t *testing.T) {
	t.Parallel()
	b := setup(t)
	dead := b.session("g1", "alive", 4, true)
	b.session("g1", "alive", 4, false)
	id := b.task("g1", dead, "running")
	tx, err := b.pool.Begin(b.ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(b.ctx) //nolint:errcheck
	if _, err := tx.Exec(b.ctx, "SELECT pg_advisory_xact_lock(1650524163, hashtext('g1'))"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(b.ctx, 5*time.Second) // a wait would hit this and fail the test
	defer cancel()
	res, err := failover.Worker(ctx, b.pool, cfg, dead, "g1")
	if err != nil || !res.Busy || res.Ran {
		t.Fatalf("held group: %+v, %v; want busy", res, err)
	}
	if n := b.int64("SELECT count(*) FROM worker_sessions WHERE id = $1 AND state = 'alive'", dead); n != 1 {
		t.Fatal("session of a busy group marked dead before its tasks could move")
	}
	if err := tx.Rollback(b.ctx); err != nil {
		t.Fatal(err)
	}
	if res := b.failover(dead, "g1"); res.Busy || res.Reassigned != 1 || !res.Finished {
		t.Fatalf("after release: %+v", res)
	}
	if a := b.int64("SELECT attempt FROM tasks WHERE id = $1", id); a != 2 {
		t.Fatal("task not moved after release")
	}
}

// Fast crash detection: a session that promised a liveness lock is dead as soon as
// the lock is free and its heartbeat is older than CrashAfter — well inside the
// heartbeat timeout. Never while a connection holds the lock (a live or merely
// partitioned worker), never for a session that did not promise one, never with a
// fresher heartbeat, and never within a timeout of a Postgres restart (which frees
// every lock).
func TestCrashDetectionByLivenessLock(t *testing.T) {
	t.Parallel()
	b := setup(t)
	healthy := b.session("g1", "alive", 10, false)
	// Liveness is judged at an injected "now", so however long the steps below
	// take on a loaded machine, every heartbeat keeps the age it was given: hb is
	// the last heartbeat, now 3 s later (past the 2 s crash age, within the 5 s
	// timeout). Both lie a minute ahead of the real clock, after the tasks'
	// dispatch. The test server may have started seconds ago (a fresh container),
	// and crash detection stays off within a worker timeout of a Postgres start:
	// pin that too.
	var hb time.Time
	if err := b.pool.QueryRow(b.ctx, "SELECT now() + interval '1 minute'").Scan(&hb); err != nil {
		t.Fatal(err)
	}
	now := hb.Add(3 * time.Second)
	b.exec("UPDATE worker_sessions SET last_heartbeat_at = $1 WHERE id = $2", now, healthy)
	longAgo := now.Add(-time.Hour)
	crashCfg := failover.Config{WorkerTimeout: 5 * time.Second, CrashAfter: 2 * time.Second, PostmasterStart: &longAgo, Now: &now}
	newSession := func(promised bool) (int64, int64) {
		id := b.int64(`INSERT INTO worker_sessions (name, group_name, slots, last_heartbeat_at, liveness_lock)
			VALUES ('w', 'g1', 4, $1, $2) RETURNING id`, hb, promised)
		return id, b.task("g1", id, "running")
	}
	holder, err := b.pool.Acquire(b.ctx) // the worker's dedicated liveness connection
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Release()
	run := func(id int64, c failover.Config) failover.Result {
		t.Helper()
		res, err := failover.Worker(b.ctx, b.pool, c, id, "g1")
		if err != nil {
			t.Fatal(err)
		}
		return res
	}

	crashed, task := newSession(true)
	var locked bool
	if err := holder.QueryRow(b.ctx, "SELECT pg_try_advisory_lock(1650524164, hashtext($1::bigint::text))", crashed).Scan(&locked); err != nil || !locked {
		t.Fatalf("take liveness lock: %v %v", locked, err)
	}
	if res := run(crashed, crashCfg); res.Ran {
		t.Fatalf("failed over while its connection holds the lock: %+v", res)
	}
	if res := run(crashed, failover.Config{WorkerTimeout: 5 * time.Second, Now: &now}); res.Ran {
		t.Fatalf("failed over before the timeout without crash detection: %+v", res)
	}
	// The process dies: its connection closes and Postgres frees the lock.
	if err := holder.Conn().Close(b.ctx); err != nil {
		t.Fatal(err)
	}
	// The backend exits (and frees the lock) a moment after the client closes.
	batontest.WaitFor(t, 10*time.Second, func() (bool, string) {
		n := b.int64("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = 1650524164 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())")
		return n == 0, "liveness lock still held after the connection closed"
	})
	restarted := now.Add(-time.Second)
	if res := run(crashed, failover.Config{WorkerTimeout: 5 * time.Second, CrashAfter: 2 * time.Second, PostmasterStart: &restarted, Now: &now}); res.Ran {
		t.Fatalf("failed over by a free lock right after a Postgres restart: %+v", res)
	}
	res := run(crashed, crashCfg)
	if !res.Ran || !res.Crash || res.Reassigned != 1 || !res.Finished {
		t.Fatalf("crashed session: %+v, want failed over by crash detection", res)
	}
	if a := b.int64("SELECT attempt FROM tasks WHERE id = $1", task); a != 2 {
		t.Fatal("task of the crashed session not moved")
	}
	if n := b.int64("SELECT count(*) FROM failover_events WHERE session_id = $1 AND crash_detected", crashed); n != 1 {
		t.Fatal("the marker does not say the session was declared dead by crash detection")
	}

	silent, _ := newSession(false) // lock free, but never promised one
	if res := run(silent, crashCfg); res.Ran {
		t.Fatalf("session without a liveness lock failed over before the timeout: %+v", res)
	}
	// Past the timeout it is declared dead by the heartbeat timeout, and its
	// marker says so.
	later := now.Add(10 * time.Second)
	timedOut := crashCfg
	timedOut.Now = &later
	if res := run(silent, timedOut); !res.Ran || res.Crash {
		t.Fatalf("silent session past the timeout: %+v, want failed over by the heartbeat timeout", res)
	}
	if n := b.int64("SELECT count(*) FROM failover_events WHERE session_id = $1 AND crash_detected = false", silent); n != 1 {
		t.Fatal("the marker does not say the session was declared dead by the heartbeat timeout")
	}
	fresh := b.int64(`INSERT INTO worker_sessions (name, group_name, slots, last_heartbeat_at, liveness_lock)
		VALUES ('w', 'g1', 4, $1, true) RETURNING id`, now.Add(-time.Second))
	if res := run(fresh, crashCfg); res.Ran {
		t.Fatalf("session with a 1 s old heartbeat failed over: %+v", res)
	}
}

// A group lock held briefly (a dispatch transaction) is waited for, not skipped:
// a busy dispatcher cannot starve a failover.
func TestGroupLockWaitedForBriefly(t *testing.T) {
	t.Parallel()
	b := setup(t)
	dead := b.session("g1", "alive", 4, true)
	b.session("g1", "alive", 4, false)
	b.task("g1", dead, "running")
	tx, err := b.pool.Begin(b.ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(b.ctx) //nolint:errcheck
	if _, err := tx.Exec(b.ctx, "SELECT pg_advisory_xact_lock(1650524163, hashtext('g1'))"); err != nil {
		t.Fatal(err)
	}
	done := make(chan failover.Result, 1)
	go func() {
		res, err := failover.Worker(b.ctx, b.pool, failover.Config{WorkerTimeout: 5 * time.Second, GroupLockWait: time.Minute}, dead, "g1")
		if err != nil {
			t.Error(err)
		}
		done <- res
	}()
	batontest.WaitFor(t, 10*time.Second, func() (bool, string) {
		n := b.int64("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = 1650524163 AND NOT granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())")
		return n == 1, "failover not waiting on the group lock"
	})
	if err := tx.Rollback(b.ctx); err != nil {
		t.Fatal(err)
	}
	if res := <-done; res.Busy || !res.Ran || res.Reassigned != 1 {
		t.Fatalf("failover after a brief wait: %+v", res)
	}
}

// MaxBatches bounds one transaction: the rest of a large session is left to the
// next pass, and the marker is finished only when nothing is left.
func TestLargeSessionMovedOverPasses(t *testing.T) {
	t.Parallel()
	b := setup(t)
	dead := b.session("g1", "alive", 100, true)
	b.session("g1", "alive", 100, false)
	for range 25 {
		b.task("g1", dead, "running")
	}
	c := failover.Config{WorkerTimeout: 5 * time.Second, BatchSize: 5, MaxBatches: 2}
	for i, want := range []int{10, 10, 5} {
		res, err := failover.Worker(b.ctx, b.pool, c, dead, "g1")
		if err != nil {
			t.Fatal(err)
		}
		if res.Reassigned != want || res.Finished != (i == 2) {
			t.Fatalf("pass %d: %+v, want %d reassigned, finished %v", i, res, want, i == 2)
		}
	}
	if n := b.int64("SELECT count(*) FROM failover_events WHERE session_id = $1 AND passes = 3 AND tasks_reassigned = 25 AND finished_at IS NOT NULL", dead); n != 1 {
		t.Fatal("marker does not show three passes and 25 tasks")
	}
}
