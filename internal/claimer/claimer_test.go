package claimer_test

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap/zaptest"

	"github.com/baton-scheduler/baton/batontest"
	"github.com/baton-scheduler/baton/internal/claimer"
	"github.com/baton-scheduler/baton/internal/completer"
	"github.com/baton-scheduler/baton/internal/executor"
	"github.com/baton-scheduler/baton/internal/service"
)

var srv *batontest.Server

func TestMain(m *testing.M) {
	os.Exit(batontest.MainNoLeaks(m, func(s *batontest.Server) { srv = s }))
}

type testBundle struct {
	pool    *pgxpool.Pool
	session int64
	results *completer.Completer
}

func setup(t *testing.T, slots int, handlers map[string]executor.Handler) (*claimer.Claimer, *testBundle) {
	t.Helper()
	pool, _ := srv.NewPool(t)
	b := &testBundle{pool: pool}
	b.session = batontest.Int64(t, pool, `WITH g AS (INSERT INTO worker_groups (name) VALUES ('g') RETURNING name)
		INSERT INTO worker_sessions (name, group_name, slots) SELECT 'w', name, $1 FROM g RETURNING id`, slots)
	b.results = completer.New(service.NewBase("completer", zaptest.NewLogger(t), nil), pool, completer.Config{})
	_ = b.results.Start(context.Background())
	t.Cleanup(b.results.Stop)
	c := claimer.New(service.NewBase("claimer", zaptest.NewLogger(t), nil), pool, claimer.Config{
		SessionID: b.session, Worker: "w", Slots: slots, PollInterval: 20 * time.Millisecond, KillGrace: 100 * time.Millisecond,
		Exec: &executor.Executor{Handlers: handlers}, Results: b.results,
	})
	c.TestSignals.Claimed.Init(t)
	c.TestSignals.ClaimFailed.Init(t)
	c.TestSignals.Started.Init(t)
	c.TestSignals.Settled.Init(t)
	c.TestSignals.Abandoned.Init(t)
	c.TestSignals.LateResult.Init(t)
	t.Cleanup(c.Stop)
	return c, b
}

// dispatched inserts a task dispatched (attempt 1) to the bundle's session.
func (b *testBundle) dispatched(t *testing.T, kind string, timeoutMs int) int64 {
	t.Helper()
	return batontest.Int64(t, b.pool, `WITH t AS (
		INSERT INTO tasks (group_name, kind, state, attempt, worker_session_id, attempt_session_id, dispatched_at, timeout_ms)
		VALUES ('g', $2, 'dispatched', 1, $1, $1, now(), $3) RETURNING id
	)
	INSERT INTO dispatch_queue (task_id, attempt, group_name, target_session_id, reason)
	SELECT id, 1, 'g', $1, 'submit' FROM t RETURNING task_id`, b.session, kind, timeoutMs)
}

// One slot: tasks are claimed one at a time, each when the previous settles.
func TestClaimsIntoFreeSlots(t *testing.T) {
	t.Parallel()
	c, b := setup(t, 1, map[string]executor.Handler{"echo": func(context.Context, executor.Task) (string, error) { return "ok", nil }})
	first, second := b.dispatched(t, "echo", 0), b.dispatched(t, "echo", 0)
	_ = c.Start(context.Background())
	for _, want := range []int64{first, second} {
		if k := c.TestSignals.Started.WaitOrTimeout(t); k.TaskID != want {
			t.Fatalf("started %d, want %d", k.TaskID, want)
		}
		c.TestSignals.Settled.WaitOrTimeout(t)
	}
	if !b.results.WaitIdle(context.Background()) {
		t.Fatal("results not written")
	}
	if n := batontest.Int64(t, b.pool, "SELECT count(*) FROM tasks WHERE state = 'succeeded' AND output = 'ok'"); n != 2 {
		t.Fatalf("succeeded = %d", n)
	}
}

// A killed handler that ignores its context frees its slot after KillGrace; its
// attempt is left to failover (nothing reported), and its late return is dropped.
func TestKilledTaskIgnoringCancellationFreesSlot(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	c, b := setup(t, 2, map[string]executor.Handler{"stubborn": func(context.Context, executor.Task) (string, error) {
		<-release
		return "late", nil
	}})
	id := b.dispatched(t, "stubborn", 0)
	_ = c.Start(context.Background())
	c.TestSignals.Started.WaitOrTimeout(t)
	c.Kill(errors.New("self-fenced"))
	if ab := c.TestSignals.Abandoned.WaitOrTimeout(t); ab.Key.TaskID != id || ab.TimedOut {
		t.Fatalf("abandoned %+v", ab)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if !c.WaitTasks(ctx) || c.Running() != 0 {
		t.Fatal("slot still held")
	}
	close(release)
	c.TestSignals.LateResult.WaitOrTimeout(t)
	if b.results.PendingCount() != 0 {
		t.Fatal("a killed attempt's result was handed to the writer")
	}
	if n := batontest.Int64(t, b.pool, "SELECT count(*) FROM tasks WHERE id = $1 AND state = 'running'", id); n != 1 {
		t.Fatal("killed attempt changed in Postgres; it is for failover to move")
	}
}

// The claimer survives many starts and stops (batontest.StartStopStress checks
// each) and then still claims and runs a task, its slot freed after.
func TestStartStopStress(t *testing.T) {
	t.Parallel()
	c, b := setup(t, 1, map[string]executor.Handler{"echo": func(context.Context, executor.Task) (string, error) { return "ok", nil }})
	batontest.StartStopStress(t, c, func(int) {
		if c.Running() != 0 {
			t.Fatalf("%d slots occupied with no task in the database", c.Running())
		}
	})
	if err := c.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	id := b.dispatched(t, "echo", 0)
	if k := c.TestSignals.Started.WaitOrTimeout(t); k.TaskID != id {
		t.Fatalf("started %+v, want task %d", k, id)
	}
	if k := c.TestSignals.Settled.WaitOrTimeout(t); k.TaskID != id {
		t.Fatalf("settled %+v, want task %d", k, id)
	}
	c.Stop()
	if c.Running() != 0 {
		t.Fatalf("%d slots occupied after Stop", c.Running())
	}
}
