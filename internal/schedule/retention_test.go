package schedule_test

import (
	"testing"
	"time"

	"github.com/baton-scheduler/baton/internal/retention"
	"github.com/baton-scheduler/baton/internal/schedule"
)

// Ledger retention prunes old rows but never one a policy or exactly-once
// still needs: an active run's, a buffered one, a failed run pause_on_failure
// has not acted on. A pruned fire time is not fired again.
func TestLedgerRetention(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.create(schedule.Spec{Name: "a", Cron: "* * * * *", Overlap: schedule.OverlapAllow})
	e.create(schedule.Spec{Name: "b", Cron: "* * * * *", Overlap: schedule.OverlapAllow, PauseOnFailure: true, Start: ptr(hm(e.now, "10:05"))})
	e.create(schedule.Spec{Name: "c", Cron: "* * * * *", Overlap: schedule.OverlapBufferOne, Start: ptr(hm(e.now, "10:04"))})
	for _, m := range []string{"10:01", "10:02", "10:03", "10:04"} {
		e.at(hm(e.now, m))
	}
	run := func(name, m string) int64 {
		return e.int(`SELECT f.run_id FROM schedule_fires f JOIN schedules s ON s.id = f.schedule_id WHERE s.name = $1 AND f.nominal_time = $2`, name, hm(e.now, m))
	}
	e.endRun(run("a", "10:01"), "succeeded")
	e.endRun(run("a", "10:02"), "failed")
	// 10:05: b fires and its run fails before a pass acts on it; c buffers.
	e.at(hm(e.now, "10:05"))
	e.endRun(run("b", "10:05"), "failed")
	e.expectLedger("c", "10:04 started", "10:05 buffered")
	before := e.int("SELECT count(*) FROM workflow_runs")
	later := e.now.Add(48 * time.Hour)
	res, err := retention.Prune(e.ctx, e.pool, retention.Config{Retention: 24 * time.Hour, Now: &later})
	if err != nil {
		t.Fatal(err)
	}
	if res.ScheduleFires != 2 {
		t.Fatalf("pruned %d ledger rows, want 2 (a's ended 10:01 and 10:02)", res.ScheduleFires)
	}
	e.expectLedger("a", "10:03 started", "10:04 started", "10:05 started")
	e.expectLedger("b", "10:05 started")
	e.expectLedger("c", "10:04 started", "10:05 buffered")
	// The next pass fires 10:06 only: the pruned times are behind every
	// schedule's next fire time.
	e.at(hm(e.now, "10:06"))
	e.expectLedger("a", "10:03 started", "10:04 started", "10:05 started", "10:06 started")
	if n := e.int("SELECT count(*) FROM workflow_runs") - before; n != 1 {
		t.Fatalf("%d runs started at 10:06, want 1 (a; b paused on failure, c has a buffered fire)", n)
	}
	if n := e.int("SELECT count(*) FROM schedule_fires WHERE reason = 'starting'"); n != 0 {
		t.Fatalf("%d rows left starting", n)
	}
}
