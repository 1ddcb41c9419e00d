package invoicing_test

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/baton-scheduler/baton"
	"github.com/baton-scheduler/baton/batontest/apptest"
)

// A reminder submitted to run later runs then and not before: it stays
// scheduled (no worker claims it) until its time, then runs. Both times are
// Postgres' (Delay is relative to the database clock, StartedAt is its now()),
// so no process clock is compared.
func TestRunAtRunsThenNotBefore(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	a := newApp(t)
	var mu sync.Mutex
	var ran []int64
	apptest.StartWorker(t, baton.WorkerConfig{DatabaseURL: a.dsn, Group: "reminders", Logger: zaptest.NewLogger(t),
		PollInterval: 50 * time.Millisecond, Master: &baton.MasterConfig{},
		Handlers: map[string]baton.Handler{"reminder.send": func(_ context.Context, task baton.Task) (string, error) {
			mu.Lock()
			defer mu.Unlock()
			ran = append(ran, task.ID)
			return "sent", nil
		}}})
	later, err := a.client.Submit(ctx, baton.TaskSpec{Group: "reminders", Kind: "reminder.send", Delay: 1500 * time.Millisecond,
		Payload: json.RawMessage(`{"invoice": 1}`)})
	if err != nil {
		t.Fatal(err)
	}
	now, err := a.client.Submit(ctx, baton.TaskSpec{Group: "reminders", Kind: "reminder.send"})
	if err != nil {
		t.Fatal(err)
	}
	if info := apptest.Wait(t, a.client, now, 10*time.Second); info.State != baton.TaskSucceeded {
		t.Fatalf("task without RunAt = %+v", info)
	}
	info, err := a.client.Get(ctx, later)
	if err != nil {
		t.Fatal(err)
	}
	if info.State != baton.TaskScheduled && !info.State.Terminal() {
		t.Fatalf("delayed task is %s before its time", info.State)
	}
	done := apptest.Wait(t, a.client, later, 20*time.Second)
	if done.State != baton.TaskSucceeded || done.StartedAt == nil {
		t.Fatalf("delayed task = %+v", done)
	}
	if done.StartedAt.Before(done.RunAt) || done.RunAt.Sub(done.SubmittedAt) < 1500*time.Millisecond {
		t.Fatalf("delayed task: submitted %s, run at %s, started %s: started before its time",
			done.SubmittedAt.Format(time.RFC3339Nano), done.RunAt.Format(time.RFC3339Nano), done.StartedAt.Format(time.RFC3339Nano))
	}
	mu.Lock()
	defer mu.Unlock()
	if len(ran) != 2 || ran[0] != now || ran[1] != later {
		t.Fatalf("ran %v, want %d then %d", ran, now, later)
	}

	// RunAt and Delay together, or a negative delay, are refused.
	if _, err := a.client.Submit(ctx, baton.TaskSpec{Group: "reminders", Kind: "reminder.send", Delay: time.Second, RunAt: time.Now()}); !errorsIs(err, baton.ErrInvalidTask) {
		t.Fatalf("run at and delay: %v", err)
	}
	if _, err := a.client.Submit(ctx, baton.TaskSpec{Group: "reminders", Kind: "reminder.send", Delay: -time.Second}); !errorsIs(err, baton.ErrInvalidTask) {
		t.Fatalf("negative delay: %v", err)
	}
	// A scheduled task can be canceled before it runs.
	id, err := a.client.Submit(ctx, baton.TaskSpec{Group: "reminders", Kind: "reminder.send", RunAt: time.Now().Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	if info, err := a.client.Cancel(ctx, id); err != nil || info.State != baton.TaskCanceled {
		t.Fatalf("cancel scheduled = %+v, %v", info, err)
	}
}

func errorsIs(err, target error) bool { return errors.Is(err, target) }
