package schedule_test

import (
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/schedule"
)

func (e *env) backfill(spec schedule.BackfillSpec) schedule.Backfill {
	e.t.Helper()
	if spec.Workflow == "" && spec.Schedule == "" {
		spec.Workflow = "wf"
	}
	var b schedule.Backfill
	e.tx(func(q *db.Queries) error {
		var err error
		b, _, err = schedule.CreateBackfill(e.ctx, q, spec, false)
		return err
	})
	return b
}

func (e *env) admit(pool *pgxpool.Pool) schedule.AdmitResult {
	e.t.Helper()
	var total schedule.AdmitResult
	for {
		res, err := schedule.AdmitBackfills(e.ctx, pool, &e.now, 0)
		if err != nil {
			e.t.Fatal(err)
		}
		total.Started += res.Started
		total.Skipped += res.Skipped
		total.Finished += res.Finished
		if !res.More {
			return total
		}
	}
}

func (e *env) backfillRuns(id int64) []int64 {
	e.t.Helper()
	rows, err := e.pool.Query(e.ctx, `SELECT run_id FROM schedule_fires WHERE backfill_id = $1 AND run_active ORDER BY run_id`, id)
	if err != nil {
		e.t.Fatal(err)
	}
	var out []int64
	for rows.Next() {
		var r int64
		_ = rows.Scan(&r)
		out = append(out, r)
	}
	return out
}

func day(d int) time.Time { return time.Date(2026, 1, d, 0, 0, 0, 0, time.UTC) }

// 50 logical dates with parallel 3, admitted by 4 concurrent admitters
// (separate pools): never more than 3 running, checked from the rows after
// every round; every date runs once, in order.
func TestBackfillParallel(t *testing.T) {
	t.Parallel()
	for _, order := range []string{"asc", "desc"} {
		t.Run(order, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			b := e.backfill(schedule.BackfillSpec{From: day(1), To: day(1).AddDate(0, 0, 49), Parallel: 3, Order: order})
			if b.Total != 50 {
				t.Fatalf("total %d", b.Total)
			}
			pools := make([]*pgxpool.Pool, 4)
			for i := range pools {
				p, err := pgxpool.New(e.ctx, e.url)
				if err != nil {
					t.Fatal(err)
				}
				defer p.Close()
				pools[i] = p
			}
			for round := 0; ; round++ {
				if round > 200 {
					t.Fatal("backfill does not finish")
				}
				var wg sync.WaitGroup
				for _, p := range pools {
					wg.Add(1)
					go func() {
						defer wg.Done()
						if _, err := schedule.AdmitBackfills(e.ctx, p, &e.now, 0); err != nil {
							t.Error(err)
						}
					}()
				}
				wg.Wait()
				running := e.int(`SELECT count(*) FROM schedule_fires f JOIN workflow_runs r ON r.id = f.run_id
					WHERE f.backfill_id = $1 AND r.state IN ('running', 'paused')`, b.ID)
				if running > 3 {
					t.Fatalf("round %d: %d runs of the backfill running, parallel is 3", round, running)
				}
				runs := e.backfillRuns(b.ID)
				if len(runs) == 0 {
					break
				}
				e.endRun(runs[0], "succeeded") // one ends per round
			}
			var got schedule.Backfill
			e.tx(func(q *db.Queries) error {
				var err error
				got, err = schedule.GetBackfill(e.ctx, q, b.ID)
				return err
			})
			if got.State != "succeeded" || got.Started != 50 || got.Succeeded != 50 || got.Running != 0 {
				t.Fatalf("backfill: %+v", got)
			}
			// Order: runs were started in logical-time order.
			rows, _ := e.pool.Query(e.ctx, "SELECT nominal_time FROM schedule_fires WHERE backfill_id = $1 ORDER BY run_id", b.ID)
			var prev time.Time
			n := 0
			for rows.Next() {
				var at time.Time
				_ = rows.Scan(&at)
				if n > 0 && (order == "asc") != at.After(prev) {
					t.Fatalf("%s order broken: %s after %s", order, at, prev)
				}
				prev = at
				n++
			}
			if n != 50 {
				t.Fatalf("%d ledger rows", n)
			}
			e.checkLedger()
		})
	}
}

