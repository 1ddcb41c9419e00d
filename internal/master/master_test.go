package master

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap/zaptest"

	"github.com/baton-scheduler/baton/batontest"
	"github.com/baton-scheduler/baton/internal/service"
	"github.com/baton-scheduler/baton/internal/submit"
)

var srv *batontest.Server

func TestMain(m *testing.M) {
	os.Exit(batontest.MainNoLeaks(m, func(s *batontest.Server) { srv = s }))
}

type testBundle struct {
	t     *testing.T
	ctx   context.Context
	pool  *pgxpool.Pool // the test's own connections
	clock *service.Clock
	m     *Master
}

// setup returns a registered (not running) master on a fresh database, with every
// test signal armed. cfg's database URL is filled in.
func setup(t *testing.T, cfg Config) *testBundle {
	t.Helper()
	pool, url := srv.NewPool(t)
	ctx := context.Background()
	cfg.DatabaseURL = url
	cfg.Logger = zaptest.NewLogger(t)
	clock := service.NewClock()
	m, err := newMaster(ctx, cfg, clock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.pool.Close)
	m.heartbeat.TestSignals.Beat.Init(t)
	m.workerSweeper.TestSignals.Swept.Init(t)
	m.masterSweeper.TestSignals.Swept.Init(t)
	m.timeouts.TestSignals.Swept.Init(t)
	m.runRepair.TestSignals.Swept.Init(t)
	m.dispatcher.TestSignals.Dispatched.Init(t)
	if m.pruner != nil {
		m.pruner.TestSignals.Pruned.Init(t)
	}
	return &testBundle{t: t, ctx: ctx, pool: pool, clock: clock, m: m}
}

func (b *testBundle) int64(sql string, args ...any) int64 {
	b.t.Helper()
	return batontest.Int64(b.t, b.pool, sql, args...)
}

func (b *testBundle) exec(sql string, args ...any) {
	b.t.Helper()
	if _, err := b.pool.Exec(b.ctx, sql, args...); err != nil {
		b.t.Fatalf("%s: %v", sql, err)
	}
}

// session inserts a worker session whose last heartbeat was ago.
func (b *testBundle) session(group string, slots int, ago time.Duration) int64 {
	b.t.Helper()
	return b.int64(`INSERT INTO worker_sessions (name, group_name, slots, last_heartbeat_at)
		VALUES ('w', $1, $2, now() - make_interval(secs => $3::float8)) RETURNING id`, group, slots, ago.Seconds())
}

// running inserts a task running on session since startedAgo, its open attempt
// held by the task row.
func (b *testBundle) running(group string, session int64, timeout, startedAgo time.Duration) int64 {
	b.t.Helper()
	return b.int64(`INSERT INTO tasks (group_name, kind, state, attempt, worker_session_id, attempt_session_id, dispatched_at, started_at, timeout_ms)
		VALUES ($1, 'noop', 'running', 1, $2, $2, now() - interval '1 hour', now() - make_interval(secs => $3::float8), $4) RETURNING id`,
		group, session, startedAgo.Seconds(), timeout.Milliseconds())
}

// within bounds a runOnce call: a sweep that waited on a held lock would fail the
// test here instead of hanging.
func (b *testBundle) within() context.Context {
	ctx, cancel := context.WithTimeout(b.ctx, 5*time.Second)
	b.t.Cleanup(cancel)
	return ctx
}

