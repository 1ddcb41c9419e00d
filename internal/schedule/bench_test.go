package schedule_test

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/baton-scheduler/baton/batontest"
	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/master"
	"github.com/baton-scheduler/baton/internal/schedule"
	"github.com/baton-scheduler/baton/internal/workflow"
)

// BenchmarkFireLag1000: 1,000 schedules due in the same second, fired by two
// real masters (their scheduler services, default settings). It prints the
// lag (actual − nominal) as recorded in the ledger (lag_ms, written inside the
// firing transaction) and as seen by a reader polling every 2 ms (after
// commit). Run on the durable server:
//
//	BATON_TEST_DATABASE_URL=postgres://baton:baton@127.0.0.1:5433/postgres \
//	  go test -run '^$' -bench BenchmarkFireLag1000 -benchtime 1x ./internal/schedule
//
// The masters are warm: they fired a first burst of as many schedules (not
// measured) before, as a running master has. BenchmarkFireLag1000Cold measures
// masters whose connections fire for the first time.
func BenchmarkFireLag1000(b *testing.B) {
	for range b.N {
		fireLag(b, 1000, true)
	}
}

// BenchmarkFireLag1000Cold is BenchmarkFireLag1000 with masters that never
// fired before (each connection plans the batch statements and compiles the
// plpgsql functions on its first fires).
func BenchmarkFireLag1000Cold(b *testing.B) {
	for range b.N {
		fireLag(b, 1000, false)
	}
}

// BenchmarkFireLag100 is the same with 100 schedules.
func BenchmarkFireLag100(b *testing.B) {
	for range b.N {
		fireLag(b, 100, true)
	}
}

