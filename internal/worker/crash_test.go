package worker_test

import (
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/baton-scheduler/baton/batontest"
	"github.com/baton-scheduler/baton/internal/apimodel"
	"github.com/baton-scheduler/baton/internal/executor"
	"github.com/baton-scheduler/baton/internal/master"
	"github.com/baton-scheduler/baton/internal/worker"
)

// Crash-detection timings: the master's heartbeat timeout is long, so a session
// declared dead well before it was declared by crash detection.
const (
	crashTimeout = 6 * time.Second // master worker timeout
	crashDetect  = time.Second     // master and worker --crash-detect-after
	crashFence   = 700 * time.Millisecond
	crashSelf    = 5 * time.Second // worker self-fence (heartbeat path)
)

func (b *bundle) crashMaster() { b.crashMasterWith(crashDetect) }

func (b *bundle) crashMasterWith(detect time.Duration) {
	m, err := master.New(b.ctx, master.Config{DatabaseURL: b.dsn, HeartbeatInterval: hb, WorkerTimeout: crashTimeout,
		CrashDetectAfter: detect, SweepInterval: hb, DispatchInterval: 50 * time.Millisecond,
		Logger: zaptest.NewLogger(b.t).Named("m")})
	if err != nil {
		b.t.Fatal(err)
	}
	run(b.t, m.Run)
}

func (b *bundle) crashWorker(dsn, name string, bl *blocker) *worker.Worker {
	return b.crashWorkerWith(dsn, name, bl, crashDetect, crashFence)
}

func (b *bundle) crashWorkerWith(dsn, name string, bl *blocker, detect, fence time.Duration) *worker.Worker {
	w, _ := b.workerWith(worker.Config{DatabaseURL: dsn, Name: name, SelfFenceAfter: crashSelf,
		CrashDetectAfter: detect, CrashFenceAfter: fence,
		Handlers: map[string]executor.Handler{"block": bl.handler},
		Test:     worker.TestConfig{HeartbeatCallTimeout: time.Minute}})
	return w
}

// deadSession waits until the session is dead and returns how long after its last
// heartbeat it was declared (Postgres time) and when.
func (b *bundle) deadSession(id int64, within time.Duration) (time.Duration, time.Time) {
	b.t.Helper()
	batontest.WaitFor(b.t, within, func() (bool, string) {
		return b.int64("SELECT count(*) FROM worker_sessions WHERE id = $1 AND state = 'dead'", id) == 1, "session declared dead"
	})
	var age time.Duration
	var ended time.Time
	if err := b.pool.QueryRow(b.ctx, "SELECT ended_at - last_heartbeat_at, ended_at FROM worker_sessions WHERE id = $1", id).Scan(&age, &ended); err != nil {
		b.t.Fatal(err)
	}
	return age, ended
}

// declaredBy returns how the session's failover marker says it was declared dead
// (apimodel.DeclaredBy). The marker commits with the declaration, so after
// deadSession it is there.
func (b *bundle) declaredBy(id int64) string {
	b.t.Helper()
	var crash *bool
	if err := b.pool.QueryRow(b.ctx, "SELECT crash_detected FROM failover_events WHERE kind = 'worker' AND session_id = $1", id).Scan(&crash); err != nil {
		b.t.Fatalf("failover marker of session %d: %v", id, err)
	}
	return apimodel.DeclaredBy(crash)
}