func TestDefaults(t *testing.T) {
	t.Parallel()
	cfg := Config{DatabaseURL: "postgres://x"}.WithDefaults()
	if cfg.MaxFailovers != 3 || cfg.Retention != 30*24*time.Hour || cfg.PruneInterval != time.Minute || cfg.TxTimeout != 10*time.Second {
		t.Fatalf("defaults: %+v", cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]Config{
		"max failovers 0":  {MaxFailovers: -1},
		"retention 1s":     {Retention: time.Second},
		"negative timeout": {TxTimeout: -time.Second},
	} {
		c.DatabaseURL = "postgres://x"
		if err := c.WithDefaults().Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	keep := Config{DatabaseURL: "postgres://x", Retention: RetentionForever}.WithDefaults()
	if err := keep.Validate(); err != nil {
		t.Fatalf("RetentionForever rejected: %v", err)
	}
}

// #6.3: a session holding one group's dispatch lock and hanging stalls nothing
// else. While the test holds g_held's lock, one pass fails over the dead session
// of the other group, records the dead master and times out the overdue task of
// the other group; the held group is reported busy and left alone. Once the lock
// is released, the next pass fails the held group's session over too.
func TestStuckGroupStallsNothingElse(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{})
	b.exec("INSERT INTO worker_groups (name) VALUES ('g_held'), ('g_other')")
	deadHeld := b.session("g_held", 4, time.Hour)
	b.session("g_held", 4, 0)
	deadOther := b.session("g_other", 4, time.Hour)
	healthyOther := b.session("g_other", 4, 0)
	heldTask := b.running("g_held", deadHeld, 0, time.Minute)
	otherTask := b.running("g_other", deadOther, 0, time.Minute)
	overdue := b.running("g_other", healthyOther, time.Second, time.Hour)
	deadMaster := b.int64("INSERT INTO master_sessions (name, last_heartbeat_at) VALUES ('m', now() - interval '1 hour') RETURNING id")

	// The hung session: it took g_held's dispatch lock and never returns.
	hung, err := b.pool.Begin(b.ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer hung.Rollback(b.ctx) //nolint:errcheck
	if _, err := hung.Exec(b.ctx, "SELECT pg_advisory_xact_lock(1650524163, hashtext('g_held'))"); err != nil {
		t.Fatal(err)
	}

	res, err := b.m.workerSweeper.runOnce(b.within())
	if err != nil {
		t.Fatal(err)
	}
	if res.Candidates != 2 || res.FailedOver != 1 || res.Busy != 1 || res.Reassigned != 1 || res.Errors != 0 {
		t.Fatalf("worker sweep = %+v, want the other group failed over and the held one busy", res)
	}
	if n := b.int64("SELECT count(*) FROM tasks WHERE id = $1 AND attempt = 2 AND worker_session_id = $2", otherTask, healthyOther); n != 1 {
		t.Fatal("task of the other group's dead session not failed over")
	}
	if n := b.int64("SELECT count(*) FROM tasks WHERE id = $1 AND attempt = 1 AND worker_session_id = $2", heldTask, deadHeld); n != 1 {
		t.Fatal("held group's task moved while its lock was held")
	}
	ms, err := b.m.masterSweeper.runOnce(b.within())
	if err != nil || ms.Recorded != 1 {
		t.Fatalf("master sweep = %+v, %v; want the dead master recorded", ms, err)
	}
	if n := b.int64("SELECT count(*) FROM failover_events WHERE kind = 'master' AND session_id = $1 AND detected_by = $2 AND finished_at IS NOT NULL", deadMaster, b.m.SessionID()); n != 1 {
		t.Fatal("dead master not recorded")
	}
	if n, err := b.m.timeouts.runOnce(b.within()); err != nil || n != 1 {
		t.Fatalf("timeout sweep = %d, %v; want 1", n, err)
	}
	if n := b.int64("SELECT count(*) FROM tasks WHERE id = $1 AND state = 'timed_out'", overdue); n != 1 {
		t.Fatal("overdue task of the other group not timed out")
	}

	if err := hung.Rollback(b.ctx); err != nil {
		t.Fatal(err)
	}
	res, err = b.m.workerSweeper.runOnce(b.within())
	if err != nil || res.FailedOver != 1 || res.Busy != 0 || res.Reassigned != 1 {
		t.Fatalf("after release: %+v, %v", res, err)
	}
	if n := b.int64("SELECT count(*) FROM tasks WHERE id = $1 AND attempt = 2 AND worker_session_id <> $2", heldTask, deadHeld); n != 1 {
		t.Fatal("held group's task not failed over after release")
	}
}

// Liveness SQL takes the service clock's "now": a session that heartbeats by
// Postgres time is dead once the injected clock has moved past the timeout, and a
// clock that jumps back makes nothing dead.
func TestSweepUsesInjectedNow(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{})
	b.exec("INSERT INTO worker_groups (name) VALUES ('g')")
	s := b.session("g", 2, 0)
	b.running("g", s, 0, 0)
	b.clock.StubNow(time.Now().Add(-time.Hour)) // jumped back: nothing is stale
	if res, err := b.m.workerSweeper.runOnce(b.within()); err != nil || res.Candidates != 0 {
		t.Fatalf("clock in the past: %+v, %v", res, err)
	}
	b.clock.StubNow(time.Now().Add(time.Hour)) // jumped ahead past the 5 s timeout
	res, err := b.m.workerSweeper.runOnce(b.within())
	if err != nil || res.Candidates != 1 || res.FailedOver != 1 || res.Queued != 1 {
		t.Fatalf("clock an hour ahead: %+v, %v; want the session failed over, its task queued", res, err)
	}
	if n := b.int64("SELECT count(*) FROM worker_sessions WHERE id = $1 AND state = 'dead'", s); n != 1 {
		t.Fatal("session not marked dead")
	}
}

// #6.6 through the master: its MaxFailovers setting reaches the failover.
func TestMaxFailoversSetting(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{MaxFailovers: 1})
	b.exec("INSERT INTO worker_groups (name) VALUES ('g')")
	dead := b.session("g", 2, time.Hour)
	b.session("g", 2, 0)
	once := b.running("g", dead, 0, time.Minute)
	b.exec("UPDATE tasks SET failover_count = 1, running_failovers = 1 WHERE id = $1", once)
	never := b.running("g", dead, 0, time.Minute)
	res, err := b.m.workerSweeper.runOnce(b.within())
	if err != nil || res.Failed != 1 || res.Reassigned != 1 {
		t.Fatalf("sweep = %+v, %v; want 1 failed, 1 reassigned", res, err)
	}
	var lastErr string
	if err := b.pool.QueryRow(b.ctx, "SELECT last_error FROM tasks WHERE id = $1 AND state = 'failed'", once).Scan(&lastErr); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(lastErr, "failed over 1 times (its workers died while running it)") {
		t.Fatalf("poison error %q", lastErr)
	}
	if n := b.int64("SELECT count(*) FROM tasks WHERE id = $1 AND state = 'dispatched' AND failover_count = 1 AND running_failovers = 1", never); n != 1 {
		t.Fatal("task below the limit not failed over")
	}
}

