package schedule_test

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/calendar"
	"github.com/baton-scheduler/baton/internal/schedule"
)

// 100 fire times, one pass per minute: one ledger row each, what preview said.
func TestHundredFireTimes(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.create(schedule.Spec{Name: "every-minute", Cron: "* * * * *", Overlap: schedule.OverlapAllow})
	var preview []schedule.PreviewItem
	e.tx(func(q *db.Queries) error {
		var err error
		preview, err = schedule.Preview(e.ctx, q, "every-minute", 100, &e.now)
		return err
	})
	start := e.now
	for i := 1; i <= 100; i++ {
		if res := e.at(start.Add(time.Duration(i) * time.Minute)); res.Started != 1 {
			t.Fatalf("minute %d: started %d", i, res.Started)
		}
	}
	if n := e.int("SELECT count(*) FROM schedule_fires WHERE outcome = 'started'"); n != 100 {
		t.Fatalf("%d started fires", n)
	}
	rows, _ := e.pool.Query(e.ctx, "SELECT nominal_time FROM schedule_fires ORDER BY nominal_time")
	var i int
	for rows.Next() {
		var at time.Time
		_ = rows.Scan(&at)
		if !at.Equal(preview[i].Nominal) {
			t.Fatalf("fire %d at %s, preview said %s", i, at, preview[i].Nominal)
		}
		i++
	}
	if lag := e.int("SELECT max(lag_ms) FROM schedule_fires"); lag != 0 {
		t.Fatalf("lag %d ms with the clock exactly at each due time", lag)
	}
	e.checkLedger()
}

// Several firing services (separate pools, as separate masters) race over the
// same due times: exactly one ledger row and at most one run per fire time.
func TestConcurrentFirers(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	for i := range 5 {
		e.create(schedule.Spec{Name: fmt.Sprintf("s%d", i), Cron: fmt.Sprintf("*/%d * * * *", i+1), Overlap: schedule.OverlapAllow})
	}
	const firers = 4
	pools := make([]*pgxpool.Pool, firers)
	for i := range pools {
		p, err := pgxpool.New(e.ctx, e.url)
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		pools[i] = p
	}
	start := e.now
	for step := 1; step <= 100; step++ {
		now := start.Add(time.Duration(step) * time.Minute)
		var wg sync.WaitGroup
		errs := make([]error, firers)
		for i := range firers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range 100 {
					res, err := schedule.FirePass(e.ctx, pools[i], schedule.FireConfig{Now: &now, Batch: 2})
					if err != nil {
						errs[i] = err
						return
					}
					if !res.More {
						return
					}
				}
			}()
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	// Expected: schedule i fires every i+1 minutes within (start, start+100m].
	want := 0
	for i := range 5 {
		want += 100 / (i + 1)
	}
	if n := e.int("SELECT count(*) FROM schedule_fires"); n != int64(want) {
		t.Fatalf("%d ledger rows, want %d", n, want)
	}
	if n := e.int("SELECT count(*) FROM workflow_runs"); n != int64(want) {
		t.Fatalf("%d runs, want %d (one per fire time)", n, want)
	}
	if n := e.int("SELECT count(*) FROM schedules WHERE next_fire_at <= $1", start.Add(100*time.Minute)); n != 0 {
		t.Fatalf("%d schedules left due", n)
	}
	e.checkLedger()
}

