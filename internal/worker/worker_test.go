package worker_test

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap/zaptest"

	"github.com/baton-scheduler/baton/batontest"
	"github.com/baton-scheduler/baton/internal/claimer"
	"github.com/baton-scheduler/baton/internal/executor"
	"github.com/baton-scheduler/baton/internal/master"
	"github.com/baton-scheduler/baton/internal/service"
	"github.com/baton-scheduler/baton/internal/submit"
	"github.com/baton-scheduler/baton/internal/worker"
)

var srv *batontest.Server

func TestMain(m *testing.M) {
	os.Exit(batontest.MainNoLeaks(m, func(s *batontest.Server) { srv = s }))
}

// Fast timings so failover happens within a second or two.
const (
	hb            = 100 * time.Millisecond
	selfFence     = 2 * time.Second // heartbeats took over 1.2 s in CI: race-built packages in parallel on 2 cores, each with its Postgres container
	workerTimeout = 3 * time.Second
)

type bundle struct {
	t    *testing.T
	ctx  context.Context
	pool *pgxpool.Pool
	dsn  string
}

func setup(t *testing.T) *bundle {
	pool, dsn := srv.NewPool(t)
	return &bundle{t: t, ctx: context.Background(), pool: pool, dsn: dsn}
}

func (b *bundle) int64(sql string, args ...any) int64 {
	b.t.Helper()
	return batontest.Int64(b.t, b.pool, sql, args...)
}

// run starts fn in a goroutine and stops it (cancel + wait) when the test ends.
func run(t *testing.T, fn func(ctx context.Context) error) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	var once sync.Once
	done := make(chan error, 1)
	go func() { done <- fn(ctx) }()
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func (b *bundle) master() {
	m, err := master.New(b.ctx, master.Config{DatabaseURL: b.dsn, HeartbeatInterval: hb, WorkerTimeout: workerTimeout,
		SweepInterval: hb, DispatchInterval: 50 * time.Millisecond, Logger: zaptest.NewLogger(b.t).Named("m")})
	if err != nil {
		b.t.Fatal(err)
	}
	run(b.t, m.Run)
}

func (b *bundle) worker(dsn, name string, clock *service.Clock) (*worker.Worker, func()) {
	return b.workerWith(worker.Config{DatabaseURL: dsn, Name: name, Clock: clock})
}

// workerWith starts a worker (of group g unless cfg names its groups) with the test timings, for the fields cfg
// leaves zero, and its test signals armed; it returns once the worker registered.
func (b *bundle) workerWith(cfg worker.Config) (*worker.Worker, func()) {
	b.t.Helper()
	if len(cfg.Groups) == 0 {
		cfg.Group = cmp.Or(cfg.Group, "g")
		cfg.Slots = cmp.Or(cfg.Slots, 4)
	}
	cfg.HeartbeatInterval = cmp.Or(cfg.HeartbeatInterval, hb)
	cfg.SelfFenceAfter = cmp.Or(cfg.SelfFenceAfter, selfFence)
	cfg.PollInterval = cmp.Or(cfg.PollInterval, 100*time.Millisecond)
	cfg.ShutdownGrace = cmp.Or(cfg.ShutdownGrace, 200*time.Millisecond)
	handlers := map[string]executor.Handler{
		"echo": func(_ context.Context, t executor.Task) (string, error) { return string(t.Payload), nil },
	}
	for k, h := range cfg.Handlers {
		handlers[k] = h
	}
	cfg.Handlers = handlers
	cfg.AllowShell = true // these tests run shell tasks, as the baton-worker binary does
	cfg.Logger = zaptest.NewLogger(b.t).Named(cfg.Name)
	w, err := worker.New(b.ctx, cfg)
	if err != nil {
		b.t.Fatal(err)
	}
	w.TestSignals.Init(b.t)
	stop := run(b.t, w.Run)
	w.TestSignals.Registered.WaitOrTimeout(b.t)
	return w, stop
}

func (b *bundle) submit(kind string, payload any, n int) []int64 {
	b.t.Helper()
	raw, _ := json.Marshal(payload)
	specs := make([]submit.Spec, n)
	for i := range specs {
		specs[i] = submit.Spec{Group: "g", Kind: kind, Payload: raw}
	}
	ids, err := submit.Many(b.ctx, b.pool, specs)
	if err != nil {
		b.t.Fatal(err)
	}
	return ids
}

func (b *bundle) waitAllFinished(timeout time.Duration) {
	b.t.Helper()
	batontest.WaitFor(b.t, timeout, func() (bool, string) {
		n := b.int64("SELECT count(*) FROM tasks WHERE finished_at IS NULL")
		return n == 0, fmt.Sprintf("%d tasks unfinished", n)
	})
}