// A master another master declared dead registers a new session.
func TestHeartbeatReregisters(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{})
	first := b.m.SessionID()
	if res, err := b.m.heartbeat.runOnce(b.within()); err != nil || res.State != "alive" || res.Reregistered {
		t.Fatalf("heartbeat = %+v, %v", res, err)
	}
	b.exec("UPDATE master_sessions SET state = 'dead', ended_at = now() WHERE id = $1", first)
	res, err := b.m.heartbeat.runOnce(b.within())
	if err != nil || res.State != "dead" || !res.Reregistered || b.m.SessionID() == first {
		t.Fatalf("heartbeat after being declared dead = %+v, %v (session %d)", res, err, b.m.SessionID())
	}
}

// The whole master: services started by Run report through their signals, a
// submitted task is dispatched, and Run marks the session stopped on cancel.
func TestRun(t *testing.T) {
	t.Parallel()
	// No minimum wait: the task below is dispatched as soon as it is queued (no
	// worker claims it here).
	b := setup(t, Config{SweepInterval: time.Hour, DispatchInterval: time.Hour, HeartbeatInterval: time.Hour, MasterTimeout: 3 * time.Hour, WorkerTimeout: 3 * time.Hour,
		DispatchMinWait: -1})
	b.exec("INSERT INTO worker_groups (name) VALUES ('g')")
	s := b.session("g", 2, 0)
	ctx, cancel := context.WithCancel(b.ctx)
	done := make(chan error, 1)
	go func() { done <- b.m.Run(ctx) }()
	// Every loop runs once at start.
	b.m.heartbeat.TestSignals.Beat.WaitOrTimeout(t)
	b.m.workerSweeper.TestSignals.Swept.WaitOrTimeout(t)
	b.m.masterSweeper.TestSignals.Swept.WaitOrTimeout(t)
	b.m.timeouts.TestSignals.Swept.WaitOrTimeout(t)
	b.m.pruner.TestSignals.Pruned.WaitOrTimeout(t)
	// A dispatch NOTIFY (a failover queued tasks) wakes the dispatcher long before
	// its hour-long poll. (A submit wakes the group's workers, which claim directly.)
	id, err := submit.Submit(b.ctx, b.pool, submit.Spec{Group: "g", Kind: "noop"})
	if err != nil {
		t.Fatal(err)
	}
	b.exec("SELECT pg_notify('baton_dispatch', '')")
	for n := 0; n == 0; {
		n = b.m.dispatcher.TestSignals.Dispatched.WaitOrTimeout(t)
	}
	if n := b.int64("SELECT count(*) FROM tasks WHERE id = $1 AND state = 'dispatched' AND worker_session_id = $2", id, s); n != 1 {
		t.Fatal("task not dispatched")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if n := b.int64("SELECT count(*) FROM master_sessions WHERE id = $1 AND state = 'stopped'", b.m.SessionID()); n != 1 {
		t.Fatal("master session not marked stopped")
	}
}

// The pruner uses the master's retention and clock; RetentionForever runs none.
func TestPrunerUsesRetentionAndClock(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{Retention: 48 * time.Hour})
	b.exec("INSERT INTO worker_groups (name) VALUES ('g')")
	id := b.int64("INSERT INTO tasks (group_name, kind, state, finished_at) VALUES ('g', 'noop', 'succeeded', now() - interval '1 day') RETURNING id")
	if res, err := b.m.pruner.runOnce(b.within()); err != nil || res.Tasks != 0 {
		t.Fatalf("within retention: %+v, %v", res, err)
	}
	b.clock.StubNow(time.Now().Add(48 * time.Hour))
	if res, err := b.m.pruner.runOnce(b.within()); err != nil || res.Tasks != 1 || !res.Done {
		t.Fatalf("past retention: %+v, %v", res, err)
	}
	if n := b.int64("SELECT count(*) FROM tasks WHERE id = $1", id); n != 0 {
		t.Fatal("task not pruned")
	}
	if keep := setup(t, Config{Retention: RetentionForever}); keep.m.pruner != nil {
		t.Fatal("RetentionForever still runs a pruner")
	}
}