// A worker that holds its liveness lock and loses every connection at once (a
// reset partition; to the masters the same as a crashed process: the lock is
// free, the heartbeat stops) is declared dead by crash detection, soon after
// --crash-detect-after and long before the heartbeat timeout — and the worker,
// which saw its lock connection fail, fenced itself (crash fence) before that
// declaration. The task then runs again elsewhere, after the kill: no overlap.
func TestResetPartitionFencesBeforeFastDeclaration(t *testing.T) {
	t.Parallel()
	b := setup(t)
	proxy, viaProxy := batontest.NewProxy(t, b.dsn)
	defer proxy.Restore()
	b.crashMaster()
	bl := newBlocker()
	w := b.crashWorker(viaProxy, "reset", bl)
	first := w.SessionID()
	w.TestSignals.Liveness.Promised.WaitOrTimeout(t)
	if n := b.int64("SELECT count(*) FROM worker_sessions WHERE id = $1 AND liveness_lock", first); n != 1 {
		t.Fatal("liveness lock not promised")
	}
	id := b.submit("block", map[string]string{}, 1)[0]
	if got := <-bl.started; got != id {
		t.Fatalf("started task %d, want %d", got, id)
	}

	proxy.Cut()
	w.TestSignals.Liveness.Lost.WaitOrTimeout(t)
	fence := w.TestSignals.Heartbeat.Fenced.WaitOrTimeout(t)
	// The crash fence, never early; that it came in time is the recorded order
	// below (the kill before the fast deadline), not a wall-clock budget.
	if !fence.LockLost || fence.SinceLastOK < crashFence {
		t.Fatalf("fence %+v: not the crash fence after %s", fence, crashFence)
	}
	var canceledAt time.Time
	select {
	case canceledAt = <-bl.canceled:
	case <-time.After(10 * time.Second):
		t.Fatal("task not canceled after the fence")
	}
	age, deadline := b.deadSession(first, 30*time.Second)
	if by := b.declaredBy(first); by != "crash detection" {
		t.Fatalf("declared dead %s after its last heartbeat by %s, not crash detection", age, by)
	}
	if !canceledAt.Before(deadline) {
		t.Fatalf("task canceled at %s, not before the fast failover deadline %s", canceledAt, deadline)
	}
	t.Logf("crash fence after %s; declared dead %s after the last heartbeat; kill %s before the deadline",
		fence.SinceLastOK.Round(time.Millisecond), age.Round(time.Millisecond), deadline.Sub(canceledAt).Round(time.Millisecond))

	b.crashWorker(b.dsn, "healthy", bl)
	var reranAt time.Time
	select {
	case reranAt = <-bl.reran:
	case <-time.After(30 * time.Second):
		t.Fatal("task did not run again on the healthy worker")
	}
	if !reranAt.After(canceledAt) {
		t.Fatalf("attempt 2 started at %s, before attempt 1 was canceled at %s", reranAt, canceledAt)
	}
}

// A silent partition (packets dropped) leaves the lock held server-side: no fast
// declaration. The worker keeps the heartbeat path — it fences after
// SelfFenceAfter, not the crash fence — and the master declares it dead only at
// the heartbeat timeout, after the kill.
func TestSilentPartitionKeepsHeartbeatPath(t *testing.T) {
	t.Parallel()
	b := setup(t)
	proxy, viaProxy := batontest.NewProxy(t, b.dsn)
	defer proxy.Restore()
	b.crashMaster()
	bl := newBlocker()
	w := b.crashWorker(viaProxy, "stalled", bl)
	first := w.SessionID()
	w.TestSignals.Liveness.Promised.WaitOrTimeout(t)
	id := b.submit("block", map[string]string{}, 1)[0]
	if got := <-bl.started; got != id {
		t.Fatalf("started task %d, want %d", got, id)
	}

	proxy.Stall()
	fence := w.TestSignals.Heartbeat.Fenced.WaitOrTimeout(t, 30*time.Second)
	if fence.LockLost || fence.SinceLastOK < crashSelf {
		t.Fatalf("fence %+v: want the heartbeat path's fence after %s", fence, crashSelf)
	}
	canceledAt := <-bl.canceled
	age, deadline := b.deadSession(first, 30*time.Second)
	if age < crashTimeout {
		t.Fatalf("declared dead %s after its last heartbeat, before the timeout %s: a fast declaration", age, crashTimeout)
	}
	if by := b.declaredBy(first); by != "heartbeat timeout" {
		t.Fatalf("declared dead by %s, want the heartbeat timeout", by)
	}
	if !canceledAt.Before(deadline) {
		t.Fatalf("task canceled at %s, not before the failover deadline %s", canceledAt, deadline)
	}
}

