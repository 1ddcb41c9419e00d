package worker_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/baton-scheduler/baton/batontest"
	"github.com/baton-scheduler/baton/internal/executor"
	"github.com/baton-scheduler/baton/internal/submit"
	"github.com/baton-scheduler/baton/internal/worker"
)

// groupHold is a "hold" handler: an attempt runs until release is closed (then
// succeeds) or its context ends. It records, for the worker named multi, how
// many attempts of each group ran at once (at most) and when each was canceled.
type groupHold struct {
	release chan struct{}

	mu       sync.Mutex
	running  map[string]int
	max      map[string]int
	canceled []time.Time
}

func newGroupHold() *groupHold {
	return &groupHold{release: make(chan struct{}), running: map[string]int{}, max: map[string]int{}}
}

func (h *groupHold) handler(ctx context.Context, t executor.Task) (string, error) {
	var p struct{ G string }
	if err := json.Unmarshal(t.Payload, &p); err != nil {
		return "", err
	}
	multi := t.Worker == "multi"
	if multi {
		h.mu.Lock()
		h.running[p.G]++
		h.max[p.G] = max(h.max[p.G], h.running[p.G])
		h.mu.Unlock()
		defer func() {
			h.mu.Lock()
			h.running[p.G]--
			h.mu.Unlock()
		}()
	}
	select {
	case <-h.release:
		return "done on " + t.Worker, nil
	case <-ctx.Done():
		if multi {
			h.mu.Lock()
			h.canceled = append(h.canceled, time.Now())
			h.mu.Unlock()
		}
		return "", ctx.Err()
	}
}

func (h *groupHold) maxOf(g string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.max[g]
}

func (b *bundle) submitTo(group, kind string, payload any, n int) []int64 {
	b.t.Helper()
	raw, _ := json.Marshal(payload)
	specs := make([]submit.Spec, n)
	for i := range specs {
		specs[i] = submit.Spec{Group: group, Kind: kind, Payload: raw}
	}
	ids, err := submit.Many(b.ctx, b.pool, specs)
	if err != nil {
		b.t.Fatal(err)
	}
	return ids
}