func TestOverlapPolicies(t *testing.T) {
	t.Parallel()
	// Every 10 minutes from 10:10; the first run never ends until the test ends it.
	for _, tc := range []struct {
		overlap   string
		maxActive int
		want      []string // ledger after 10:10..10:40
		active    int
	}{
		{schedule.OverlapSkip, 0, []string{"10:10 started", "10:20 skipped/overlap", "10:30 skipped/overlap", "10:40 skipped/overlap"}, 1},
		{schedule.OverlapBufferOne, 0, []string{"10:10 started", "10:20 buffered", "10:30 skipped/buffer_full", "10:40 skipped/buffer_full"}, 1},
		{schedule.OverlapBufferAll, 0, []string{"10:10 started", "10:20 buffered", "10:30 buffered", "10:40 skipped/buffer_full"}, 1},
		{schedule.OverlapCancelOther, 0, []string{"10:10 started", "10:20 started", "10:30 started", "10:40 started"}, 1},
		{schedule.OverlapAllow, 0, []string{"10:10 started", "10:20 started", "10:30 started", "10:40 started"}, 4},
		{schedule.OverlapAllow, 2, []string{"10:10 started", "10:20 started", "10:30 skipped/max_active_runs", "10:40 skipped/max_active_runs"}, 2},
	} {
		t.Run(fmt.Sprintf("%s/max%d", tc.overlap, tc.maxActive), func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			e.create(schedule.Spec{Name: "s", Cron: "*/10 * * * *", Overlap: tc.overlap, MaxActiveRuns: tc.maxActive, BufferMax: 2})
			for _, m := range []string{"10:10", "10:20", "10:30", "10:40"} {
				e.at(hm(e.now, m))
			}
			e.expectLedger("s", tc.want...)
			if got := len(e.activeRuns("s")); got != tc.active {
				t.Fatalf("%d active runs, want %d", got, tc.active)
			}
			if tc.overlap == schedule.OverlapCancelOther {
				if n := e.int("SELECT count(*) FROM workflow_runs WHERE state = 'canceled'"); n != 3 {
					t.Fatalf("%d runs canceled, want 3", n)
				}
			}
			if strings.HasPrefix(tc.overlap, "buffer") {
				// Ending the active run starts the oldest buffered fire, and
				// only one at a time.
				buffered := len(tc.want) - 1 - strings.Count(strings.Join(tc.want, ","), "skipped")
				for i := 0; i < buffered; i++ {
					run := e.activeRuns("s")
					e.endRun(run[0], "succeeded")
					if res := e.at(e.now.Add(time.Second)); res.Started != 1 {
						t.Fatalf("buffered fire %d: started %d", i, res.Started)
					}
					if n := len(e.activeRuns("s")); n != 1 {
						t.Fatalf("%d active runs after a buffered start", n)
					}
				}
				if n := e.int("SELECT count(*) FROM schedule_fires WHERE outcome = 'buffered'"); n != 0 {
					t.Fatalf("%d fires still buffered", n)
				}
				if n := e.int("SELECT buffered FROM schedules"); n != 0 {
					t.Fatalf("buffered counter %d", n)
				}
			}
			e.checkLedger()
		})
	}
}

func TestCatchup(t *testing.T) {
	t.Parallel()
	// Hourly from 11:00; the masters come back at 15:30 (missed 11:00..15:00).
	for _, tc := range []struct {
		catchup string
		window  time.Duration
		max     int
		want    []string
	}{
		{schedule.CatchupNone, 0, 0, []string{"11:00 skipped/catchup_none", "12:00 skipped/catchup_none", "13:00 skipped/catchup_none",
			"14:00 skipped/catchup_none", "15:00 skipped/catchup_none"}},
		{schedule.CatchupLatest, 0, 0, []string{"11:00 skipped/catchup_superseded", "12:00 skipped/catchup_superseded",
			"13:00 skipped/catchup_superseded", "14:00 skipped/catchup_superseded", "15:00 started"}},
		{schedule.CatchupAll, 0, 0, []string{"11:00 started", "12:00 started", "13:00 started", "14:00 started", "15:00 started"}},
		{schedule.CatchupAll, 0, 2, []string{"11:00 skipped/catchup_bound", "12:00 skipped/catchup_bound", "13:00 skipped/catchup_bound",
			"14:00 started", "15:00 started"}},
		{schedule.CatchupAll, 150 * time.Minute, 0, []string{"11:00 skipped/outside_catchup_window", "12:00 skipped/outside_catchup_window",
			"13:00 started", "14:00 started", "15:00 started"}},
		{schedule.CatchupLatest, 10 * time.Minute, 0, []string{"11:00 skipped/outside_catchup_window", "12:00 skipped/outside_catchup_window",
			"13:00 skipped/outside_catchup_window", "14:00 skipped/outside_catchup_window", "15:00 skipped/outside_catchup_window"}},
	} {
		t.Run(fmt.Sprintf("%s/window%s/max%d", tc.catchup, tc.window, tc.max), func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			e.create(schedule.Spec{Name: "s", Cron: "@hourly", Overlap: schedule.OverlapAllow, Catchup: tc.catchup,
				CatchupWindow: tc.window, CatchupMax: tc.max})
			e.at(hm(e.now, "15:30"))
			e.expectLedger("s", tc.want...)
			// Back on time: the next one fires normally.
			e.at(hm(e.now, "16:00"))
			if got := e.ledger("s"); got[len(got)-1] != "16:00 started" {
				t.Fatalf("after catch-up: %v", got)
			}
			e.checkLedger()
		})
	}
}

