package baton_test

import (
	"context"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/baton-scheduler/baton"
	"github.com/baton-scheduler/baton/batontest"
	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/submit"
)

// No wake-up is lost in the adopter's simplest loop: submit one task, Wait for it,
// repeat (one worker, one embedded master). Every fallback poll is set to a day —
// the worker's claim poll, the master's dispatch poll, Wait's re-read — so a task
// whose wake-up was lost is never claimed and its Wait times out; the timeout is
// not a latency bound (a woken task ends within milliseconds). Before the fix, 9
// of 60 tasks were never claimed: Wait's TaskWatch held the task's row lock while
// the worker, woken by the submit, claimed with SKIP LOCKED, found nothing, and
// waited for the next wake-up.
func TestSubmitThenWaitLosesNoWakeUp(t *testing.T) {
	t.Parallel()
	pool, dsn := srv.NewPool(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const never = 24 * time.Hour
	w, err := baton.NewWorker(ctx, baton.WorkerConfig{
		DatabaseURL: dsn, Group: "app", Logger: zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)),
		Handlers:     map[string]baton.Handler{"noop": func(context.Context, baton.Task) (string, error) { return "ok", nil }},
		PollInterval: never,
		Master:       &baton.MasterConfig{DispatchInterval: never},
	})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	select {
	case <-w.Ready():
	case <-time.After(20 * time.Second):
		t.Fatal("worker not ready")
	}
	client, err := baton.NewClient(pool, &baton.ClientConfig{Logger: zaptest.NewLogger(t), WaitPollInterval: never})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 60 {
		id, err := client.Submit(ctx, baton.TaskSpec{Group: "app", Kind: "noop"})
		if err != nil {
			t.Fatal(err)
		}
		wctx, wcancel := context.WithTimeout(ctx, 20*time.Second)
		info, err := client.Wait(wctx, id)
		wcancel()
		if err != nil {
			got, _ := client.Get(ctx, id)
			t.Fatalf("task %d of the loop (id %d, state %s): a wake-up was lost (every poll is off): %v", i, id, got.State, err)
		}
		if info.State != baton.TaskSucceeded {
			t.Fatalf("task %d: %s", id, info.State)
		}
	}
}

// The mechanism, step by step: a claim that runs while Wait's TaskWatch holds the
// task's row lock skips the task; the watch's commit then wakes the group's
// workers (and, for a dispatched task, its target session), and the claim after
// that wake-up takes the task.
func TestWatchWakesClaimItBlocked(t *testing.T) {
	t.Parallel()
	pool, _ := srv.NewPool(t)
	ctx := context.Background()
	s := batontest.NewWorkerSession(t, pool, &batontest.WorkerSessionOpts{Group: batontest.Ptr("a")})
	p, err := submit.Params([]submit.Spec{{Group: "a", Kind: "noop"}})
	if err != nil {
		t.Fatal(err)
	}
	ids, err := submit.Insert(ctx, db.New(pool), p) // stored without the submit's wake-up
	if err != nil {
		t.Fatal(err)
	}
	listen, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer listen.Release()
	if _, err := listen.Exec(ctx, "LISTEN baton_claim"); err != nil {
		t.Fatal(err)
	}
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if err := db.New(tx).TaskWatch(ctx, ids[0]); err != nil {
		t.Fatal(err)
	}
	claim := func() int {
		t.Helper()
		rows, err := db.New(pool).TaskClaimNext(ctx, db.TaskClaimNextParams{SessionID: s, GroupName: "a", MaxTasks: 4})
		if err != nil {
			t.Fatal(err)
		}
		return len(rows)
	}
	if n := claim(); n != 0 {
		t.Fatalf("claimed %d while the watch holds the row; the race this test needs did not happen", n)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	n, err := listen.Conn().WaitForNotification(wctx)
	if err != nil {
		t.Fatalf("no wake-up after the watch committed: %v", err)
	}
	if n.Payload != "g:a" {
		t.Fatalf("wake-up payload %q, want g:a", n.Payload)
	}
	if n := claim(); n != 1 {
		t.Fatalf("the claim after the wake-up took %d tasks, want 1", n)
	}
	// A second watch of the same task (already watched) writes nothing and wakes nobody.
	if err := db.New(pool).TaskWatch(ctx, ids[0]); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, "SELECT pg_notify('baton_claim', 'marker')"); err != nil {
		t.Fatal(err)
	}
	if n, err := listen.Conn().WaitForNotification(wctx); err != nil || n.Payload != "marker" {
		t.Fatalf("after a second watch: %v, %v; want only the marker", n, err)
	}
}