func TestBackfillReprocessAndDryRun(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	// First pass over 6 dates: runs of dates 2 and 4 fail.
	b := e.backfill(schedule.BackfillSpec{From: day(1), To: day(6), Parallel: 10})
	e.admit(e.pool)
	runs := e.backfillRuns(b.ID)
	if len(runs) != 6 {
		t.Fatalf("%d runs", len(runs))
	}
	for i, r := range runs {
		e.endRun(r, map[bool]string{true: "failed", false: "succeeded"}[i == 1 || i == 3])
	}
	e.admit(e.pool)
	plan := func(reprocess string) string {
		var p []schedule.PlanItem
		var before, after int64
		before = e.int("SELECT count(*) FROM backfills") + e.int("SELECT count(*) FROM schedule_fires") + e.int("SELECT count(*) FROM workflow_runs")
		e.tx(func(q *db.Queries) error {
			var err error
			_, p, err = schedule.CreateBackfill(e.ctx, q, schedule.BackfillSpec{Workflow: "wf", From: day(1), To: day(7), Reprocess: reprocess}, true)
			return err
		})
		after = e.int("SELECT count(*) FROM backfills") + e.int("SELECT count(*) FROM schedule_fires") + e.int("SELECT count(*) FROM workflow_runs")
		if before != after {
			t.Fatalf("dry run stored rows (%d -> %d)", before, after)
		}
		var s []string
		for _, it := range p {
			s = append(s, it.At.Format("02")+":"+it.Action+map[bool]string{true: "/" + it.Reason, false: ""}[it.Reason != ""])
		}
		return strings.Join(s, " ")
	}
	if got := plan("none"); got != "01:skip/exists 02:skip/exists 03:skip/exists 04:skip/exists 05:skip/exists 06:skip/exists 07:run" {
		t.Fatalf("dry run none: %s", got)
	}
	if got := plan("failed"); got != "01:skip/exists 02:rerun 03:skip/exists 04:rerun 05:skip/exists 06:skip/exists 07:run" {
		t.Fatalf("dry run failed: %s", got)
	}
	if got := plan("all"); got != "01:rerun 02:rerun 03:rerun 04:rerun 05:rerun 06:rerun 07:run" {
		t.Fatalf("dry run all: %s", got)
	}
	// Reprocess failed for real: dates 2 and 4 get new runs in the same ledger rows.
	b2 := e.backfill(schedule.BackfillSpec{From: day(1), To: day(7), Reprocess: "failed", Parallel: 10})
	res := e.admit(e.pool)
	if res.Started != 3 || res.Skipped != 4 {
		t.Fatalf("reprocess failed: %+v", res)
	}
	if n := e.int("SELECT count(*) FROM schedule_fires WHERE cardinality(previous_run_ids) = 1 AND backfill_id = $1", b2.ID); n != 2 {
		t.Fatalf("%d ledger rows rerun", n)
	}
	if n := e.int("SELECT count(*) FROM schedule_fires"); n != 7 {
		t.Fatalf("%d ledger rows, want 7 (one per logical time)", n)
	}
	// Reprocess all while those runs are still active: the running ones are skipped.
	e.backfill(schedule.BackfillSpec{From: day(1), To: day(7), Reprocess: "all", Parallel: 10})
	res = e.admit(e.pool)
	if res.Started != 4 || res.Skipped != 3 {
		t.Fatalf("reprocess all with 3 running: %+v", res)
	}
	e.checkLedger()
}

// A backfill of a schedule and the schedule's own fire of the same logical
// time, racing: one ledger row, one run.
func TestBackfillSharesLedgerWithSchedule(t *testing.T) {
	t.Parallel()
	for i := range 5 {
		_ = i
		e := newEnv(t)
		e.now = day(10).Add(-time.Hour)
		e.create(schedule.Spec{Name: "daily", Cron: "@daily", Overlap: schedule.OverlapAllow})
		e.backfill(schedule.BackfillSpec{Schedule: "daily", From: day(8), To: day(10), Parallel: 5})
		e.now = day(10) // day 10 is due for the schedule and in the backfill's range
		p2, err := pgxpool.New(e.ctx, e.url)
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { defer wg.Done(); e.at(e.now) }()
		go func() {
			defer wg.Done()
			for {
				res, err := schedule.AdmitBackfills(e.ctx, p2, &e.now, 0)
				if err != nil {
					t.Error(err)
					return
				}
				if res.Backfills > 0 && !res.More {
					// Admitted (not skipped for the schedule's lock) at least once.
					if e.int("SELECT count(*) FROM schedule_fires WHERE nominal_time = $1", day(10)) == 1 {
						return
					}
				}
			}
		}()
		wg.Wait()
		p2.Close()
		e.admit(e.pool)
		if n := e.int("SELECT count(*) FROM schedule_fires WHERE nominal_time = $1", day(10)); n != 1 {
			t.Fatalf("%d ledger rows for the shared time", n)
		}
		if n := e.int("SELECT count(*) FROM workflow_runs"); n != 3 {
			t.Fatalf("%d runs for 3 logical times", n)
		}
		e.checkLedger()
	}
}