// Crash detection through the sweeper: a session that promised a liveness lock,
// whose lock is free and whose heartbeat is 3 s old, is failed over by the next
// pass (default CrashDetectAfter 1.5 s), without waiting the 5 s timeout; with
// crash detection off it is not.
func TestSweeperCrashDetection(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name  string
		after time.Duration
		want  int
	}{{"default", 0, 1}, {"off", CrashDetectOff, 0}} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, Config{CrashDetectAfter: c.after})
			// The sweep judges liveness at the injected clock: the crashed
			// session's heartbeat (hb) is 3 s old at it, the healthy one's fresh,
			// however long the steps take on a loaded machine.
			var hb time.Time
			if err := b.pool.QueryRow(b.ctx, "SELECT now()").Scan(&hb); err != nil {
				t.Fatal(err)
			}
			now := hb.Add(3 * time.Second)
			b.clock.StubNow(now)
			long := now.Add(-time.Hour)
			b.m.postmasterStart = &long // the shared test server may have restarted recently
			b.exec("INSERT INTO worker_groups (name) VALUES ('g')")
			b.exec("UPDATE worker_sessions SET last_heartbeat_at = $1 WHERE id = $2", now, b.session("g", 2, 0))
			s := b.int64(`INSERT INTO worker_sessions (name, group_name, slots, last_heartbeat_at, liveness_lock)
				VALUES ('w', 'g', 2, $1, true) RETURNING id`, hb)
			b.running("g", s, 0, time.Minute)
			res, err := b.m.workerSweeper.runOnce(b.within())
			if err != nil || res.Crashes != c.want || res.FailedOver != c.want || res.Reassigned != c.want {
				t.Fatalf("sweep = %+v, %v; want %d crash failovers", res, err, c.want)
			}
		})
	}
}

