package completer_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap/zaptest"

	"github.com/baton-scheduler/baton/batontest"
	"github.com/baton-scheduler/baton/internal/completer"
	"github.com/baton-scheduler/baton/internal/executor"
	"github.com/baton-scheduler/baton/internal/report"
	"github.com/baton-scheduler/baton/internal/service"
)

var srv *batontest.Server

func TestMain(m *testing.M) {
	os.Exit(batontest.MainNoLeaks(m, func(s *batontest.Server) { srv = s }))
}

type testBundle struct {
	pool    *pgxpool.Pool
	session int64
}

func setup(t *testing.T, cfg completer.Config) (*completer.Completer, *testBundle) {
	t.Helper()
	pool, _ := srv.NewPool(t)
	b := &testBundle{pool: pool}
	b.session = batontest.Int64(t, pool, `WITH g AS (INSERT INTO worker_groups (name) VALUES ('g') RETURNING name)
		INSERT INTO worker_sessions (name, group_name, slots) SELECT 'w', name, 8 FROM g RETURNING id`)
	c := completer.New(service.NewBase("completer", zaptest.NewLogger(t), nil), pool, cfg)
	c.TestSignals.Added.Init(t)
	c.TestSignals.Flushed.Init(t)
	c.TestSignals.FlushFailed.Init(t)
	c.TestSignals.BackPressed.Init(t)
	t.Cleanup(c.Stop)
	return c, b
}

// running inserts a task running attempt 1 on the bundle's session and returns its
// successful result.
func (b *testBundle) running(t *testing.T) report.Result {
	t.Helper()
	id := batontest.Int64(t, b.pool, `INSERT INTO tasks (group_name, kind, state, attempt, worker_session_id, attempt_session_id, dispatched_at, started_at)
		VALUES ('g', 'echo', 'running', 1, $1, $1, now(), now()) RETURNING id`, b.session)
	return report.Result{TaskID: id, Attempt: 1, SessionID: b.session, Outcome: executor.OutcomeSucceeded, ExitCode: executor.NoExitCode, Output: "ok"}
}

func (b *testBundle) succeeded(t *testing.T) int64 {
	return batontest.Int64(t, b.pool, "SELECT count(*) FROM tasks WHERE state = 'succeeded'")
}

func TestFlushBySize(t *testing.T) {
	t.Parallel()
	c, b := setup(t, completer.Config{MaxBatch: 3, FlushInterval: time.Hour})
	_ = c.Start(context.Background())
	for range 3 {
		c.Add(context.Background(), b.running(t))
	}
	if f := c.TestSignals.Flushed.WaitOrTimeout(t); f.Written != 3 {
		t.Fatalf("flushed %+v, want 3 written at the size limit", f)
	}
	if n := b.succeeded(t); n != 3 {
		t.Fatalf("succeeded = %d", n)
	}
	if c.PendingCount() != 0 {
		t.Fatal("results still pending after the flush")
	}
}

func TestFlushOnTick(t *testing.T) {
	t.Parallel()
	c, b := setup(t, completer.Config{MaxBatch: 1000, FlushInterval: 20 * time.Millisecond})
	_ = c.Start(context.Background())
	r := b.running(t)
	c.Add(context.Background(), r)
	if !c.Pending()[report.Key{TaskID: r.TaskID, Attempt: 1}] {
		t.Fatal("added result not pending")
	}
	if f := c.TestSignals.Flushed.WaitOrTimeout(t); f.Written != 1 {
		t.Fatalf("flushed %+v", f)
	}
}

// Past the high-water mark Add blocks until the backlog is written, or gives up
// when its context ends.
func TestBackPressure(t *testing.T) {
	t.Parallel()
	c, b := setup(t, completer.Config{HighWater: 2, FlushInterval: time.Millisecond})
	c.Add(context.Background(), b.running(t))
	c.Add(context.Background(), b.running(t))
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	if c.Add(canceled, b.running(t)) {
		t.Fatal("Add past the high-water mark with a canceled context succeeded")
	}
	added := make(chan bool, 1)
	third := b.running(t)
	go func() { added <- c.Add(context.Background(), third) }()
	if n := c.TestSignals.BackPressed.WaitOrTimeout(t); n != 2 {
		t.Fatalf("back-pressed at %d pending", n)
	}
	select {
	case <-added:
		t.Fatal("Add returned while the writer was not running")
	default:
	}
	_ = c.Start(context.Background())
	if !<-added {
		t.Fatal("blocked Add did not go through once the backlog was written")
	}
	if !c.WaitIdle(context.Background()) {
		t.Fatal("not idle")
	}
	if n := b.succeeded(t); n != 3 {
		t.Fatalf("succeeded = %d, want 3", n)
	}
}

// Stop flushes what is buffered under a context of its own.
func TestFinalFlush(t *testing.T) {
	t.Parallel()
	c, b := setup(t, completer.Config{FlushInterval: time.Hour})
	ctx, cancel := context.WithCancel(context.Background())
	_ = c.Start(ctx)
	c.Add(ctx, b.running(t))
	c.Add(ctx, b.running(t))
	cancel() // the parent context ends first, as on shutdown
	c.Stop()
	if n := b.succeeded(t); n != 2 {
		t.Fatalf("succeeded after Stop = %d, want 2", n)
	}
}

// A batch that cannot be written for a lost connection stays buffered and is
// retried; nothing is lost.
func TestRetriesAfterConnectionLoss(t *testing.T) {
	t.Parallel()
	pool, dsn := srv.NewPool(t)
	proxy, viaProxy := batontest.NewProxy(t, dsn)
	proxied, err := pgxpool.New(context.Background(), viaProxy)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(proxied.Close)
	b := &testBundle{pool: pool}
	b.session = batontest.Int64(t, pool, `WITH g AS (INSERT INTO worker_groups (name) VALUES ('g') RETURNING name)
		INSERT INTO worker_sessions (name, group_name, slots) SELECT 'w', name, 8 FROM g RETURNING id`)
	c := completer.New(service.NewBase("completer", zaptest.NewLogger(t), nil), proxied, completer.Config{})
	c.TestSignals.FlushFailed.Init(t)
	c.TestSignals.Flushed.Init(t)
	t.Cleanup(c.Stop)
	_ = c.Start(context.Background())
	proxy.Cut()
	c.Add(context.Background(), b.running(t))
	c.TestSignals.FlushFailed.WaitOrTimeout(t)
	if c.PendingCount() != 1 {
		t.Fatal("failed batch not kept")
	}
	proxy.Restore()
	c.TestSignals.Flushed.WaitOrTimeout(t)
	if n := b.succeeded(t); n != 1 {
		t.Fatalf("succeeded = %d", n)
	}
}

// Many starts and stops (batontest.StartStopStress checks each), with a result
// added in every cycle that no flush is due for: each Stop writes it (the final
// flush), so none is left pending or lost, and the completer still works after.
func TestStartStopStress(t *testing.T) {
	t.Parallel()
	c, b := setup(t, completer.Config{MaxBatch: 1000, FlushInterval: time.Hour})
	added := 0
	batontest.StartStopStress(t, c, func(int) {
		c.Add(context.Background(), b.running(t))
		added++
	})
	if n := b.succeeded(t); n != int64(added) || c.PendingCount() != 0 {
		t.Fatalf("%d of %d results written, %d pending: Stop did not flush", n, added, c.PendingCount())
	}
	if err := c.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	c.Add(context.Background(), b.running(t))
	c.Stop()
	if n := b.succeeded(t); n != int64(added+1) {
		t.Fatalf("%d results written after a restart, want %d", n, added+1)
	}
}
