package master

import (
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/baton-scheduler/baton/batontest"
	"github.com/baton-scheduler/baton/db"
)

// A generic plan of TaskFinish made while tasks was nearly empty scans every task
// per result, and Postgres keeps it as the table grows; once tasks has grown by
// its own size the analyzer analyzes it, which replaces that plan with one that
// probes the primary key. Below analyzeMinRows, and right after, it does nothing.
func TestAnalyzerReplansGrownTasks(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{})
	ctx := b.ctx
	if did, err := b.m.analyzer.runOnce(b.within()); err != nil || did {
		t.Fatalf("empty tasks: analyzed = %v, %v", did, err)
	}

	// A worker connection's cached plan, made on the empty table.
	conn, err := b.pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, "SET plan_cache_mode = force_generic_plan"); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Conn().Prepare(ctx, "finish", db.TaskFinish); err != nil {
		t.Fatal(err)
	}
	plan := func() string {
		t.Helper()
		rows, _ := conn.Query(ctx, `EXPLAIN EXECUTE finish('{1}', '{1}', '{1}', '{succeeded}', '{0}', '{""}', '{""}', '{0}', '{""}', -1, false, 7000)`)
		lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		return strings.Join(lines, "\n")
	}
	if p := plan(); !strings.Contains(p, "Seq Scan on tasks") {
		t.Fatalf("the plan made on the empty table does not scan tasks; this test shows nothing:\n%s", p)
	}

	b.exec("INSERT INTO worker_groups (name) VALUES ('g')")
	b.exec(`INSERT INTO tasks (group_name, kind, state, finished_at)
		SELECT 'g', 'noop', 'succeeded', now() FROM generate_series(1, 20000)`)
	b.exec("SELECT pg_stat_force_next_flush()") // the counters the analyzer reads
	if p := plan(); !strings.Contains(p, "Seq Scan on tasks") {
		t.Fatalf("20,000 rows later, without new statistics, the cached plan changed:\n%s", p)
	}
	// A role that may not analyze tasks does not try (ANALYZE would only warn).
	role := "baton_analyzer_test_" + strings.ReplaceAll(strings.ToLower(t.Name()), "/", "_")
	b.exec("DO $$ BEGIN CREATE ROLE " + role + " NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
	b.exec("GRANT USAGE ON SCHEMA baton TO " + role)
	batontest.WaitFor(t, 30*time.Second, func() (bool, string) {
		var asOwner, asOther bool
		tx, err := b.pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = tx.Rollback(ctx) }()
		q := db.New(tx)
		if asOwner, err = q.StatsTasksStale(ctx, analyzeMinRows); err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, "SET LOCAL ROLE "+role); err != nil {
			t.Fatal(err)
		}
		if asOther, err = q.StatsTasksStale(ctx, analyzeMinRows); err != nil {
			t.Fatal(err)
		}
		if asOther {
			t.Fatal("a role that may not analyze tasks finds it stale")
		}
		return asOwner, "tasks stale for its owner"
	})
	batontest.WaitFor(t, 30*time.Second, func() (bool, string) {
		did, err := b.m.analyzer.runOnce(b.within())
		if err != nil {
			t.Fatal(err)
		}
		return did, "tasks analyzed"
	})
	if p := plan(); strings.Contains(p, "Seq Scan on tasks") || !strings.Contains(p, "Index Scan using tasks_pkey") {
		t.Fatalf("after ANALYZE the plan still scans tasks:\n%s", p)
	}
	if n := b.int64("SELECT reltuples::bigint FROM pg_class WHERE oid = 'tasks'::regclass"); n < 15000 {
		t.Fatalf("reltuples %d after the analyzer ran", n)
	}
	if did, err := b.m.analyzer.runOnce(b.within()); err != nil || did {
		t.Fatalf("just analyzed: analyzed again = %v, %v", did, err)
	}
}
