package baton_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/baton-scheduler/baton"
)

// Schedules and backfills through the public API with a real worker and its
// embedded master: a 1-second schedule fires and its runs succeed; a backfill
// of 4 dates runs them all, 2 at a time; bad input stores nothing.
func TestScheduleEndToEnd(t *testing.T) {
	t.Parallel()
	pool, dsn := srv.NewPool(t)
	ctx := context.Background()
	startWorker(t, dsn, map[string]baton.Handler{"noop": func(context.Context, baton.Task) (string, error) { return "", nil }})
	client, err := baton.NewClient(pool, &baton.ClientConfig{Logger: zaptest.NewLogger(t), WaitPollInterval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.ApplyWorkflow(ctx, baton.WorkflowDefinition{Name: "tick", Steps: []baton.WorkflowStep{{Name: "s", Group: "app", Kind: "noop"}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.CreateSchedule(ctx, baton.ScheduleSpec{Name: "bad", Workflow: "tick", Cron: "99 * * * *"}); !errors.Is(err, baton.ErrInvalidSchedule) {
		t.Fatalf("invalid cron: %v", err)
	}
	if _, err := client.CreateSchedule(ctx, baton.ScheduleSpec{Name: "bad", Workflow: "nope", Cron: "@daily"}); !errors.Is(err, baton.ErrInvalidSchedule) {
		t.Fatalf("unknown workflow: %v", err)
	}
	s, err := client.CreateSchedule(ctx, baton.ScheduleSpec{Name: "every-second", Workflow: "tick", Cron: "@every 1s"})
	if err != nil {
		t.Fatal(err)
	}
	if s.Overlap != "skip" || s.Catchup != "latest" || s.DSTGap != "shift" || s.NextFireAt == nil {
		t.Fatalf("defaults: %+v", s)
	}
	items, err := client.PreviewSchedule(ctx, "every-second", 3)
	if err != nil || len(items) != 3 || items[1].Nominal.Sub(items[0].Nominal) != time.Second {
		t.Fatalf("preview: %+v, %v", items, err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		var n int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM schedule_fires WHERE run_state = 'succeeded'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n >= 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d scheduled runs succeeded in 30 s", n)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := client.PauseSchedule(ctx, "every-second", "test"); err != nil {
		t.Fatal(err)
	}
	if s, err := client.GetSchedule(ctx, "every-second"); err != nil || !s.Paused {
		t.Fatalf("pause: %+v, %v", s, err)
	}
	// A manual run of a logical time, paused or not; the same time again is a conflict.
	logical := time.Date(2026, 2, 1, 0, 0, 0, 0, time.UTC)
	tr, err := client.TriggerSchedule(ctx, "every-second", &logical, false)
	if err != nil || tr.RunID == 0 || !tr.Nominal.Equal(logical) {
		t.Fatalf("trigger: %+v, %v", tr, err)
	}
	if _, err := client.TriggerSchedule(ctx, "every-second", &logical, false); !errors.Is(err, baton.ErrScheduleConflict) {
		t.Fatalf("second trigger of one logical time: %v", err)
	}
	if _, err := client.CreateBackfill(ctx, baton.BackfillSpec{Workflow: "tick", From: time.Date(2026, 3, 10, 0, 0, 0, 0, time.UTC),
		To: time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)}); !errors.Is(err, baton.ErrInvalidSchedule) {
		t.Fatalf("from after to: %v", err)
	}
	from := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	plan, err := client.PlanBackfill(ctx, baton.BackfillSpec{Workflow: "tick", From: from, To: from.AddDate(0, 0, 3), Parallel: 2})
	if err != nil || len(plan) != 4 || plan[0].Action != "run" {
		t.Fatalf("plan: %+v, %v", plan, err)
	}
	b, err := client.CreateBackfill(ctx, baton.BackfillSpec{Workflow: "tick", From: from, To: from.AddDate(0, 0, 3), Parallel: 2})
	if err != nil {
		t.Fatal(err)
	}
	for {
		got, err := client.GetBackfill(ctx, b.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.Running > 2 {
			t.Fatalf("backfill running %d, parallel 2", got.Running)
		}
		if got.State == "succeeded" {
			if got.Succeeded != 4 {
				t.Fatalf("backfill: %+v", got)
			}
			break
		}
		if time.Now().After(deadline.Add(30 * time.Second)) {
			t.Fatalf("backfill not done: %+v", got)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := client.DeleteSchedule(ctx, "every-second"); err != nil {
		t.Fatal(err)
	}
	if _, err := client.GetSchedule(ctx, "every-second"); !errors.Is(err, baton.ErrScheduleNotFound) {
		t.Fatalf("get deleted: %v", err)
	}
}
