package master

import (
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/baton-scheduler/baton/batontest"
	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/schedule"
	"github.com/baton-scheduler/baton/internal/workflow"
)

// The master's scheduler fires on its clock (stubbed here: 30 minutes pass in
// 30 calls) and admits backfill runs.
func TestSchedulerFiresAndAdmits(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{})
	b.m.scheduler.TestSignals.Fired.Init(t)
	b.m.scheduler.TestSignals.Admitted.Init(t)
	batontest.NewGroup(t, b.pool, nil)
	t0 := time.Date(2026, 2, 1, 12, 0, 0, 0, time.UTC)
	b.clock.StubNow(t0)
	if err := pgx.BeginFunc(b.ctx, b.pool, func(tx pgx.Tx) error {
		q := db.New(tx)
		if _, err := workflow.Apply(b.ctx, q, workflow.Definition{Name: "wf", Steps: []workflow.Step{{Name: "s", Group: "g", Kind: "noop"}}}); err != nil {
			return err
		}
		if _, err := schedule.Create(b.ctx, q, schedule.Spec{Name: "m", Workflow: "wf", Cron: "* * * * *", Overlap: schedule.OverlapAllow}, &t0); err != nil {
			return err
		}
		_, _, err := schedule.CreateBackfill(b.ctx, q, schedule.BackfillSpec{Workflow: "wf", From: t0.AddDate(0, 0, -5), To: t0.AddDate(0, 0, -1), Parallel: 2}, false)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	for range 30 {
		b.clock.Advance(time.Minute)
		for b.m.scheduler.runOnce(b.within(), 2) {
		}
	}
	if n := b.int64("SELECT count(*) FROM schedule_fires WHERE schedule_id IS NOT NULL AND outcome = 'started'"); n != 30 {
		t.Fatalf("%d scheduled fires, want 30", n)
	}
	if n := b.int64("SELECT count(*) FROM schedule_fires WHERE backfill_id IS NOT NULL"); n != 2 {
		t.Fatalf("%d backfill runs admitted, want its parallel 2", n)
	}
	if n := b.int64("SELECT max(lag_ms) FROM schedule_fires WHERE schedule_id IS NOT NULL"); n != 0 {
		t.Fatalf("lag %d ms on a stubbed clock", n)
	}
}

// Started for real: the loop sleeps until the next due time (Postgres time)
// and fires a 1-second interval schedule every second.
func TestSchedulerLoop(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{})
	b.m.scheduler.TestSignals.Fired.Init(t)
	batontest.NewGroup(t, b.pool, nil)
	if err := pgx.BeginFunc(b.ctx, b.pool, func(tx pgx.Tx) error {
		q := db.New(tx)
		if _, err := workflow.Apply(b.ctx, q, workflow.Definition{Name: "wf", Steps: []workflow.Step{{Name: "s", Group: "g", Kind: "noop"}}}); err != nil {
			return err
		}
		_, err := schedule.Create(b.ctx, q, schedule.Spec{Name: "tick", Workflow: "wf", Cron: "@every 1s", Overlap: schedule.OverlapAllow}, nil)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if err := b.m.scheduler.Start(b.ctx); err != nil {
		t.Fatal(err)
	}
	defer b.m.scheduler.Stop()
	started := 0
	for started < 3 {
		started += b.m.scheduler.TestSignals.Fired.WaitOrTimeout(t, 10*time.Second).Started
	}
	b.m.scheduler.Stop()
	if n := b.int64("SELECT count(*) FROM schedule_fires WHERE outcome = 'started'"); n < 3 {
		t.Fatalf("%d fires", n)
	}
	// Consecutive fire times, none missing.
	if n := b.int64(`SELECT count(*) FROM (SELECT nominal_time - lag(nominal_time) OVER (ORDER BY nominal_time) AS gap FROM schedule_fires) g
		WHERE gap <> interval '1 second'`); n != 0 {
		t.Fatalf("%d gaps in the fire times", n)
	}
}