func TestBackfillBadInput(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.create(schedule.Spec{Name: "daily", Cron: "@daily"})
	for name, tc := range map[string]struct {
		spec schedule.BackfillSpec
		msg  string
	}{
		"from after to":    {schedule.BackfillSpec{Workflow: "wf", From: day(5), To: day(1)}, "from: 2026-01-05T00:00:00Z is after to"},
		"unknown workflow": {schedule.BackfillSpec{Workflow: "nope", From: day(1), To: day(5)}, `workflow: unknown workflow "nope"`},
		"unknown schedule": {schedule.BackfillSpec{Schedule: "nope", From: day(1), To: day(5)}, `schedule: unknown schedule "nope"`},
		"invalid cron":     {schedule.BackfillSpec{Workflow: "wf", Cron: "0 25 * * *", From: day(1), To: day(5)}, "invalid cron expression"},
		"unknown zone":     {schedule.BackfillSpec{Workflow: "wf", Zone: "Nowhere/Else", From: day(1), To: day(5)}, `unknown time zone "Nowhere/Else"`},
		"parallel 0":       {schedule.BackfillSpec{Workflow: "wf", From: day(1), To: day(5), Parallel: -1}, "parallel: -1"},
		"order":            {schedule.BackfillSpec{Workflow: "wf", From: day(1), To: day(5), Order: "random"}, "order:"},
		"reprocess":        {schedule.BackfillSpec{Workflow: "wf", From: day(1), To: day(5), Reprocess: "some"}, "reprocess:"},
		"empty range":      {schedule.BackfillSpec{Workflow: "wf", From: day(1).Add(time.Hour), To: day(1).Add(2 * time.Hour)}, "no logical time"},
		"other workflow":   {schedule.BackfillSpec{Workflow: "other", Schedule: "daily", From: day(1), To: day(5)}, "starts workflow wf"},
	} {
		for _, dry := range []bool{false, true} {
			err := pgxBegin(e, func(q *db.Queries) error {
				_, _, err := schedule.CreateBackfill(e.ctx, q, tc.spec, dry)
				return err
			})
			var inv *schedule.InvalidError
			if !errors.As(err, &inv) || !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("%s (dry %v): %v, want %q", name, dry, err, tc.msg)
			}
		}
	}
	if n := e.int("SELECT count(*) FROM backfills"); n != 0 {
		t.Fatalf("%d backfills stored", n)
	}
}

func TestBackfillPauseCancel(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	b := e.backfill(schedule.BackfillSpec{From: day(1), To: day(10), Parallel: 2})
	e.tx(func(q *db.Queries) error { return schedule.SetBackfillState(e.ctx, q, b.ID, "paused") })
	if res := e.admit(e.pool); res.Started != 0 {
		t.Fatal("a paused backfill admitted runs")
	}
	e.tx(func(q *db.Queries) error { return schedule.SetBackfillState(e.ctx, q, b.ID, "running") })
	if res := e.admit(e.pool); res.Started != 2 {
		t.Fatalf("resumed: started %d", res.Started)
	}
	e.tx(func(q *db.Queries) error { return schedule.SetBackfillState(e.ctx, q, b.ID, "canceled") })
	for _, r := range e.backfillRuns(b.ID) {
		e.endRun(r, "succeeded")
	}
	if res := e.admit(e.pool); res.Started != 0 {
		t.Fatal("a canceled backfill admitted runs")
	}
	err := pgxBegin(e, func(q *db.Queries) error { return schedule.SetBackfillState(e.ctx, q, b.ID, "running") })
	if err == nil || !strings.Contains(err.Error(), "is canceled") {
		t.Fatalf("resume of a canceled backfill: %v", err)
	}
}
