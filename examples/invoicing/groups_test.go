package invoicing_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/baton-scheduler/baton"
	"github.com/baton-scheduler/baton/batontest/apptest"
)

// One worker serving three groups (one pool, one liveness connection), with
// slots per group: each group runs at most its slots at once and the rest waits;
// stopped, the worker hands its tasks back and each group's tasks go only to a
// worker of that group (email's to the email worker; billing's and reports'
// wait, none reach the email worker) until a worker of theirs runs them.
func TestOneWorkerServesThreeGroups(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	a := newApp(t)
	apptest.StartMaster(t, baton.MasterConfig{DatabaseURL: a.dsn, Logger: zaptest.NewLogger(t)})
	slots := map[string]int{"billing": 1, "email": 2, "reports": 3}

	release := make(chan struct{})
	var mu sync.Mutex
	running, most := map[string]int{}, map[string]int{}
	groupOf := map[int64]string{} // task -> group, filled at submit
	hold := func(ctx context.Context, task baton.Task) (string, error) {
		mu.Lock()
		g := groupOf[task.ID]
		running[g]++
		most[g] = max(most[g], running[g])
		mu.Unlock()
		defer func() { mu.Lock(); running[g]--; mu.Unlock() }()
		select {
		case <-release:
			return "sent by " + task.Worker, nil
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
	handlers := map[string]baton.Handler{"hold": hold}

	// Bad group lists are refused before connecting.
	for _, bad := range []struct {
		cfg  baton.WorkerConfig
		want string
	}{
		{baton.WorkerConfig{Group: "billing", Groups: []baton.WorkerGroup{{Name: "email", Slots: 1}}}, "set Group and Slots for one group, or Groups for several"},
		{baton.WorkerConfig{Groups: []baton.WorkerGroup{{Name: "email", Slots: 1}, {Name: "email", Slots: 2}}}, `group "email" is named twice`},
		{baton.WorkerConfig{Groups: []baton.WorkerGroup{{Name: "email"}}}, `slots 0 of group "email"`},
	} {
		bad.cfg.DatabaseURL, bad.cfg.Handlers, bad.cfg.Logger = a.dsn, handlers, zaptest.NewLogger(t)
		if _, err := baton.NewWorker(ctx, bad.cfg); !errors.Is(err, baton.ErrInvalidConfig) || !strings.Contains(err.Error(), bad.want) {
			t.Fatalf("groups %+v: %v, want ErrInvalidConfig containing %q", bad.cfg.Groups, err, bad.want)
		}
	}

	multiCtx, stopMulti := context.WithCancel(ctx)
	defer stopMulti()
	multi, err := baton.NewWorker(multiCtx, baton.WorkerConfig{DatabaseURL: a.dsn, Name: "multi", Handlers: handlers,
		Groups:        []baton.WorkerGroup{{Name: "billing", Slots: 1}, {Name: "email", Slots: 2}, {Name: "reports", Slots: 3}},
		ShutdownGrace: 50 * time.Millisecond, Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- multi.Run(multiCtx) }()
	defer func() { stopMulti(); <-done }()
	<-multi.Ready()
	sessions := multi.SessionIDs()
	if len(sessions) != 3 || sessions["billing"] == sessions["email"] || sessions["email"] == sessions["reports"] {
		t.Fatalf("sessions = %v, want one per group", sessions)
	}

	// slots+1 tasks per group: each group fills its slots, one task waits.
	var ids []int64
	for g, n := range slots {
		for range n + 1 {
			mu.Lock()
			id, err := a.client.Submit(ctx, baton.TaskSpec{Group: g, Kind: "hold", Payload: json.RawMessage(`{}`)})
			if err == nil {
				groupOf[id] = g
			}
			mu.Unlock()
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, id)
		}
	}
	count := func(state baton.TaskState, group string) int {
		got, err := a.client.List(ctx, baton.ListParams{State: state, Group: group})
		if err != nil {
			t.Fatal(err)
		}
		return len(got)
	}
	waitFor(t, func() bool {
		for g, n := range slots {
			if count(baton.TaskRunning, g) != n || count(baton.TaskQueued, g) != 1 {
				return false
			}
		}
		return true
	})
	for g, n := range slots {
		for _, task := range mustList(t, a.client, baton.ListParams{State: baton.TaskRunning, Group: g}) {
			if task.WorkerSessionID != sessions[g] {
				t.Fatalf("%s task %d runs on session %d, not the worker's %s session %d", g, task.ID, task.WorkerSessionID, g, sessions[g])
			}
		}
		mu.Lock()
		m := most[g]
		mu.Unlock()
		if m != n {
			t.Fatalf("group %s ran %d tasks at once, its slots are %d", g, m, n)
		}
	}

	// A worker of email only, then the multi-group worker stops: its tasks are
	// handed back; email's run on the email worker, the others wait.
	email := apptest.StartWorker(t, baton.WorkerConfig{DatabaseURL: a.dsn, Name: "email-only", Group: "email", Slots: 10, Handlers: handlers})
	stopMulti()
	if err := <-done; err != nil {
		t.Fatalf("multi-group worker: %v", err)
	}
	done <- nil
	waitFor(t, func() bool {
		return count(baton.TaskRunning, "email") == 3 && count(baton.TaskQueued, "billing") == 2 && count(baton.TaskQueued, "reports") == 4
	})
	for _, task := range mustList(t, a.client, baton.ListParams{State: baton.TaskRunning}) {
		if task.Group != "email" || task.WorkerSessionID != email.SessionID() {
			t.Fatalf("task %d of group %s runs on session %d (the email worker's is %d)", task.ID, task.Group, task.WorkerSessionID, email.SessionID())
		}
	}

	// A new worker of billing and reports runs the rest.
	close(release)
	apptest.StartWorker(t, baton.WorkerConfig{DatabaseURL: a.dsn, Name: "multi-2", Handlers: handlers,
		Groups: []baton.WorkerGroup{{Name: "billing", Slots: 1}, {Name: "reports", Slots: 3}}})
	for _, id := range ids {
		info := apptest.Wait(t, a.client, id, 30*time.Second)
		mu.Lock()
		g := groupOf[id]
		mu.Unlock()
		want := map[string]string{"billing": "multi-2", "email": "email-only", "reports": "multi-2"}[g]
		if info.State != baton.TaskSucceeded || info.Output != "sent by "+want {
			t.Fatalf("%s task %d: %s %q, want succeeded by %s", g, id, info.State, info.Output, want)
		}
	}
}

func mustList(t *testing.T, c *baton.Client, p baton.ListParams) []baton.TaskInfo {
	t.Helper()
	got, err := c.List(context.Background(), p)
	if err != nil {
		t.Fatal(fmt.Errorf("list %+v: %w", p, err))
	}
	return got
}