func TestRunsShellAndHandlerTasks(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.master()
	w, _ := b.worker(b.dsn, "w1", nil)
	shell := b.submit("shell", map[string]any{"command": `echo "task=$BATON_TASK_ID attempt=$BATON_ATTEMPT session=$BATON_SESSION_ID $GREETING"; echo err >&2`,
		"env": map[string]string{"GREETING": "hello"}}, 3)
	echo := b.submit("echo", map[string]string{"x": "y"}, 3)
	failing := b.submit("shell", map[string]string{"command": "exit 7"}, 1)
	unknown := b.submit("nosuchhandler", map[string]string{}, 1)
	b.waitAllFinished(30 * time.Second)
	for _, id := range shell {
		var out string
		var code int
		if err := b.pool.QueryRow(b.ctx, "SELECT output, exit_code FROM tasks WHERE id = $1 AND state = 'succeeded'", id).Scan(&out, &code); err != nil {
			t.Fatalf("shell task %d: %v", id, err)
		}
		want := fmt.Sprintf("task=%d attempt=1 session=%d hello\nerr\n", id, w.SessionID())
		if out != want || code != 0 {
			t.Fatalf("shell task %d output %q code %d, want %q 0", id, out, code, want)
		}
	}
	for _, id := range echo {
		if n := b.int64(`SELECT count(*) FROM tasks WHERE id = $1 AND state = 'succeeded' AND output = '{"x": "y"}'`, id); n != 1 {
			t.Fatalf("handler task %d did not succeed with its output", id)
		}
	}
	if n := b.int64("SELECT count(*) FROM tasks WHERE id = $1 AND state = 'failed' AND exit_code = 7", failing[0]); n != 1 {
		t.Fatal("failing shell task not recorded failed with exit code 7")
	}
	if n := b.int64("SELECT count(*) FROM tasks WHERE id = $1 AND state = 'failed' AND last_error LIKE 'no handler registered for kind%'", unknown[0]); n != 1 {
		t.Fatal("unknown kind not failed with a clear error")
	}
}

func TestOutputIsBounded(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.master()
	b.worker(b.dsn, "w1", nil)
	id := b.submit("shell", map[string]string{"command": "head -c 200000 /dev/zero | tr '\\0' a"}, 1)[0]
	b.waitAllFinished(30 * time.Second)
	var out string
	if err := b.pool.QueryRow(b.ctx, "SELECT output FROM tasks WHERE id = $1", id).Scan(&out); err != nil {
		t.Fatal(err)
	}
	if len(out) > executor.DefaultMaxOutput+100 || !strings.HasSuffix(out, "[output truncated at 65536 bytes]") {
		t.Fatalf("output of %d bytes not bounded", len(out))
	}
}

