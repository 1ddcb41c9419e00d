package worker_test

import (
	"context"
	"testing"
	"time"

	"github.com/baton-scheduler/baton/batontest"
	"github.com/baton-scheduler/baton/internal/executor"
	"github.com/baton-scheduler/baton/internal/metrics"
	"github.com/baton-scheduler/baton/internal/submit"
	"github.com/baton-scheduler/baton/internal/worker"
)

// blocker is a Go handler that runs until its context ends and reports when that
// happened.
type blocker struct {
	started  chan int64
	canceled chan time.Time
	reran    chan time.Time // when a later attempt started
}

func newBlocker() *blocker {
	return &blocker{started: make(chan int64, 10), canceled: make(chan time.Time, 10), reran: make(chan time.Time, 10)}
}

// handler blocks on attempt 1 and returns at once on later attempts.
func (bl *blocker) handler(ctx context.Context, t executor.Task) (string, error) {
	if t.Attempt > 1 {
		bl.reran <- time.Now()
		return "ran again", nil
	}
	bl.started <- t.ID
	<-ctx.Done()
	bl.canceled <- time.Now()
	return "", ctx.Err()
}

// A silent partition (packets dropped: queries hang instead of failing) must not
// block the self-fence. The heartbeat statement is left hanging (its timeout is a
// minute here), the claim loop's queries hang too, and still the fence fires on
// time and the running task's context is canceled before any master may declare
// the session dead; the task then runs again on a healthy worker, after the kill.
func TestSelfFenceUnderSilentPartition(t *testing.T) {
	t.Parallel()
	b := setup(t)
	proxy, viaProxy := batontest.NewProxy(t, b.dsn)
	defer proxy.Restore() // let the worker stop cleanly at the end
	b.master()
	bl := newBlocker()
	m := metrics.NewWorker("g")
	url := serveMetrics(t, m)
	w, _ := b.workerWith(worker.Config{DatabaseURL: viaProxy, Name: "stalled", Metrics: m,
		Handlers: map[string]executor.Handler{"block": bl.handler},
		Test:     worker.TestConfig{HeartbeatCallTimeout: time.Minute}})
	first := w.SessionID()
	id := b.submit("block", map[string]string{}, 1)[0]
	if got := <-bl.started; got != id {
		t.Fatalf("started task %d, want %d", got, id)
	}

	proxy.Stall()
	fence := w.TestSignals.Heartbeat.Fenced.WaitOrTimeout(t)
	if !fence.HeartbeatInFlight {
		t.Fatalf("fence fired with no heartbeat in flight (%+v): the test did not hang a heartbeat", fence)
	}
	// Never early (a monotonic timer); how late it may be is not a wall-clock
	// budget but the recorded order below: the kill before the deadline.
	if fence.SinceLastOK < selfFence {
		t.Fatalf("fence fired %s after the last heartbeat, before the self-fence time %s", fence.SinceLastOK, selfFence)
	}
	var canceledAt time.Time
	select {
	case canceledAt = <-bl.canceled:
	case <-time.After(10 * time.Second):
		t.Fatal("task not canceled after the fence")
	}
	batontest.WaitFor(t, 10*time.Second, func() (bool, string) {
		got, _ := batontest.Scrape(t, url)
		return got[`baton_worker_self_fences_total{group="g"}`] == 1 &&
			got[`baton_worker_attempts_finished_total{group="g",outcome="killed"}`] == 1, "self-fence and killed attempt counted once"
	})
	// The kill must precede the masters' deadline: compare the recorded moments
	// (the handler's cancellation, the row's ended_at; same host clock), not a
	// budget of how fast either happened.
	batontest.WaitFor(t, 30*time.Second, func() (bool, string) {
		return b.int64("SELECT count(*) FROM worker_sessions WHERE id = $1 AND state = 'dead'", first) == 1, "session declared dead"
	})
	var deadline time.Time
	if err := b.pool.QueryRow(b.ctx, "SELECT ended_at FROM worker_sessions WHERE id = $1", first).Scan(&deadline); err != nil {
		t.Fatal(err)
	}
	if !canceledAt.Before(deadline) {
		t.Fatalf("task canceled at %s, not before the failover deadline %s", canceledAt, deadline)
	}
	t.Logf("fence after %s with a heartbeat hung; task canceled %s before the failover deadline",
		fence.SinceLastOK.Round(time.Millisecond), deadline.Sub(canceledAt).Round(time.Millisecond))
	if n := b.int64("SELECT count(*) FROM task_attempts WHERE task_id = $1 AND attempt = 1 AND outcome = 'failed_over'", id); n != 1 {
		t.Fatal("stalled attempt not failed over")
	}
	b.workerWith(worker.Config{DatabaseURL: b.dsn, Name: "healthy", Handlers: map[string]executor.Handler{"block": bl.handler}})
	var reranAt time.Time
	select {
	case reranAt = <-bl.reran:
	case <-time.After(30 * time.Second):
		t.Fatal("task did not run again on the healthy worker")
	}
	if !reranAt.After(canceledAt) {
		t.Fatalf("attempt 2 started at %s, before attempt 1 was canceled at %s: the attempts overlapped", reranAt, canceledAt)
	}
	b.waitAllFinished(30 * time.Second)
}

