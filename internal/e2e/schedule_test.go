package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/baton-scheduler/baton/batontest"
	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/schedule"
	"github.com/baton-scheduler/baton/internal/workflow"
)

// TestScheduleMastersKilled: three real baton-master processes fire four
// schedules (every second, 30 fire times each: 120 in all, bounded by the
// schedules' end) while a chaos loop SIGKILLs masters (and restarts them) and
// SIGSTOPs them for up to 2 s at random moments. At the end: exactly one
// ledger row per fire time (none missing, none extra), every started row with
// its own run, at most one run per fire time, and no scheduled run without
// its ledger row. Real time is short here (interval schedules of 1 s), so no
// clock is injected.
func TestScheduleMastersKilled(t *testing.T) {
	pool, dsn := srv.NewPool(t)
	c := NewCluster(t, pool, dsn, group)
	ctx := context.Background()
	batontest.NewGroup(t, pool, &batontest.GroupOpts{Name: batontest.Ptr("sched")})
	const (
		nSched = 4
		nFires = 30
	)
	var ids []int64
	var start time.Time
	c.Scan(`SELECT date_trunc('second', now()) + interval '4 seconds'`, nil, &start)
	end := start.Add((nFires - 1) * time.Second)
	if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		q := db.New(tx)
		if _, err := workflow.Apply(ctx, q, workflow.Definition{Name: "tick", Steps: []workflow.Step{{Name: "s", Group: "sched", Kind: "noop"}}}); err != nil {
			return err
		}
		for i := range nSched {
			s, err := schedule.Create(ctx, q, schedule.Spec{Name: fmt.Sprintf("tick-%d", i), Workflow: "tick", Interval: time.Second,
				Start: &start, End: &end, Overlap: schedule.OverlapAllow}, nil)
			if err != nil {
				return err
			}
			ids = append(ids, s.ID)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	names := []string{"m1", "m2", "m3"}
	procs := map[string]*Proc{}
	for _, n := range names {
		procs[n] = c.StartMaster(n)
	}
	// Chaos until past the last fire time: a random master is SIGKILLed (and
	// restarted after a moment) or SIGSTOPped for up to 2 s; at least one
	// master is left running at every moment.
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 17))
	kills, stops := 0, 0
	for {
		var now time.Time
		c.Scan(`SELECT now()`, nil, &now)
		if now.After(end.Add(time.Second)) {
			break
		}
		time.Sleep(time.Duration(200+rng.IntN(600)) * time.Millisecond)
		victim := names[rng.IntN(len(names))]
		p := procs[victim]
		if rng.IntN(2) == 0 {
			p.Kill()
			kills++
			time.Sleep(time.Duration(rng.IntN(1000)) * time.Millisecond)
			procs[victim] = c.StartMaster(victim)
		} else {
			p.Stop()
			stops++
			time.Sleep(time.Duration(100+rng.IntN(1900)) * time.Millisecond)
			if rng.IntN(3) == 0 {
				p.Kill() // killed while stopped, mid-transaction perhaps
				kills++
				procs[victim] = c.StartMaster(victim)
			} else {
				p.Cont()
			}
		}
	}
	t.Logf("chaos: %d SIGKILLs, %d SIGSTOPs over %d fire times", kills, stops, nSched*nFires)
	// Every schedule reaches its end: no fire time is left.
	WaitFor(t, startTimeout, func() (bool, string) {
		n := c.Int(`SELECT count(*) FROM schedules WHERE next_nominal_at IS NOT NULL`)
		return n == 0, fmt.Sprintf("%d schedules not past their end", n)
	})
	expectNone(c, "fire times missing from the ledger or recorded twice",
		`SELECT s.name || ' ' || g.at || ': ' || count(f.id) FROM schedules s
		 CROSS JOIN generate_series($1::timestamptz, $2::timestamptz, interval '1 second') g(at)
		 LEFT JOIN schedule_fires f ON f.schedule_id = s.id AND f.nominal_time = g.at
		 GROUP BY s.name, g.at HAVING count(f.id) <> 1 ORDER BY 1`, start, end)
	expectNone(c, "ledger rows that are not fire times",
		`SELECT schedule_id || ' ' || nominal_time FROM schedule_fires WHERE nominal_time NOT BETWEEN $1 AND $2
		   OR extract(microseconds FROM nominal_time - $1) % 1000000 <> 0 ORDER BY 1`, start, end)
	expectNone(c, "started rows without a run of their own",
		`SELECT f.id || ' run ' || coalesce(f.run_id::text, 'NULL') FROM schedule_fires f
		 WHERE f.outcome = 'started' AND (f.run_id IS NULL OR NOT EXISTS (SELECT 1 FROM workflow_runs r WHERE r.id = f.run_id)
		   OR (SELECT count(*) FROM schedule_fires o WHERE o.run_id = f.run_id) <> 1)`)
	expectNone(c, "runs that no started ledger row holds (a second run of a fire time)",
		`SELECT r.id || ' ' || coalesce(r.idempotency_key, '') FROM workflow_runs r
		 WHERE NOT EXISTS (SELECT 1 FROM schedule_fires f WHERE f.run_id = r.id AND f.outcome = 'started')`)
	expectNone(c, "skipped rows whose reason is not a catch-up of a late fire",
		`SELECT schedule_id || ' ' || nominal_time || ' ' || reason FROM schedule_fires
		 WHERE outcome = 'skipped' AND reason NOT IN ('catchup_superseded', 'outside_catchup_window')`)
	if got := c.Int(`SELECT count(*) FROM schedule_fires`); got != nSched*nFires {
		t.Errorf("%d ledger rows, want %d", got, nSched*nFires)
	}
	started := c.Int(`SELECT count(*) FROM schedule_fires WHERE outcome = 'started'`)
	runs := c.Int(`SELECT count(*) FROM workflow_runs`)
	t.Logf("%d ledger rows, %d started, %d runs", c.Int(`SELECT count(*) FROM schedule_fires`), started, runs)
	if started != runs {
		t.Errorf("%d started fire times, %d runs", started, runs)
	}
}