// A long outage of a per-minute schedule: every minute gets its row, in
// bounded transactions, and no storm of runs.
func TestLongOutageBounded(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.create(schedule.Spec{Name: "s", Cron: "* * * * *", Overlap: schedule.OverlapAllow, Catchup: schedule.CatchupAll,
		CatchupWindow: 48 * time.Hour, CatchupMax: 5})
	res := e.at(e.now.Add(36 * time.Hour))
	if n := e.int("SELECT count(*) FROM schedule_fires"); n != 36*60 {
		t.Fatalf("%d ledger rows, want %d", n, 36*60)
	}
	if res.Started != 5 {
		t.Fatalf("started %d after the outage, want the bound 5", res.Started)
	}
}

func TestPauseAndPauseOnFailure(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.create(schedule.Spec{Name: "s", Cron: "*/10 * * * *", PauseOnFailure: true})
	e.at(hm(e.now, "10:10"))
	run := e.activeRuns("s")[0]
	e.endRun(run, "failed")
	res := e.at(hm(e.now, "10:20"))
	if res.Paused != 1 {
		t.Fatalf("paused %d schedules", res.Paused)
	}
	e.expectLedger("s", "10:10 started", "10:20 skipped/paused")
	var s schedule.Schedule
	e.tx(func(q *db.Queries) error {
		var err error
		s, err = schedule.Get(e.ctx, q, "s")
		return err
	})
	if !s.Paused || !strings.Contains(s.PausedReason, fmt.Sprintf("run %d failed", run)) {
		t.Fatalf("schedule: paused %v %q", s.Paused, s.PausedReason)
	}
	e.tx(func(q *db.Queries) error { return schedule.SetPaused(e.ctx, q, "s", false, "") })
	e.at(hm(e.now, "10:30"))
	e.expectLedger("s", "10:10 started", "10:20 skipped/paused", "10:30 started")
	// A succeeded run does not pause it; the failure already seen does not again.
	e.endRun(e.activeRuns("s")[0], "succeeded")
	if res := e.at(hm(e.now, "10:40")); res.Paused != 0 || res.Started != 1 {
		t.Fatalf("after success: %+v", res)
	}
	// Without pause_on_failure a failure pauses nothing.
	e.create(schedule.Spec{Name: "t", Cron: "*/10 * * * *"})
	e.at(hm(e.now, "10:50"))
	e.endRun(e.activeRuns("t")[0], "failed")
	if res := e.at(hm(e.now, "11:00")); res.Paused != 0 {
		t.Fatal("paused a schedule without pause_on_failure")
	}
	e.checkLedger()
}