// A Go handler that ignores cancellation must not hold its slot forever: after its
// timeout and KillGrace the slot is freed and the attempt reported timed_out by the
// worker; the handler's late result is dropped, nothing is rewritten.
func TestSlotFreedWhenHandlerIgnoresCancellation(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.master()
	release := make(chan struct{})
	returned := make(chan struct{})
	w, _ := b.workerWith(worker.Config{DatabaseURL: b.dsn, Name: "one-slot", Slots: 1, KillGrace: 200 * time.Millisecond,
		Handlers: map[string]executor.Handler{"stubborn": func(context.Context, executor.Task) (string, error) {
			<-release // ignores ctx
			defer close(returned)
			return "late", nil
		}}})
	ids, err := submit.Many(b.ctx, b.pool, []submit.Spec{{Group: "g", Kind: "stubborn", Payload: []byte(`{}`), Timeout: 300 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	stubborn := ids[0]
	ab := w.TestSignals.Claimer.Abandoned.WaitOrTimeout(t)
	if ab.Key.TaskID != stubborn || !ab.TimedOut {
		t.Fatalf("abandoned %+v, want task %d timed out", ab, stubborn)
	}
	// The one slot is free again: the next task runs while the handler still hangs.
	next := b.submit("echo", map[string]string{"n": "1"}, 1)[0]
	batontest.WaitFor(t, 20*time.Second, func() (bool, string) {
		return b.int64("SELECT count(*) FROM tasks WHERE id = $1 AND state = 'succeeded'", next) == 1, "next task succeeded on the freed slot"
	})
	if n := b.int64(`SELECT count(*) FROM task_attempts WHERE task_id = $1 AND attempt = 1 AND outcome = 'timed_out'
		AND error LIKE '%abandoned%'`, stubborn); n != 1 {
		t.Fatal("the worker did not report the abandoned attempt timed_out")
	}
	close(release)
	<-returned
	if k := w.TestSignals.Claimer.LateResult.WaitOrTimeout(t); k.TaskID != stubborn {
		t.Fatalf("late result of %+v", k)
	}
	if n := b.int64("SELECT count(*) FROM task_attempts WHERE outcome = 'fenced' OR refused_at IS NOT NULL"); n != 0 {
		t.Fatal("the late result was written (refused) instead of dropped")
	}
	if n := b.int64(`SELECT count(*) FROM tasks WHERE id = $1 AND state = 'timed_out' AND output IS DISTINCT FROM 'late'`, stubborn); n != 1 {
		t.Fatal("the late result changed the task")
	}
}

// One reset connection must not abandon a healthy session. Results that finished
// but still sit in the completer's buffer are running in Postgres; after a claim
// error the reconcile must count them as this worker's, not as orphaned claims.
func TestBufferedResultsAreNotOrphans(t *testing.T) {
	t.Parallel()
	b := setup(t)
	proxy, viaProxy := batontest.NewProxy(t, b.dsn)
	b.master()
	// Crash detection off: the cut also resets the liveness lock connection, and
	// under load the crash fence could then end the session before it reconciles.
	w, stop := b.workerWith(worker.Config{DatabaseURL: viaProxy, Name: "buffered", SelfFenceAfter: time.Minute,
		PollInterval: 50 * time.Millisecond, CrashDetectAfter: worker.CrashDetectOff,
		// Results stay buffered until the drain flushes them.
		Test: worker.TestConfig{ResultFlushInterval: time.Hour}})
	ids := b.submit("echo", map[string]string{"x": "y"}, 3)
	for range ids {
		w.TestSignals.Completer.Added.WaitOrTimeout(t)
	}
	if n := b.int64("SELECT count(*) FROM tasks WHERE state = 'running'"); n != 3 {
		t.Fatalf("running in Postgres = %d, want the 3 buffered results", n)
	}
	proxy.Cut()
	w.TestSignals.Claimer.ClaimFailed.WaitOrTimeout(t)
	proxy.Restore()
	if c := waitReconciled(t, w, w.SessionID()); c.Orphans != 0 {
		t.Fatalf("reconcile took %d buffered results for orphaned claims", c.Orphans)
	}
	w.TestSignals.Heartbeat.Lost.RequireEmpty(t)
	stop() // the drain flushes the buffer before the session is stopped
	if n := b.int64("SELECT count(*) FROM tasks WHERE state = 'succeeded' AND attempt = 1"); n != 3 {
		t.Fatalf("succeeded on attempt 1 = %d, want 3", n)
	}
	if s := w.Sessions(); len(s) != 1 {
		t.Fatalf("sessions = %v: the session was abandoned", s)
	}
	if n := b.int64("SELECT count(*) FROM failover_events"); n != 0 {
		t.Fatalf("failover events = %d, want 0", n)
	}
}