func fireLag(b *testing.B, n int, warm bool) {
	ctx := context.Background()
	pool, url := srv.NewPool(b)
	batontest.NewGroup(b, pool, nil)
	if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		_, err := workflow.Apply(ctx, db.New(tx), workflow.Definition{Name: "wf", Steps: []workflow.Step{{Name: "s", Group: "g", Kind: "noop"}}})
		return err
	}); err != nil {
		b.Fatal(err)
	}
	// Two masters, running before the schedules exist.
	mctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 2)
	for i := range 2 {
		m, err := master.New(ctx, master.Config{DatabaseURL: url, Name: fmt.Sprintf("bench-%d", i), Logger: zaptest.NewLogger(b, zaptest.Level(zap.WarnLevel))})
		if err != nil {
			b.Fatal(err)
		}
		go func() { done <- m.Run(mctx) }()
	}
	defer func() {
		cancel()
		<-done
		<-done
	}()
	if warm {
		if _, err := pool.Exec(ctx, `
			WITH t AS (SELECT date_trunc('second', now()) + interval '2 seconds' AS at)
			INSERT INTO schedules (name, workflow_id, interval_ms, anchor_at, overlap, next_nominal_at, next_fire_at)
			SELECT 'warm-' || g, (SELECT id FROM workflows WHERE name = 'wf'), 3600000, t.at, 'allow', t.at, t.at
			FROM generate_series(1, $1) g, t`, n); err != nil {
			b.Fatal(err)
		}
		for deadline := time.Now().Add(time.Minute); ; time.Sleep(10 * time.Millisecond) {
			var left int
			if err := pool.QueryRow(ctx, "SELECT count(*) FROM schedules WHERE next_fire_at <= now() + interval '1 minute'").Scan(&left); err != nil {
				b.Fatal(err)
			}
			if left == 0 {
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("warm-up: %d schedules not fired in 1 minute", left)
			}
		}
	}
	var due time.Time
	if err := pool.QueryRow(ctx, `
		WITH t AS (SELECT date_trunc('second', now()) + interval '3 seconds' AS at)
		INSERT INTO schedules (name, workflow_id, interval_ms, anchor_at, overlap, next_nominal_at, next_fire_at)
		SELECT 'lag-' || g, (SELECT id FROM workflows WHERE name = 'wf'), 3600000, t.at, 'allow', t.at, t.at
		FROM generate_series(1, $1) g, t
		RETURNING next_fire_at`, n).Scan(&due); err != nil && !strings.Contains(err.Error(), "more than one row") {
		b.Fatal(err)
	}
	if err := pool.QueryRow(ctx, "SELECT min(next_fire_at) FROM schedules WHERE name LIKE 'lag-%'").Scan(&due); err != nil {
		b.Fatal(err)
	}
	// Poll what is visible (committed) every 2 ms. Ids are not committed in
	// order (two masters), so every poll reads every row not seen yet.
	var visible []time.Duration
	seen := []int64{}
	deadline := time.Now().Add(time.Minute)
	for len(visible) < n {
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d fired in 1 minute", len(visible), n)
		}
		rows, err := pool.Query(ctx, `SELECT f.id, clock_timestamp() - f.nominal_time FROM schedule_fires f
			JOIN schedules s ON s.id = f.schedule_id WHERE s.name LIKE 'lag-%' AND NOT (f.id = ANY ($1))`, seen)
		if err != nil {
			b.Fatal(err)
		}
		for rows.Next() {
			var id int64
			var lag time.Duration
			if err := rows.Scan(&id, &lag); err != nil {
				b.Fatal(err)
			}
			seen = append(seen, id)
			visible = append(visible, lag)
		}
		if rows.Err() != nil {
			b.Fatal(rows.Err())
		}
		time.Sleep(2 * time.Millisecond)
	}
	var recorded []time.Duration
	rows, err := pool.Query(ctx, "SELECT f.lag_ms FROM schedule_fires f JOIN schedules s ON s.id = f.schedule_id WHERE s.name LIKE 'lag-%' AND f.outcome = 'started'")
	if err != nil {
		b.Fatal(err)
	}
	for rows.Next() {
		var ms int64
		_ = rows.Scan(&ms)
		recorded = append(recorded, time.Duration(ms)*time.Millisecond)
	}
	if len(recorded) != n {
		b.Fatalf("%d started of %d", len(recorded), n)
	}
	var runs int64
	_ = pool.QueryRow(ctx, "SELECT count(*) FROM schedule_fires f JOIN schedules s ON s.id = f.schedule_id JOIN workflow_runs r ON r.id = f.run_id WHERE s.name LIKE 'lag-%'").Scan(&runs)
	pct := func(d []time.Duration, p float64) time.Duration {
		sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
		return d[min(len(d)-1, int(float64(len(d))*p))]
	}
	b.ReportMetric(float64(pct(visible, 0.5).Milliseconds()), "p50_visible_ms")
	b.ReportMetric(float64(pct(visible, 0.95).Milliseconds()), "p95_visible_ms")
	b.ReportMetric(float64(pct(visible, 0.99).Milliseconds()), "p99_visible_ms")
	load, _ := os.ReadFile("/proc/loadavg")
	fmt.Printf("fire lag, %d schedules due at %s, 2 masters (warm %v): recorded p50 %s p95 %s p99 %s max %s; visible (committed) p50 %s p95 %s p99 %s max %s; runs %d; load average %s\n",
		n, due.UTC().Format(time.RFC3339), warm, pct(recorded, 0.5), pct(recorded, 0.95), pct(recorded, 0.99), pct(recorded, 1),
		pct(visible, 0.5), pct(visible, 0.95), pct(visible, 0.99), pct(visible, 1), runs, strings.Join(strings.Fields(string(load))[:3], " "))
}

