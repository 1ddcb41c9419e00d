package master

import (
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/baton-scheduler/baton/batontest"
	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/workflow"
)

// The repair sweep finds nothing in a consistent run, records a run that was
// corrupted behind the advancement's back (its steps ended without their
// tasks) once, and changes nothing of it.
func TestRunRepairSweep(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{})
	batontest.NewGroup(t, b.pool, &batontest.GroupOpts{Name: batontest.Ptr("g")})
	var run int64
	if err := pgx.BeginFunc(b.ctx, b.pool, func(tx pgx.Tx) error {
		q := db.New(tx)
		if _, err := workflow.Apply(b.ctx, q, workflow.Definition{Name: "w", Steps: []workflow.Step{
			{Name: "a", Group: "g", Kind: "k"}, {Name: "b", Group: "g", Kind: "k", DependsOn: []string{"a"}}}}); err != nil {
			return err
		}
		s, err := workflow.Start(b.ctx, q, workflow.StartParams{Workflow: "w"})
		run = s.RunID
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if n, err := b.m.runRepair.runOnce(b.within()); err != nil || n != 0 {
		t.Fatalf("sweep of a consistent run = %d, %v; want 0", n, err)
	}
	b.exec("UPDATE workflow_run_steps SET state = 'succeeded', finished_at = now() WHERE run_id = $1 AND name = 'a'", run)
	if n, err := b.m.runRepair.runOnce(b.within()); err != nil || n != 1 {
		t.Fatalf("sweep of a stuck run = %d, %v; want 1", n, err)
	}
	if n := b.int64("SELECT count(*) FROM workflow_run_findings WHERE run_id = $1 AND detected_by = $2 AND run_state = 'running' AND live_steps = 0 AND open_steps = 1 AND steps_left = 2",
		run, b.m.SessionID()); n != 1 {
		t.Fatal("finding not recorded")
	}
	if n, err := b.m.runRepair.runOnce(b.within()); err != nil || n != 0 {
		t.Fatalf("second sweep = %d, %v; want 0 (recorded once)", n, err)
	}
	if n := b.int64("SELECT count(*) FROM workflow_runs WHERE id = $1 AND state = 'running'", run); n != 1 {
		t.Fatal("the sweep changed the run")
	}
}

// A run past its run timeout is ended failed by a master: pending steps
// canceled, its running step's task canceled (the worker's late result is
// then fenced), the reason recorded; a run within its timeout is left alone.
func TestRunTimeout(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{})
	batontest.NewGroup(t, b.pool, &batontest.GroupOpts{Name: batontest.Ptr("g")})
	var slow, fast int64
	if err := pgx.BeginFunc(b.ctx, b.pool, func(tx pgx.Tx) error {
		q := db.New(tx)
		for _, d := range []workflow.Definition{
			{Name: "slow", Timeout: "1h", Steps: []workflow.Step{{Name: "a", Group: "g", Kind: "k"}, {Name: "b", Group: "g", Kind: "k", DependsOn: []string{"a"}}}},
			{Name: "fast", Timeout: "3h", Steps: []workflow.Step{{Name: "a", Group: "g", Kind: "k"}}},
		} {
			if _, err := workflow.Apply(b.ctx, q, d); err != nil {
				return err
			}
		}
		s, err := workflow.Start(b.ctx, q, workflow.StartParams{Workflow: "slow"})
		if err != nil {
			return err
		}
		slow = s.RunID
		s, err = workflow.Start(b.ctx, q, workflow.StartParams{Workflow: "fast"})
		fast = s.RunID
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if n, err := b.m.runRepair.timeOutRuns(b.within()); err != nil || n != 0 {
		t.Fatalf("timeouts before any deadline = %d, %v", n, err)
	}
	b.clock.StubNow(time.Now().Add(2 * time.Hour))
	if n, err := b.m.runRepair.timeOutRuns(b.within()); err != nil || n != 1 {
		t.Fatalf("timeouts 2h later = %d, %v; want the 1h run", n, err)
	}
	if n := b.int64(`SELECT count(*) FROM workflow_runs WHERE id = $1 AND state = 'failed' AND error = 'run timed out'`, slow); n != 1 {
		t.Fatal("overdue run not ended")
	}
	if n := b.int64(`SELECT count(*) FROM workflow_run_steps WHERE run_id = $1 AND state = 'canceled'`, slow); n != 2 {
		t.Fatal("steps of the overdue run not canceled")
	}
	if n := b.int64(`SELECT count(*) FROM tasks WHERE workflow_run_id = $1 AND state = 'canceled'`, slow); n != 1 {
		t.Fatal("task of the overdue run not canceled")
	}
	if n := b.int64(`SELECT count(*) FROM workflow_runs WHERE id = $1 AND state = 'running'`, fast); n != 1 {
		t.Fatal("run within its timeout was ended")
	}
	if n, err := b.m.runRepair.runOnce(b.within()); err != nil || n != 0 {
		t.Fatalf("repair sweep after the timeout = %d, %v; want nothing", n, err)
	}
}