// Cut a worker off from Postgres while its process runs: it kills its running task
// before any master can declare it dead, the task runs again on a healthy worker,
// and when the network is back the worker serves under a new session.
func TestSelfFenceOnPartition(t *testing.T) {
	t.Parallel()
	b := setup(t)
	proxy, viaProxy := batontest.NewProxy(t, b.dsn)
	dir := t.TempDir()
	b.master()
	cut, _ := b.worker(viaProxy, "partitioned", nil)
	first := cut.SessionID()

	// Attempt 1 records, every 20 ms, that it is still alive (its side effect: a
	// line of host time in ns); the check compares the last line with the
	// declared deadline (the row's ended_at, same host clock) — the recorded
	// events, not a sample of both taken every so often.
	ticks := filepath.Join(dir, "ticks")
	cmd := fmt.Sprintf(`if [ "$BATON_ATTEMPT" = 1 ]; then echo $$ > %s/pid; while :; do date +%%s%%N >> %s; sleep 0.02; done; fi; echo ran on $BATON_SESSION_ID`,
		dir, ticks)
	id := b.submit("shell", map[string]string{"command": cmd}, 1)[0]
	var pid int
	batontest.WaitFor(t, 20*time.Second, func() (bool, string) {
		raw, err := os.ReadFile(filepath.Join(dir, "pid"))
		if err == nil {
			pid, err = strconv.Atoi(strings.TrimSpace(string(raw)))
		}
		return err == nil && pid > 0, "task started on the partitioned worker"
	})
	if n := b.int64("SELECT count(*) FROM tasks WHERE id = $1 AND worker_session_id = $2", id, first); n != 1 {
		t.Fatal("task not on the partitioned worker")
	}
	healthy, _ := b.worker(b.dsn, "healthy", nil)
	proxy.Cut()

	// The task's process must die (self-fence) before the session is declared
	// dead: its last tick precedes the deadline.
	batontest.WaitFor(t, 30*time.Second, func() (bool, string) {
		dead := b.int64("SELECT count(*) FROM worker_sessions WHERE id = $1 AND state = 'dead'", first) == 1
		return dead, "session not declared dead"
	})
	var deadline time.Time
	if err := b.pool.QueryRow(b.ctx, "SELECT ended_at FROM worker_sessions WHERE id = $1", first).Scan(&deadline); err != nil {
		t.Fatal(err)
	}
	batontest.WaitFor(t, 30*time.Second, func() (bool, string) {
		return syscall.Kill(pid, 0) != nil, fmt.Sprintf("task process %d still runs", pid)
	})
	raw, err := os.ReadFile(ticks)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Fields(string(raw))
	if len(lines) == 0 {
		t.Fatal("the task recorded no tick")
	}
	ns, err := strconv.ParseInt(lines[len(lines)-1], 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	if last := time.Unix(0, ns); !last.Before(deadline) {
		t.Fatalf("session %d declared dead at %s, but its task was still running at %s: no self-fence before the deadline",
			first, deadline.Format("15:04:05.000"), last.Format("15:04:05.000"))
	} else {
		t.Logf("last tick of the partitioned attempt %s before the deadline", deadline.Sub(last).Round(time.Millisecond))
	}
	b.waitAllFinished(30 * time.Second)
	// Attempt 2 on the healthy worker, unless load cost that worker its session
	// too (CI, 2 cores): then a later attempt, on any session but the cut one.
	var out string
	var attempt int64
	if err := b.pool.QueryRow(b.ctx, "SELECT output, attempt FROM tasks WHERE id = $1 AND state = 'succeeded' AND attempt >= 2", id).Scan(&out, &attempt); err != nil {
		t.Fatalf("task did not succeed on a later attempt: %v", err)
	}
	if want := fmt.Sprintf("ran on %d\n", healthy.SessionID()); attempt == 2 && out != want {
		t.Fatalf("output %q, want %q", out, want)
	} else if out == fmt.Sprintf("ran on %d\n", first) {
		t.Fatalf("attempt %d ran on the cut session %d", attempt, first)
	}
	if n := b.int64("SELECT count(*) FROM task_attempts WHERE task_id = $1 AND attempt = 1 AND outcome = 'failed_over'", id); n != 1 {
		t.Fatal("partitioned attempt not closed as failed_over")
	}

	proxy.Restore()
	batontest.WaitFor(t, 30*time.Second, func() (bool, string) {
		s := cut.Sessions()
		return len(s) == 2, fmt.Sprintf("sessions of the partitioned worker: %v", s)
	})
	second := cut.Sessions()[1]
	batontest.WaitFor(t, 10*time.Second, func() (bool, string) {
		return b.int64("SELECT count(*) FROM worker_sessions WHERE id = $1 AND state = 'alive'", second) == 1, "new session alive"
	})
	if n := b.int64("SELECT count(*) FROM failover_events WHERE session_id = $1", first); n != 1 {
		t.Fatalf("failover events for the partitioned session = %d, want 1", n)
	}
}

// The worker's clock jumps an hour ahead and then an hour back while it works: the
// self-fence runs on the monotonic clock, so neither jump fences the worker, and
// no master fails it over (liveness is judged by Postgres time). A fence that
// measured the jumping clock would fire at the first jump (an hour "since" the last
// heartbeat).
func TestClockJumpChangesNothing(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.master()
	clock := service.NewClock()
	w, _ := b.worker(b.dsn, "jumpy", clock)
	b.submit("shell", map[string]string{"command": "sleep 0.05"}, 20)
	// beats waits for n successful heartbeats from now on: n × hb of real time.
	beats := func(n int) {
		for len(w.TestSignals.Heartbeat.Beat.C()) > 0 {
			<-w.TestSignals.Heartbeat.Beat.C()
		}
		for range n {
			if st := w.TestSignals.Heartbeat.Beat.WaitOrTimeout(t); st != "alive" {
				t.Fatalf("heartbeat returned state %q", st)
			}
		}
	}
	beats(2)
	clock.StubNow(time.Now().Add(time.Hour))
	beats(int(2 * selfFence / hb)) // twice the fence, by the monotonic clock
	clock.StubNow(time.Now().Add(-time.Hour))
	beats(int(2 * selfFence / hb))
	clock.Unstub()
	b.waitAllFinished(60 * time.Second)
	w.TestSignals.Heartbeat.Fenced.RequireEmpty(t)
	w.TestSignals.Heartbeat.Lost.RequireEmpty(t)
	if n := b.int64("SELECT count(*) FROM tasks WHERE state = 'succeeded' AND attempt = 1 AND failover_count = 0"); n != 20 {
		t.Fatalf("tasks succeeded on their first attempt = %d, want 20", n)
	}
	if n := b.int64("SELECT count(*) FROM failover_events"); n != 0 {
		t.Fatalf("failover events = %d, want 0", n)
	}
	if s := w.Sessions(); len(s) != 1 {
		t.Fatalf("the worker re-registered: %v", s)
	}
	if n := b.int64("SELECT count(*) FROM worker_sessions WHERE state = 'alive'"); n != 1 {
		t.Fatalf("alive sessions = %d, want 1", n)
	}
}

// Shutdown: running tasks get the grace period, the rest are handed back at once
// (session stopped, not dead; no heartbeat timeout is waited for).
func TestDrainHandsBackAtOnce(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.master()
	leaving, stop := b.worker(b.dsn, "leaving", nil)
	id := b.submit("shell", map[string]string{"command": `if [ "$BATON_ATTEMPT" = 1 ]; then exec sleep 60; fi; echo second`}, 1)[0]
	batontest.WaitFor(t, 20*time.Second, func() (bool, string) {
		return b.int64("SELECT count(*) FROM tasks WHERE id = $1 AND state = 'running'", id) == 1, "task running"
	})
	b.worker(b.dsn, "staying", nil)
	stop()
	if n := b.int64("SELECT count(*) FROM worker_sessions WHERE id = $1 AND state = 'stopped'", leaving.SessionID()); n != 1 {
		t.Fatal("drained session not marked stopped")
	}
	b.waitAllFinished(30 * time.Second)
	if n := b.int64("SELECT count(*) FROM tasks WHERE id = $1 AND state = 'succeeded' AND attempt = 2 AND output = 'second\n'", id); n != 1 {
		t.Fatal("handed-back task did not run again")
	}
	if n := b.int64("SELECT count(*) FROM worker_sessions WHERE state = 'dead'"); n != 0 {
		t.Fatal("a session was declared dead: the hand-back waited for the timeout")
	}
}

// Output that is not valid UTF-8 (binary, NULs, a cut inside a character) is
// stored cleaned and does not hold back other results.
func TestBinaryOutputDoesNotWedgeReporting(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.master()
	b.worker(b.dsn, "w1", nil)
	b.submit("shell", map[string]string{"command": `printf 'x'; head -c 70000 /dev/zero | tr '\0' 'A' | sed 's/A/\xc3\xa9/g'; printf '\377\000'`}, 1)
	b.submit("shell", map[string]string{"command": "echo ok"}, 3)
	b.waitAllFinished(30 * time.Second)
	if n := b.int64("SELECT count(*) FROM tasks WHERE state = 'succeeded'"); n != 4 {
		t.Fatalf("succeeded = %d, want 4", n)
	}
}

// A claim that commits while its reply is lost leaves attempts running on the
// session that nobody runs. After a failed claim the worker reconciles: it finds
// them, abandons the session (masters hand the tasks back at once) and carries on
// under a new session.
func TestLostClaimReplyIsReconciled(t *testing.T) {
	t.Parallel()
	b := setup(t)
	proxy, viaProxy := batontest.NewProxy(t, b.dsn)
	b.master()
	// Crash detection off: the cut also resets the liveness lock connection, and
	// under load the crash fence could then end the session before it reconciles.
	w, _ := b.workerWith(worker.Config{DatabaseURL: viaProxy, Name: "w", Slots: 2, SelfFenceAfter: 5 * time.Second,
		PollInterval: 50 * time.Millisecond, CrashDetectAfter: worker.CrashDetectOff})
	first := w.SessionID()
	// The orphan: running on this session in Postgres, unknown to the process.
	id := b.submit("shell", map[string]string{"command": "echo recovered"}, 1)[0]
	batontest.WaitFor(t, 10*time.Second, func() (bool, string) {
		return b.int64("SELECT count(*) FROM tasks WHERE id = $1 AND state = 'succeeded'", id) == 1, "warm-up task done"
	})
	orphan := b.int64(`INSERT INTO tasks (group_name, kind, payload, state, attempt, worker_session_id, attempt_session_id, dispatched_at, started_at)
		VALUES ('g', 'shell', '{"command": "echo recovered"}', 'running', 1, $1, $1, now(), now()) RETURNING id`, first)
	// Make claims fail for a moment (shorter than the self-fence).
	proxy.Cut()
	w.TestSignals.Claimer.ClaimFailed.WaitOrTimeout(t)
	proxy.Restore()
	if c := waitReconciled(t, w, first); c.Orphans != 1 {
		t.Fatalf("reconcile found %d orphans, want 1", c.Orphans)
	}
	batontest.WaitFor(t, 30*time.Second, func() (bool, string) {
		// attempt 2, or later if load cost the next session too
		n := b.int64("SELECT count(*) FROM tasks WHERE id = $1 AND state = 'succeeded' AND attempt >= 2", orphan)
		return n == 1, "orphaned task re-run"
	})
	if s := w.Sessions(); len(s) < 2 {
		t.Fatalf("sessions = %v, want a second one after abandoning the first", s)
	}
	if n := b.int64("SELECT count(*) FROM worker_sessions WHERE id = $1 AND state = 'stopped'", first); n != 1 {
		t.Fatal("abandoned session not stopped")
	}
}

// A worker partitioned while it drains still fences itself: its task dies before
// any master declares the session dead (the shutdown grace is longer than that).
func TestSelfFenceWhileDraining(t *testing.T) {
	t.Parallel()
	b := setup(t)
	proxy, viaProxy := batontest.NewProxy(t, b.dsn)
	dir := t.TempDir()
	b.master()
	w, stop := b.workerWith(worker.Config{DatabaseURL: viaProxy, Name: "draining", Slots: 2, ShutdownGrace: time.Minute})
	first := w.SessionID()
	b.submit("shell", map[string]string{"command": fmt.Sprintf(`if [ "$BATON_ATTEMPT" = 1 ]; then echo $$ > %s/pid; exec sleep 60; fi`, dir)}, 1)
	var pid int
	batontest.WaitFor(t, 20*time.Second, func() (bool, string) {
		raw, err := os.ReadFile(filepath.Join(dir, "pid"))
		if err == nil {
			pid, err = strconv.Atoi(strings.TrimSpace(string(raw)))
		}
		return err == nil && pid > 0, "task started"
	})
	b.worker(b.dsn, "healthy", nil)
	proxy.Cut()
	stopped := make(chan struct{})
	go func() { stop(); close(stopped) }() // SIGTERM while cut off
	// The promise: attempt 1's process is gone before any other attempt exists.
	// (Under load the worker may lose session `first` before the cut and drain a
	// later one, so the check is on the task, not on one session's row.)
	batontest.WaitFor(t, 30*time.Second, func() (bool, string) {
		attempt := b.int64("SELECT attempt FROM tasks WHERE id = 1")
		ended := b.int64("SELECT count(*) FROM tasks WHERE id = 1 AND finished_at IS NOT NULL") == 1
		alive := syscall.Kill(pid, 0) == nil // read after the attempt: a live process now was live then
		if attempt > 1 && alive {
			t.Fatalf("task 1 reassigned (attempt %d) while attempt 1 (pid %d) of draining session %d still runs", attempt, pid, first)
		}
		// Attempt 1 is over: reassigned, or (under load the worker may fence
		// itself before the cut and still write the kill as the result) the
		// task ended with it, its process gone.
		return attempt > 1 || (ended && !alive), fmt.Sprintf("attempt=%d, ended=%v, attempt 1 alive=%v", attempt, ended, alive)
	})
	b.waitAllFinished(30 * time.Second)
	<-stopped
}

// waitReconciled returns the first claim result after a failed claim that
// reconciled, and fails the test if the session was lost first (its claimer is
// gone, the next session's never reconciles) or none came within a minute.
func waitReconciled(t *testing.T, w *worker.Worker, session int64) claimer.Claimed {
	t.Helper()
	deadline := time.After(time.Minute)
	for {
		select {
		case c := <-w.TestSignals.Claimer.Claimed.C():
			if c.Reconciled {
				return c
			}
		case err := <-w.TestSignals.Heartbeat.Lost.C():
			for len(w.TestSignals.Claimer.Claimed.C()) > 0 { // a reconcile signaled just before the loss still counts
				if c := <-w.TestSignals.Claimer.Claimed.C(); c.Reconciled {
					return c
				}
			}
			t.Fatalf("session lost before it reconciled: %v", err)
		case <-deadline:
			t.Fatalf("no reconcile within a minute of the failed claim (session %d, sessions now %v)", session, w.Sessions())
		}
	}
}
