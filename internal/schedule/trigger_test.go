package schedule_test

import (
	"errors"
	"testing"
	"time"

	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/schedule"
)

func (e *env) trigger(name string, at *time.Time, rerun bool) (schedule.Triggered, error) {
	e.t.Helper()
	var tr schedule.Triggered
	err := pgxBegin(e, func(q *db.Queries) error {
		var err error
		tr, err = schedule.Trigger(e.ctx, q, name, at, rerun, &e.now)
		return err
	})
	return tr, err
}

// Manual triggers go through the ledger's key with the documented conflict
// rule: a running or buffered time is refused, an ended one only with rerun
// (in the same row), a skipped one runs in its row, and a future fire time
// triggered by hand is not fired again by the schedule.
func TestManualTrigger(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.create(schedule.Spec{Name: "m", Cron: "* * * * *", Overlap: schedule.OverlapAllow})
	e.now = e.now.Add(30 * time.Second)
	// Default logical time: now (Postgres time, or the injected one), to the second.
	tr, err := e.trigger("m", nil, false)
	if err != nil || !tr.Nominal.Equal(e.now) || tr.RunID == 0 {
		t.Fatalf("trigger = %+v, %v", tr, err)
	}
	if _, err := e.trigger("m", nil, false); !errors.Is(err, schedule.ErrConflict) {
		t.Fatalf("second trigger of a running time: %v, want ErrConflict", err)
	}
	// A future fire time triggered by hand: the schedule does not fire it again.
	at := hm(e.now, "10:05")
	manual, err := e.trigger("m", &at, false)
	if err != nil {
		t.Fatal(err)
	}
	started := 0
	for _, m := range []string{"10:01", "10:02", "10:03", "10:04", "10:05"} {
		started += e.at(hm(e.now, m)).Started
	}
	if started != 4 {
		t.Fatalf("10:01..10:05 started %d, want 4 (10:05 is the manual run's)", started)
	}
	e.expectLedger("m", "10:00 started", "10:01 started", "10:02 started", "10:03 started", "10:04 started", "10:05 started")
	if n := e.int("SELECT count(*) FROM schedule_fires WHERE source = 'manual'"); n != 2 {
		t.Fatalf("%d manual rows, want 2", n)
	}
	if n := e.int("SELECT count(*) FROM schedule_fires WHERE nominal_time = $1 AND run_id = $2", at, manual.RunID); n != 1 {
		t.Fatal("10:05's row does not hold the manual run")
	}
	// Ended: refused without rerun; with rerun a new run in the same row.
	e.endRun(manual.RunID, "failed")
	if _, err := e.trigger("m", &at, false); !errors.Is(err, schedule.ErrConflict) {
		t.Fatalf("trigger of an ended time without rerun: %v, want ErrConflict", err)
	}
	again, err := e.trigger("m", &at, true)
	if err != nil || !again.Rerun || again.FireID != manual.FireID || again.RunID == manual.RunID {
		t.Fatalf("rerun = %+v, %v; first %+v", again, err, manual)
	}
	if n := e.int("SELECT count(*) FROM schedule_fires WHERE id = $1 AND previous_run_ids = ARRAY[$2::bigint] AND run_active", again.FireID, manual.RunID); n != 1 {
		t.Fatal("the rerun's row does not keep the earlier run in previous_run_ids")
	}
	// A skipped time (paused) runs in its row.
	e.tx(func(q *db.Queries) error { return schedule.SetPaused(e.ctx, q, "m", true, "") })
	paused := hm(e.now, "10:06")
	e.at(paused)
	if _, err := e.trigger("m", &paused, false); err != nil {
		t.Fatal(err)
	}
	e.expectLedger("m", "10:00 started", "10:01 started", "10:02 started", "10:03 started", "10:04 started", "10:05 started", "10:06 started")
	// Unknown schedule: nothing stored.
	before := e.int("SELECT count(*) FROM workflow_runs")
	if _, err := e.trigger("nope", nil, false); !errors.Is(err, schedule.ErrNotFound) {
		t.Fatalf("unknown schedule: %v", err)
	}
	if n := e.int("SELECT count(*) FROM workflow_runs"); n != before {
		t.Fatal("a refused trigger stored a run")
	}
	if n := e.int("SELECT count(*) FROM workflow_runs"); n != 8 {
		t.Fatalf("%d runs, want 8 (10:00:30 manual, 10:01-10:04, 10:05 twice, 10:06)", n)
	}
	e.checkLedger()
}
