package drain_test

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
	"github.com/baton-scheduler/baton/internal/drain"
	"github.com/baton-scheduler/baton/internal/executor"
	"github.com/baton-scheduler/baton/internal/service"
	"github.com/baton-scheduler/baton/internal/session"
)

var srv *batontest.Server

func TestMain(m *testing.M) {
	os.Exit(batontest.MainNoLeaks(m, func(s *batontest.Server) { srv = s }))
}

type testBundle struct {
	pool    *pgxpool.Pool
	session int64
	claimer *claimer.Claimer
	drainer *drain.Drainer
	hbStops int
}

// setup registers a session and runs a claimer whose "wait" tasks run until
// released (or killed) and whose "fast" tasks succeed at once.
func setup(t *testing.T, grace time.Duration, release <-chan struct{}) *testBundle {
	t.Helper()
	pool, _ := srv.NewPool(t)
	log := zaptest.NewLogger(t)
	rows := &session.Rows{Base: service.NewBase("session", log, nil), Pool: pool, Spec: session.Spec{Name: "w", Group: "g", Slots: 2}}
	reg, err := rows.Register(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	b := &testBundle{pool: pool, session: reg.ID}
	results := completer.New(service.NewBase("completer", log, nil), pool, completer.Config{})
	_ = results.Start(context.Background())
	t.Cleanup(results.Stop)
	b.claimer = claimer.New(service.NewBase("claimer", log, nil), pool, claimer.Config{
		SessionID: reg.ID, Worker: "w", Slots: 2, PollInterval: 20 * time.Millisecond, Results: results,
		Exec: &executor.Executor{Handlers: map[string]executor.Handler{
			"wait": func(ctx context.Context, _ executor.Task) (string, error) {
				select {
				case <-release:
					return "done", nil
				case <-ctx.Done():
					return "", ctx.Err()
				}
			},
		}},
	})
	b.claimer.TestSignals.Started.Init(t)
	_ = b.claimer.Start(context.Background())
	t.Cleanup(b.claimer.Stop)
	b.drainer = drain.New(service.NewBase("drain", log, nil), drain.Config{
		SessionID: reg.ID, Grace: grace, Tasks: b.claimer, Results: results, Session: rows,
		StopHeartbeat: func() { b.hbStops++ },
	})
	return b
}

func (b *testBundle) dispatch(t *testing.T, kind string) int64 {
	t.Helper()
	return batontest.Int64(t, b.pool, `WITH t AS (
		INSERT INTO tasks (group_name, kind, state, attempt, worker_session_id, attempt_session_id, dispatched_at)
		VALUES ('g', $2, 'dispatched', 1, $1, $1, now()) RETURNING id
	)
	INSERT INTO dispatch_queue (task_id, attempt, group_name, target_session_id, reason)
	SELECT id, 1, 'g', $1, 'submit' FROM t RETURNING task_id`, b.session, kind)
}

// A task that finishes within the grace is reported before the session stops.
func TestDrainWithinGrace(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	b := setup(t, time.Minute, release)
	id := b.dispatch(t, "wait")
	b.claimer.TestSignals.Started.WaitOrTimeout(t)
	drained := make(chan drain.Drained, 1)
	go func() { drained <- b.drainer.Drain(nil) }()
	batontest.WaitFor(t, 10*time.Second, func() (bool, string) {
		n := batontest.Int64(t, b.pool, "SELECT count(*) FROM worker_sessions WHERE id = $1 AND state = 'draining'", b.session)
		return n == 1, "session draining"
	})
	close(release) // the task finishes during the drain
	d := <-drained
	if d.Killed || !d.Stopped || d.Unwritten != 0 || d.Running != 1 {
		t.Fatalf("drained %+v", d)
	}
	if n := batontest.Int64(t, b.pool, "SELECT count(*) FROM tasks WHERE id = $1 AND state = 'succeeded'", id); n != 1 {
		t.Fatal("result not written before the session stopped")
	}
	if n := batontest.Int64(t, b.pool, "SELECT count(*) FROM worker_sessions WHERE id = $1 AND state = 'stopped'", b.session); n != 1 {
		t.Fatal("session not stopped")
	}
	if b.hbStops != 1 {
		t.Fatalf("heartbeat stopped %d times", b.hbStops)
	}
}

// Past the grace the rest is killed and left for failover (the session stops).
func TestDrainKillsAfterGrace(t *testing.T) {
	t.Parallel()
	b := setup(t, 50*time.Millisecond, nil)
	id := b.dispatch(t, "wait")
	b.claimer.TestSignals.Started.WaitOrTimeout(t)
	d := b.drainer.Drain(nil)
	if !d.Killed || d.LostDuring || !d.Stopped || d.TasksLeft != 0 {
		t.Fatalf("drained %+v", d)
	}
	if n := batontest.Int64(t, b.pool, "SELECT count(*) FROM tasks WHERE id = $1 AND state = 'running'", id); n != 1 {
		t.Fatal("killed attempt was reported; it is for failover to move")
	}
}

// Losing the session during the drain kills at once, however long the grace.
func TestDrainLostSessionKillsAtOnce(t *testing.T) {
	t.Parallel()
	b := setup(t, time.Hour, nil)
	b.dispatch(t, "wait")
	b.claimer.TestSignals.Started.WaitOrTimeout(t)
	lost := make(chan error, 1)
	lost <- errors.New("self-fenced")
	d := b.drainer.Drain(lost)
	if !d.Killed || !d.LostDuring {
		t.Fatalf("drained %+v", d)
	}
}