// A dead session with more tasks than one failover transaction moves is moved
// completely by one sweep, in several transactions.
func TestSweeperMovesLargeSessionInPasses(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{})
	b.m.failoverBatch, b.m.failoverMaxBatches = 5, 2
	b.exec("INSERT INTO worker_groups (name) VALUES ('g')")
	dead := b.session("g", 100, time.Hour)
	b.session("g", 100, 0)
	for range 25 {
		b.running("g", dead, 0, time.Minute)
	}
	res, err := b.m.workerSweeper.runOnce(b.within())
	if err != nil || res.FailedOver != 1 || res.Reassigned != 25 {
		t.Fatalf("sweep = %+v, %v; want 25 reassigned", res, err)
	}
	if n := b.int64("SELECT count(*) FROM failover_events WHERE session_id = $1 AND passes = 3 AND finished_at IS NOT NULL", dead); n != 1 {
		t.Fatal("failover not finished in three passes")
	}
}

// The worker sweeper runs every sixth of the crash-detection age when that is
// shorter than the sweep interval (250 ms at the defaults), so a crash is acted on
// soon after it becomes detectable; with crash detection off, every SweepInterval.
func TestWorkerSweepIntervalFollowsCrashDetection(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		after, want time.Duration
	}{{0, 250 * time.Millisecond}, {CrashDetectOff, SweepIntervalDefault}, {12 * time.Second, SweepIntervalDefault}} {
		b := setup(t, Config{CrashDetectAfter: c.after})
		if got := b.m.workerSweeper.interval(); got != c.want {
			t.Errorf("crash detect %s: sweep every %s, want %s", c.after, got, c.want)
		}
	}
}

// The dispatcher leaves tasks to the workers that claim them for DispatchMinWait:
// a task queued just now is not placed; one that waited is.
func TestDispatcherWaitsForWorkersFirst(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{DispatchMinWait: time.Hour})
	b.exec("INSERT INTO worker_groups (name) VALUES ('g')")
	s := b.session("g", 2, 0)
	fresh, err := submit.Submit(b.ctx, b.pool, submit.Spec{Group: "g", Kind: "noop"})
	if err != nil {
		t.Fatal(err)
	}
	old, err := submit.Submit(b.ctx, b.pool, submit.Spec{Group: "g", Kind: "noop"})
	if err != nil {
		t.Fatal(err)
	}
	b.exec("UPDATE tasks SET available_at = now() - interval '2 hours' WHERE id = $1", old)
	if n, err := b.m.dispatcher.runOnce(b.within()); err != nil || n != 1 {
		t.Fatalf("dispatched %d, %v; want 1 (the task that waited)", n, err)
	}
	if n := b.int64("SELECT count(*) FROM tasks WHERE id = $1 AND state = 'dispatched' AND worker_session_id = $2", old, s); n != 1 {
		t.Fatal("the task that waited was not dispatched")
	}
	if n := b.int64("SELECT count(*) FROM tasks WHERE id = $1 AND state = 'queued'", fresh); n != 1 {
		t.Fatal("a fresh task was dispatched: the master raced the workers' own claims")
	}
}