// A worker whose lock connection alone is reset (an operator's
// pg_terminate_backend; the heartbeat still succeeds) takes the lock again on a
// new connection and is never declared dead: its heartbeat is fresh.
//
// Until the lock is retaken the crash fence applies, so a heartbeat slower than
// the fence then fences the session, rightly. CI's loaded machine once had one
// take 700 ms, the fence of the other tests; this one uses longer timings so
// that only a stall of seconds inside that short window could fence it.
func TestLivenessLockRetaken(t *testing.T) {
	t.Parallel()
	const detect, fence = 5 * time.Second, 4 * time.Second
	b := setup(t)
	b.crashMasterWith(detect)
	bl := newBlocker()
	w := b.crashWorkerWith(b.dsn, "retake", bl, detect, fence)
	w.TestSignals.Liveness.Promised.WaitOrTimeout(t)
	pid := w.TestSignals.Liveness.Held.WaitOrTimeout(t)
	if n := b.int64("SELECT count(*) FROM (SELECT pg_terminate_backend($1::int)) x", pid); n != 1 {
		t.Fatal("terminate")
	}
	w.TestSignals.Liveness.Lost.WaitOrTimeout(t)
	// A new connection: under heavy load its authentication alone took seconds.
	if again := w.TestSignals.Liveness.Held.WaitOrTimeout(t, 30*time.Second); again == pid {
		t.Fatalf("lock retaken on the terminated backend %d", pid)
	}
	// Seconds later the session is still alive, never fenced.
	for range int(3 * time.Second / hb) {
		w.TestSignals.Heartbeat.Beat.WaitOrTimeout(t)
	}
	w.TestSignals.Heartbeat.Fenced.RequireEmpty(t)
	if s := w.Sessions(); len(s) != 1 {
		t.Fatalf("sessions = %v", s)
	}
	if n := b.int64("SELECT count(*) FROM worker_sessions WHERE state = 'dead'"); n != 0 {
		t.Fatal("a session was declared dead")
	}
}

// With crash detection off the worker promises nothing.
func TestCrashDetectOffPromisesNothing(t *testing.T) {
	t.Parallel()
	b := setup(t)
	w, _ := b.workerWith(worker.Config{DatabaseURL: b.dsn, Name: "off", CrashDetectAfter: worker.CrashDetectOff})
	for range 3 {
		w.TestSignals.Heartbeat.Beat.WaitOrTimeout(t)
	}
	w.TestSignals.Liveness.Held.RequireEmpty(t)
	if n := b.int64("SELECT count(*) FROM worker_sessions WHERE liveness_lock"); n != 0 {
		t.Fatal("liveness lock promised with crash detection off")
	}
}

// The healthy path needs no master: workers claim submitted tasks of their group
// straight from the queue and run them.
func TestRunsWithoutMaster(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.workerWith(worker.Config{DatabaseURL: b.dsn, Name: "alone"})
	b.workerWith(worker.Config{DatabaseURL: b.dsn, Name: "alone-2"})
	b.submit("echo", map[string]string{"x": "y"}, 20)
	b.waitAllFinished(30 * time.Second)
	if n := b.int64("SELECT count(*) FROM tasks WHERE state = 'succeeded' AND attempt = 1"); n != 20 {
		t.Fatalf("succeeded on attempt 1 = %d, want 20", n)
	}
	if n := b.int64("SELECT count(*) FROM master_sessions"); n != 0 {
		t.Fatal("a master ran")
	}
}

// A worker claims nothing before it holds its liveness lock: a shell task started
// earlier would hold no lock socket, so its supervisor would have to enforce the
// crash fence for the task's whole life and kill it on one slow heartbeat (an e2e
// worker under load lost its first four tasks so). Here a master's probe (the
// test) holds the locks of the next sessions: the worker registers and
// heartbeats, but starts the queued task only once the lock is free and taken.
func TestClaimsOnlyOnceLivenessLockHeld(t *testing.T) {
	t.Parallel()
	b := setup(t)
	probe, err := b.pool.Acquire(b.ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer probe.Release()
	next := b.int64("SELECT COALESCE(max(id), 0) + 1 FROM worker_sessions")
	if _, err := probe.Exec(b.ctx, `SELECT pg_advisory_lock(1650524164, hashtext(format('%s', id)))
		FROM generate_series($1::bigint, $1::bigint + 9) id`, next); err != nil {
		t.Fatal(err)
	}
	bl := newBlocker()
	w := b.crashWorker(b.dsn, "unarmed", bl)
	if s := w.SessionID(); s < next || s > next+9 {
		t.Fatalf("session %d outside the locked ids %d..%d", s, next, next+9)
	}
	id := b.submit("block", map[string]string{}, 1)[0]
	for range 5 {
		w.TestSignals.Heartbeat.Beat.WaitOrTimeout(t)
	}
	select {
	case got := <-bl.started:
		t.Fatalf("task %d started before the worker held its liveness lock", got)
	default:
	}
	w.TestSignals.Liveness.Held.RequireEmpty(t)

	if _, err := probe.Exec(b.ctx, "SELECT pg_advisory_unlock_all()"); err != nil {
		t.Fatal(err)
	}
	w.TestSignals.Liveness.Held.WaitOrTimeout(t)
	select {
	case got := <-bl.started:
		if got != id {
			t.Fatalf("started task %d, want %d", got, id)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("task not started once the liveness lock was held")
	}
}
