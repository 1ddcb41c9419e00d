package claimer_test

import (
	"context"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/baton-scheduler/baton/batontest"
	"github.com/baton-scheduler/baton/internal/claimer"
	"github.com/baton-scheduler/baton/internal/completer"
	"github.com/baton-scheduler/baton/internal/executor"
	"github.com/baton-scheduler/baton/internal/service"
)

// Claim order and dispatch order agree: whether a master placed a task on the
// session (dispatched — the dispatcher's fallback, or a failover) or it waits in
// the group's queue, the worker starts tasks by priority, then submission. Here a
// newer task the dispatcher placed on the session before its worker died (N) must
// not start before older tasks of the same priority that the failover then put
// back in the queue (O1) or placed on this session after it (O2); a newer task of
// higher priority (H) goes first. One slot, so the start order is the claim order.
func TestClaimOrderAgreesWithDispatchOrder(t *testing.T) {
	t.Parallel()
	pool, _ := srv.NewPool(t)
	ctx := context.Background()
	q := func(sql string, args ...any) int64 { t.Helper(); return batontest.Int64(t, pool, sql, args...) }
	session := q(`WITH g AS (INSERT INTO worker_groups (name) VALUES ('g') RETURNING name)
		INSERT INTO worker_sessions (name, group_name, slots) SELECT 'w', name, 1 FROM g RETURNING id`)
	queued := func(priority int) int64 {
		return q("INSERT INTO tasks (group_name, kind, priority) VALUES ('g', 'echo', $1) RETURNING id", priority)
	}
	// Place a queued task on the session, as DispatchAssign does (attempt + 1,
	// dispatch row); the dispatch row ids follow the order of placement.
	place := func(id int64, reason string) {
		q(`WITH t AS (UPDATE tasks SET state = 'dispatched', attempt = attempt + 1, worker_session_id = $1,
				attempt_session_id = $1, attempt_reason = $3, dispatched_at = now()
			WHERE id = $2 RETURNING id, attempt, priority)
			INSERT INTO dispatch_queue (task_id, attempt, group_name, target_session_id, priority, reason)
			SELECT id, attempt, 'g', $1, priority, $3 FROM t RETURNING task_id`, session, id, reason)
	}
	o1, o2, n := queued(0), queued(0), queued(0)
	place(n, "submit")    // the dispatcher's fallback placed the newest first
	place(o2, "failover") // then a failover placed an older one here
	h := queued(5)        // o1 stays queued (no slot was free for it)

	results := completer.New(service.NewBase("completer", zaptest.NewLogger(t), nil), pool, completer.Config{})
	_ = results.Start(ctx)
	t.Cleanup(results.Stop)
	c := claimer.New(service.NewBase("claimer", zaptest.NewLogger(t), nil), pool, claimer.Config{
		SessionID: session, Group: "g", Worker: "w", Slots: 1, PollInterval: 20 * time.Millisecond,
		Exec:    &executor.Executor{Handlers: map[string]executor.Handler{"echo": func(context.Context, executor.Task) (string, error) { return "ok", nil }}},
		Results: results,
	})
	c.TestSignals.Started.Init(t)
	t.Cleanup(c.Stop)
	_ = c.Start(ctx)
	want := []int64{h, o1, o2, n}
	var got []int64
	for range want {
		got = append(got, c.TestSignals.Started.WaitOrTimeout(t, 30*time.Second).TaskID)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("start order %v, want %v (H=%d O1=%d O2=%d N=%d)", got, want, h, o1, o2, n)
		}
	}
}