// BenchmarkDueScanPlan prints the plan of every query of a scheduler pass
// (the due, buffered, failed-run and backfill scans, the next-due query) with
// 100,000 enabled schedules, none due, and times the due scan:
//
//	BATON_TEST_DATABASE_URL=postgres://baton:baton@127.0.0.1:5433/postgres \
//	  go test -run '^$' -bench BenchmarkDueScanPlan -benchtime 2000x ./internal/schedule
func BenchmarkDueScanPlan(b *testing.B) {
	ctx := context.Background()
	pool, _ := srv.NewPool(b)
	batontest.NewGroup(b, pool, nil)
	if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		_, err := workflow.Apply(ctx, db.New(tx), workflow.Definition{Name: "wf", Steps: []workflow.Step{{Name: "s", Group: "g", Kind: "noop"}}})
		return err
	}); err != nil {
		b.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `
		INSERT INTO schedules (name, workflow_id, cron, overlap, pause_on_failure, next_nominal_at, next_fire_at)
		SELECT 'idle-' || g, (SELECT id FROM workflows WHERE name = 'wf'), '@daily',
		       (ARRAY['skip', 'buffer_one', 'allow'])[1 + g % 3], g % 2 = 0,
		       now() + interval '1 hour' + g * interval '1 second', now() + interval '1 hour' + g * interval '1 second'
		FROM generate_series(1, 100000) g`); err != nil {
		b.Fatal(err)
	}
	if _, err := pool.Exec(ctx, "ANALYZE schedules"); err != nil {
		b.Fatal(err)
	}
	for _, q := range []struct{ name, sql string }{
		{"ScheduleLockDue", db.ScheduleLockDue},
		{"ScheduleNextDueIn", db.ScheduleNextDueIn},
		{"ScheduleLockBuffered", db.ScheduleLockBuffered},
		{"ScheduleLockFailed", db.ScheduleLockFailed},
		{"BackfillLockRunning", db.BackfillLockRunning},
	} {
		args := []any{nil, int32(50)}
		switch q.name {
		case "ScheduleNextDueIn":
			args = []any{nil}
		case "ScheduleLockBuffered", "ScheduleLockFailed", "BackfillLockRunning":
			args = []any{int32(50)}
		}
		rows, err := pool.Query(ctx, "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) "+q.sql, args...)
		if err != nil {
			b.Fatal(err)
		}
		plan, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			b.Fatal(err)
		}
		fmt.Printf("-- %s, 100,000 enabled schedules, none due\n%s\n\n", q.name, strings.Join(plan, "\n"))
	}
	b.ResetTimer()
	for range b.N {
		if _, err := pool.Exec(ctx, db.ScheduleLockDue, nil, int32(50)); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkIdlePass: the cost of one master's scheduler pass (schedule.FirePass:
// the pause-on-failure, buffered and due scans, each its own transaction; the
// next-due query; the backfill admission pass) with N enabled schedules of
// which none is due. Flat in N: every scan is an index probe that finds nothing.
//
//	BATON_TEST_DATABASE_URL=postgres://baton:baton@127.0.0.1:5433/postgres \
//	  go test -run '^$' -bench BenchmarkIdlePass -benchtime 500x ./internal/schedule
func BenchmarkIdlePass(b *testing.B) {
	for _, n := range []int{1000, 10000, 100000} {
		b.Run(fmt.Sprintf("schedules=%d", n), func(b *testing.B) {
			ctx := context.Background()
			pool, _ := srv.NewPool(b)
			batontest.NewGroup(b, pool, nil)
			if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
				_, err := workflow.Apply(ctx, db.New(tx), workflow.Definition{Name: "wf", Steps: []workflow.Step{{Name: "s", Group: "g", Kind: "noop"}}})
				return err
			}); err != nil {
				b.Fatal(err)
			}
			// Idle schedules with every policy a pass looks at.
			if _, err := pool.Exec(ctx, `
				INSERT INTO schedules (name, workflow_id, cron, overlap, pause_on_failure, next_nominal_at, next_fire_at)
				SELECT 'idle-' || g, (SELECT id FROM workflows WHERE name = 'wf'), '@daily',
				       (ARRAY['skip', 'buffer_one', 'allow'])[1 + g % 3], g % 2 = 0,
				       now() + interval '1 hour' + g * interval '1 second', now() + interval '1 hour' + g * interval '1 second'
				FROM generate_series(1, $1) g`, n); err != nil {
				b.Fatal(err)
			}
			if _, err := pool.Exec(ctx, "ANALYZE schedules"); err != nil {
				b.Fatal(err)
			}
			q := db.New(pool)
			pass := func() {
				res, err := schedule.FirePass(ctx, pool, schedule.FireConfig{})
				if err != nil || res.Schedules != 0 {
					b.Fatalf("%+v, %v", res, err)
				}
				if _, _, err := schedule.NextDueIn(ctx, q, nil); err != nil {
					b.Fatal(err)
				}
				if _, err := schedule.AdmitBackfills(ctx, pool, nil, 0); err != nil {
					b.Fatal(err)
				}
			}
			for range 20 { // connections and cached plans warm (make bench runs 1x)
				pass()
			}
			b.ResetTimer()
			for range b.N {
				pass()
			}
			b.ReportMetric(float64(b.Elapsed().Microseconds())/1000/float64(b.N), "ms/pass")
		})
	}
}