// One worker serves three groups (a: 1 slot, b: 2, c: 3): one session row per
// group with its slots, tasks of every group run on that group's session, no
// group ever runs more attempts at once than its slots. Then the worker is cut
// off (to the masters, a crash: every connection reset): its one liveness
// connection held the locks of all three sessions, so each is declared dead by
// crash detection, after the worker killed every attempt; each group's tasks fail
// over only to a worker of that group — a and b to their helpers, c (no other
// worker) back to the queue, never to the helpers of a, b or z. Reconnected, the
// worker registers three new sessions and runs c's tasks.
func TestOneWorkerServesThreeGroups(t *testing.T) {
	t.Parallel()
	b := setup(t)
	proxy, viaProxy := batontest.NewProxy(t, b.dsn)
	defer proxy.Restore()
	b.crashMaster()
	h := newGroupHold()
	slots := map[string]int{"a": 1, "b": 2, "c": 3}
	crashCfg := func(dsn, name string) worker.Config {
		return worker.Config{DatabaseURL: dsn, Name: name, SelfFenceAfter: crashSelf,
			CrashDetectAfter: crashDetect, CrashFenceAfter: crashFence,
			Handlers: map[string]executor.Handler{"hold": h.handler}}
	}
	cfg := crashCfg(viaProxy, "multi")
	cfg.Groups = []worker.GroupSlots{{Name: "a", Slots: 1}, {Name: "b", Slots: 2}, {Name: "c", Slots: 3}}
	cfg.Test.HeartbeatCallTimeout = time.Minute
	w, _ := b.workerWith(cfg)
	sessions := w.SessionIDs()
	if len(sessions) != 3 {
		t.Fatalf("sessions %v, want one per group", sessions)
	}
	for g, id := range sessions {
		if n := b.int64("SELECT count(*) FROM worker_sessions WHERE id = $1 AND group_name = $2 AND slots = $3 AND state = 'alive' AND name = 'multi'",
			id, g, slots[g]); n != 1 {
			t.Fatalf("session %d of group %s: no alive row with %d slots", id, g, slots[g])
		}
	}
	for range 3 {
		w.TestSignals.Liveness.Promised.WaitOrTimeout(t)
	}
	// One liveness connection (the backend of the Held signal) holds all three
	// sessions' locks.
	held := w.TestSignals.Liveness.Held.WaitOrTimeout(t)
	for g, id := range sessions {
		if n := b.int64(`SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid = $1
			AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
			AND classid = 1650524164 AND objid::bigint = (hashtext(format('%s', $2::bigint))::bigint & 4294967295)`, held, id); n != 1 {
			t.Fatalf("liveness lock of session %d (group %s) not held by the liveness connection (backend %d)", id, g, held)
		}
	}
	if n := b.int64("SELECT count(*) FROM worker_sessions WHERE name = 'multi' AND liveness_lock"); n != 3 {
		t.Fatalf("liveness locks promised = %d, want 3", n)
	}

	// Every group's tasks run, each on that group's session.
	for g := range slots {
		b.submitTo(g, "echo", map[string]string{"g": g}, 2)
	}
	b.waitAllFinished(30 * time.Second)
	for g, id := range sessions {
		if n := b.int64("SELECT count(*) FROM task_attempts a JOIN tasks t ON t.id = a.task_id WHERE t.group_name = $1 AND t.state = 'succeeded' AND a.worker_session_id = $2",
			g, id); n != 2 {
			t.Fatalf("group %s: %d tasks succeeded on session %d, want 2", g, n, id)
		}
	}

	// Per-group slots: slots+2 held tasks per group; each group fills its slots
	// and no more, the rest waits queued.
	for g := range slots {
		b.submitTo(g, "hold", map[string]string{"g": g}, slots[g]+2)
	}
	running := func(g string) int64 {
		return b.int64("SELECT count(*) FROM tasks WHERE group_name = $1 AND state IN ('dispatched', 'running') AND worker_session_id = $2", g, sessions[g])
	}
	batontest.WaitFor(t, 30*time.Second, func() (bool, string) {
		msg := ""
		full := true
		for g, n := range slots {
			r := running(g)
			msg += fmt.Sprintf(" %s=%d/%d", g, r, n)
			full = full && r == int64(n) && h.maxOf(g) == n
		}
		return full, "slots filled:" + msg
	})
	// Some claim polls (100 ms) with free slots in no group and tasks waiting in each.
	for range 5 {
		w.TestSignals.Heartbeat.Beat.WaitOrTimeout(t)
	}
	for g, n := range slots {
		if m := h.maxOf(g); m != n {
			t.Fatalf("group %s ran %d attempts at once on the worker, its slots are %d", g, m, n)
		}
		if q := b.int64("SELECT count(*) FROM tasks WHERE group_name = $1 AND state = 'queued'", g); q != 2 {
			t.Fatalf("group %s: %d tasks queued, want 2", g, q)
		}
	}

	// Helpers for a and b (and z, which must get nothing); c has none.
	helpers := map[string]int64{}
	for _, g := range []string{"a", "b", "z"} {
		hc := crashCfg(b.dsn, "helper-"+g)
		hc.Group, hc.Slots = g, 10
		hw, _ := b.workerWith(hc)
		helpers[g] = hw.SessionID()
	}
	proxy.Cut()
	var firstDeadline time.Time
	for g, id := range sessions {
		age, deadline := b.deadSession(id, 30*time.Second)
		// Not an age: a master slowed by load declares a session late by either path.
		if by := b.declaredBy(id); by != "crash detection" {
			t.Fatalf("session %d of group %s declared dead %s after its last heartbeat by %s, not crash detection (its lock was not held on the liveness connection)", id, g, age, by)
		}
		if firstDeadline.IsZero() || deadline.Before(firstDeadline) {
			firstDeadline = deadline
		}
	}
	h.mu.Lock()
	canceled := append([]time.Time(nil), h.canceled...)
	h.mu.Unlock()
	if len(canceled) != 6 {
		t.Fatalf("%d attempts canceled on the cut-off worker, want its 6", len(canceled))
	}
	for _, c := range canceled {
		if !c.Before(firstDeadline) {
			t.Fatalf("attempt canceled at %s, not before the first failover deadline %s", c, firstDeadline)
		}
	}
	// a and b: everything on their helper (the failed-over attempts and the two
	// that waited); c: back in the queue.
	batontest.WaitFor(t, 30*time.Second, func() (bool, string) {
		a := b.int64("SELECT count(*) FROM tasks WHERE group_name = 'a' AND kind = 'hold' AND worker_session_id = $1", helpers["a"])
		bb := b.int64("SELECT count(*) FROM tasks WHERE group_name = 'b' AND kind = 'hold' AND worker_session_id = $1", helpers["b"])
		c := b.int64("SELECT count(*) FROM tasks WHERE group_name = 'c' AND state = 'queued'")
		return a == 3 && bb == 4 && c == 5, fmt.Sprintf("on helper-a %d/3, on helper-b %d/4, c queued %d/5", a, bb, c)
	})
	for g, id := range sessions {
		if n := b.int64("SELECT count(*) FROM failover_events WHERE session_id = $1", id); n != 1 {
			t.Fatalf("failover events of session %d (group %s) = %d, want 1", id, g, n)
		}
		if n := b.int64("SELECT count(*) FROM task_attempts WHERE worker_session_id = $1 AND outcome = 'failed_over'", id); n != int64(slots[g]) {
			t.Fatalf("failed-over attempts of session %d (group %s) = %d, want %d", id, g, n, slots[g])
		}
	}
	if n := b.int64("SELECT count(*) FROM task_attempts WHERE worker_session_id = $1", helpers["z"]); n != 0 {
		t.Fatalf("%d attempts went to group z's worker", n)
	}

	// Reconnected: three new sessions; c's tasks run on the new c session.
	proxy.Restore()
	batontest.WaitFor(t, 30*time.Second, func() (bool, string) {
		s := w.Sessions()
		return len(s) == 6, fmt.Sprintf("sessions of the worker: %v", s)
	})
	close(h.release)
	b.waitAllFinished(60 * time.Second)
	newC := w.SessionIDs()["c"]
	if newC == sessions["c"] {
		t.Fatal("group c kept its dead session")
	}
	if n := b.int64("SELECT count(*) FROM task_attempts a JOIN tasks t ON t.id = a.task_id WHERE t.group_name = 'c' AND t.kind = 'hold' AND t.state = 'succeeded' AND a.worker_session_id = $1 AND a.outcome = 'succeeded'", newC); n != 5 {
		t.Fatalf("c tasks succeeded on the new c session = %d, want 5", n)
	}
	// Never another group's session, in any attempt.
	if n := b.int64("SELECT count(*) FROM task_attempts a JOIN tasks t ON t.id = a.task_id JOIN worker_sessions s ON s.id = a.worker_session_id WHERE s.group_name <> t.group_name"); n != 0 {
		t.Fatalf("%d attempts ran on a session of another group", n)
	}
	if n := b.int64("SELECT count(*) FROM tasks WHERE state <> 'succeeded'"); n != 0 {
		t.Fatalf("%d tasks did not succeed", n)
	}
}