func TestJitter(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	for i := range 20 {
		e.create(schedule.Spec{Name: fmt.Sprintf("j%d", i), Cron: "@hourly", Jitter: 5 * time.Minute, Overlap: schedule.OverlapAllow})
	}
	if n := e.int("SELECT count(*) FROM schedules WHERE next_fire_at < next_nominal_at OR next_fire_at >= next_nominal_at + interval '5 minutes'"); n != 0 {
		t.Fatalf("%d due times outside [nominal, nominal + jitter)", n)
	}
	if n := e.int("SELECT count(DISTINCT next_fire_at) FROM schedules"); n < 10 {
		t.Fatalf("jitter spread 20 schedules over %d instants", n)
	}
	// Step through the hour second by second around it: each fires exactly when due.
	for s := 0; s <= 300; s += 5 {
		now := hm(e.now, "11:00").Add(time.Duration(s) * time.Second)
		e.at(now)
		if n := e.int("SELECT count(*) FROM schedule_fires f JOIN schedules s ON s.id = f.schedule_id WHERE f.nominal_time = $1 AND f.started_at IS NOT NULL AND f.lag_ms > 300000", hm(e.now, "11:00")); n != 0 {
			t.Fatalf("a fire lagged more than the jitter")
		}
		if n := e.int(`SELECT count(*) FROM schedules s WHERE s.next_nominal_at = $1 AND s.next_fire_at <= $2`, hm(e.now, "11:00"), now); n != 0 {
			t.Fatalf("%d schedules due but not fired", n)
		}
	}
	if n := e.int("SELECT count(*) FROM schedule_fires WHERE outcome = 'started'"); n != 20 {
		t.Fatalf("%d started", n)
	}
	// Each fired at the first 5-second step at or after its due instant.
	rows, err := e.pool.Query(e.ctx, "SELECT schedule_id, nominal_time, started_at FROM schedule_fires")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id int64
		var nominal, started time.Time
		if err := rows.Scan(&id, &nominal, &started); err != nil {
			t.Fatal(err)
		}
		due := nominal.Add(calendar.Jitter(id, nominal, 5*time.Minute))
		if started.Before(due) || !started.Before(due.Add(5*time.Second)) {
			t.Fatalf("schedule %d fired at %s, due %s", id, started, due)
		}
	}
}

func TestBadInputStoresNothing(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	for name, tc := range map[string]struct {
		spec schedule.Spec
		msg  string
	}{
		"invalid cron":     {schedule.Spec{Name: "a", Workflow: "wf", Cron: "61 * * * *"}, `cron: invalid cron expression "61 * * * *"`},
		"unknown zone":     {schedule.Spec{Name: "a", Workflow: "wf", Cron: "@daily", Zone: "Mars/Olympus"}, `zone: unknown time zone "Mars/Olympus"`},
		"unknown workflow": {schedule.Spec{Name: "a", Workflow: "nope", Cron: "@daily"}, `workflow: unknown workflow "nope"`},
		"bad overlap":      {schedule.Spec{Name: "a", Workflow: "wf", Cron: "@daily", Overlap: "queue"}, `overlap: unknown policy "queue"`},
		"bad params":       {schedule.Spec{Name: "a", Workflow: "wf", Cron: "@daily", Params: map[string]any{"nope": 1}}, "params:"},
		"bad name":         {schedule.Spec{Name: "a b", Workflow: "wf", Cron: "@daily"}, "name:"},
		"end before start": {schedule.Spec{Name: "a", Workflow: "wf", Cron: "@daily", Start: ptr(e.now), End: ptr(e.now.Add(-time.Hour))}, "end: end"},
	} {
		var got error
		_ = pgxBegin(e, func(q *db.Queries) error {
			_, got = schedule.Create(e.ctx, q, tc.spec, &e.now)
			return got
		})
		var inv *schedule.InvalidError
		if !errors.As(got, &inv) || !strings.Contains(got.Error(), tc.msg) {
			t.Errorf("%s: %v, want InvalidError with %q", name, got, tc.msg)
		}
	}
	if n := e.int("SELECT count(*) FROM schedules"); n != 0 {
		t.Fatalf("%d schedules stored", n)
	}
	e.create(schedule.Spec{Name: "dup", Cron: "@daily"})
	err := pgxBegin(e, func(q *db.Queries) error {
		_, err := schedule.Create(e.ctx, q, schedule.Spec{Name: "dup", Workflow: "wf", Cron: "@hourly"}, &e.now)
		return err
	})
	if !errors.Is(err, schedule.ErrExists) {
		t.Fatalf("duplicate: %v", err)
	}
}

func ptr[T any](v T) *T { return &v }
