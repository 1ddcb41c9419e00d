package retention_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/baton-scheduler/baton/db"
)

// TestExplainAtScale loads 1,000,000 tasks (with their attempts), 100,000 ended
// worker sessions with their failover events and 10,000 ended master sessions,
// then prints EXPLAIN (ANALYZE, BUFFERS) of every candidate query of the liveness
// sweep, the dispatcher, the timeout sweep and the pruner, and fails if any of
// them scans a whole large table. Slow (a minute or more): it runs only with
// BATON_EXPLAIN=1 (scripts/explain.sh) or under CI=true (nothing skips there).
// The plans are in docs/retention.md.
func TestExplainAtScale(t *testing.T) {
	if os.Getenv("BATON_EXPLAIN") == "" && os.Getenv("CI") != "true" {
		t.Skip("set BATON_EXPLAIN=1 (scripts/explain.sh): loads a million tasks")
	}
	_, url := srv.NewPool(t)
	// The attempt -> session mapping above relies on task ids 1..900000 and
	// session ids 1..100000 in a fresh database.
	ctx := context.Background()
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	cfg.Tracer = rec
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	exec := func(sql string) {
		t.Helper()
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	start := time.Now()
	for _, sql := range []string{
		`INSERT INTO worker_groups (name) SELECT 'g' || i FROM generate_series(0, 9) i`,
		// 100,000 ended worker sessions, ended 1..100 days ago; 20 alive ones.
		`INSERT INTO worker_sessions (name, group_name, slots, state, started_at, last_heartbeat_at, ended_at)
		 SELECT 'w' || i, 'g' || (i % 10), 8, CASE WHEN i % 2 = 0 THEN 'dead' ELSE 'stopped' END,
		        now() - make_interval(days => 1 + i % 100), now() - make_interval(days => 1 + i % 100),
		        now() - make_interval(days => 1 + i % 100)
		 FROM generate_series(1, 100000) i`,
		`INSERT INTO worker_sessions (name, group_name, slots) SELECT 'live' || i, 'g' || (i % 10), 1000 FROM generate_series(1, 20) i`,
		`INSERT INTO master_sessions (name, state, last_heartbeat_at, ended_at)
		 SELECT 'm' || i, 'stopped', now() - make_interval(days => 1 + i % 100), now() - make_interval(days => 1 + i % 100)
		 FROM generate_series(1, 10000) i`,
		`INSERT INTO master_sessions (name) VALUES ('live1'), ('live2')`,
		// 900,000 finished tasks: the steady state of a 30-day retention (finished
		// 0..31 days ago, the oldest day past the cutoff, waiting for this pass). Each
		// ran its final attempt on a session that ended the day before the task
		// finished; that attempt is held by the task row. One task in ten was retried:
		// its first attempt, on the same session, is closed in task_attempt_log.
		`INSERT INTO tasks (group_name, kind, state, attempt, attempt_session_id, attempt_reason, retries, max_retries,
		                   submitted_at, dispatched_at, started_at, finished_at)
		 SELECT 'g' || (i % 10), 'noop', 'succeeded', 1 + (i % 10 = 0)::int, 100 * (i % 999 + 1) + (i % 31),
		        CASE WHEN i % 10 = 0 THEN 'retry' ELSE 'submit' END, (i % 10 = 0)::int, 1,
		        now() - make_interval(days => 1 + i % 31), now() - make_interval(days => i % 31, hours => 13),
		        now() - make_interval(days => i % 31, hours => 13), now() - make_interval(days => i % 31, hours => 12)
		 FROM generate_series(1, 900000) i`,
		`INSERT INTO task_attempt_log (task_id, attempt, worker_session_id, reason, outcome, dispatched_at, finished_at)
		 SELECT t.id, 1, t.attempt_session_id, 'submit', 'failed', t.submitted_at, t.submitted_at
		 FROM tasks t WHERE t.attempt = 2`,
		// 90,000 queued tasks: the queue is the task rows (index tasks_queue).
		`INSERT INTO tasks (group_name, kind, priority) SELECT 'g' || (i % 10), 'noop', i % 3 FROM generate_series(1, 90000) i`,
		// 10,000 running tasks on the live sessions, half with a timeout, and 2,000
		// dispatched to them (targeted dispatch rows, as a failover leaves them).
		`WITH s AS (SELECT array_agg(id) AS ids FROM worker_sessions WHERE state = 'alive')
		 INSERT INTO tasks (group_name, kind, state, attempt, worker_session_id, attempt_session_id, dispatched_at, started_at, timeout_ms)
		 SELECT 'g0', 'noop', 'running', 1, s.ids[1 + i % 20], s.ids[1 + i % 20], now(), now(), CASE WHEN i % 2 = 0 THEN 60000 ELSE 0 END
		 FROM generate_series(1, 10000) i, s`,
		`WITH s AS (SELECT array_agg(id) AS ids FROM worker_sessions WHERE state = 'alive'),
		 t AS (INSERT INTO tasks (group_name, kind, priority, state, attempt, worker_session_id, attempt_session_id, attempt_reason, dispatched_at)
		       SELECT 'g0', 'noop', i % 3, 'dispatched', 2, s.ids[1 + i % 20], s.ids[1 + i % 20], 'failover', now()
		       FROM generate_series(1, 2000) i, s RETURNING id, attempt, group_name, worker_session_id, priority)
		 INSERT INTO dispatch_queue (task_id, attempt, group_name, target_session_id, priority, reason)
		 SELECT id, attempt, group_name, worker_session_id, priority, 'failover' FROM t`,
		// 1,000,000 queued tasks in one group, with one live worker session of it:
		// a worker's direct claim must read O(batch) rows, not the backlog.
		`INSERT INTO worker_groups (name) VALUES ('big')`,
		`INSERT INTO worker_sessions (name, group_name, slots) VALUES ('big-worker', 'big', 1000)`,
		`INSERT INTO tasks (group_name, kind, priority) SELECT 'big', 'noop', i % 3 FROM generate_series(1, 1000000) i`,
		// One failover event per dead session, finished.
		`INSERT INTO failover_events (kind, session_id, group_name, detected_by, deadline, started_at, finished_at, passes)
		 SELECT 'worker', id, group_name, (SELECT min(id) FROM master_sessions), ended_at, ended_at, ended_at, 1 FROM worker_sessions WHERE state = 'dead'`,
		// No parallel vacuum workers: their shared memory segment would not fit a
		// container's default 64 MB /dev/shm.
		`SET max_parallel_maintenance_workers = 0`,
		`VACUUM ANALYZE`,
	} {
		exec(sql)
	}
	t.Logf("loaded in %s", time.Since(start).Round(time.Second))
	var counts string
	if err := conn.QueryRow(ctx, `SELECT format('tasks %s (queued %s), task_attempt_log %s, worker_sessions %s (ended %s), master_sessions %s, failover_events %s, dispatch_queue %s',
		(SELECT count(*) FROM tasks), (SELECT count(*) FROM tasks WHERE state = 'queued'), (SELECT count(*) FROM task_attempt_log), (SELECT count(*) FROM worker_sessions),
		(SELECT count(*) FROM worker_sessions WHERE ended_at IS NOT NULL), (SELECT count(*) FROM master_sessions),
		(SELECT count(*) FROM failover_events), (SELECT count(*) FROM dispatch_queue))`).Scan(&counts); err != nil {
		t.Fatal(err)
	}
	fmt.Printf("-- rows: %s\n\n", counts)

	var deadSession int64
	if err := conn.QueryRow(ctx, "SELECT max(id) FROM worker_sessions WHERE state = 'dead'").Scan(&deadSession); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	month := (30 * 24 * time.Hour).Seconds()
	var bigWorker, liveWorker, retriedTask int64
	if err := conn.QueryRow(ctx, "SELECT id FROM worker_sessions WHERE name = 'big-worker'").Scan(&bigWorker); err != nil {
		t.Fatal(err)
	}
	if err := conn.QueryRow(ctx, "SELECT min(worker_session_id) FROM tasks WHERE state = 'running'").Scan(&liveWorker); err != nil {
		t.Fatal(err)
	}
	if err := conn.QueryRow(ctx, "SELECT max(task_id) FROM task_attempt_log").Scan(&retriedTask); err != nil {
		t.Fatal(err)
	}
	// A result batch of 500 running attempts of one live session.
	var finish db.TaskFinishParams
	if err := conn.QueryRow(ctx, `SELECT array_agg(id), array_agg(attempt) FROM
		(SELECT id, attempt FROM tasks WHERE worker_session_id = $1 AND state = 'running' ORDER BY id LIMIT 500) x`, liveWorker).
		Scan(&finish.Ids, &finish.Attempts); err != nil {
		t.Fatal(err)
	}
	for range finish.Ids {
		finish.SessionIds = append(finish.SessionIds, liveWorker)
		finish.Outcomes = append(finish.Outcomes, "succeeded")
		finish.ExitCodes = append(finish.ExitCodes, 0)
		finish.Errors = append(finish.Errors, "")
		finish.Outputs = append(finish.Outputs, "")
		finish.SnoozesMs = append(finish.SnoozesMs, 0)
	}
	finish.NoExitCode = -1
	cases := []struct {
		name string
		call func(q *db.Queries) error
	}{
		{"WorkerSessionListFailoverCandidates", func(q *db.Queries) error {
			_, err := q.WorkerSessionListFailoverCandidates(ctx, db.WorkerSessionListFailoverCandidatesParams{TimeoutMs: 5000, CrashMs: 2000})
			return err
		}},
		{"MasterSessionListStale", func(q *db.Queries) error {
			_, err := q.MasterSessionListStale(ctx, db.MasterSessionListStaleParams{TimeoutMs: 10000})
			return err
		}},
		{"WorkerSessionListHealthy", func(q *db.Queries) error {
			_, err := q.WorkerSessionListHealthy(ctx, db.WorkerSessionListHealthyParams{GroupName: "g0", TimeoutMs: 5000})
			return err
		}},
		{"FailoverLockTasks", func(q *db.Queries) error {
			_, err := q.FailoverLockTasks(ctx, db.FailoverLockTasksParams{SessionID: &deadSession, Deadline: &now, MaxTasks: 1000})
			return err
		}},
		{"TaskListTimedOut", func(q *db.Queries) error {
			_, err := q.TaskListTimedOut(ctx, db.TaskListTimedOutParams{GraceMs: 5000, MaxTasks: 500})
			return err
		}},
		{"DispatchListWaitingGroups", func(q *db.Queries) error {
			_, err := q.DispatchListWaitingGroups(ctx, 0)
			return err
		}},
		{"DispatchLockWaiting", func(q *db.Queries) error {
			_, err := q.DispatchLockWaiting(ctx, db.DispatchLockWaitingParams{GroupName: "g3", MaxTasks: 2000})
			return err
		}},
		{"TaskClaimNext (1,000,000 queued in the group, batch 512)", func(q *db.Queries) error {
			rows, err := q.TaskClaimNext(ctx, db.TaskClaimNextParams{SessionID: bigWorker, GroupName: "big", MaxTasks: 512})
			if err == nil && len(rows) != 512 {
				err = fmt.Errorf("claimed %d, want 512", len(rows))
			}
			return err
		}},
		{"TaskClaimNext (dispatched to the session)", func(q *db.Queries) error {
			// No group: dispatched tasks only (a group must be the session's own).
			_, err := q.TaskClaimNext(ctx, db.TaskClaimNextParams{SessionID: liveWorker, GroupName: "", MaxTasks: 512})
			return err
		}},
		{"TaskAttemptList (the view task_attempts)", func(q *db.Queries) error {
			rows, err := q.TaskAttemptList(ctx, retriedTask)
			if err == nil && len(rows) != 2 {
				err = fmt.Errorf("listed %d attempts, want 2", len(rows))
			}
			return err
		}},
		{"TaskFinish (500 results)", func(q *db.Queries) error {
			rows, err := q.TaskFinish(ctx, finish)
			if err == nil && len(rows) != len(finish.Ids) {
				err = fmt.Errorf("finished %d, want %d", len(rows), len(finish.Ids))
			}
			return err
		}},
		{"TaskPruneFinished", func(q *db.Queries) error {
			_, err := q.TaskPruneFinished(ctx, db.TaskPruneFinishedParams{RetentionS: month, MaxRows: 1000})
			return err
		}},
		{"FailoverEventPrune", func(q *db.Queries) error {
			_, err := q.FailoverEventPrune(ctx, db.FailoverEventPruneParams{RetentionS: month, MaxRows: 1000})
			return err
		}},
		{"WorkerSessionPruneEnded", func(q *db.Queries) error {
			_, err := q.WorkerSessionPruneEnded(ctx, db.WorkerSessionPruneEndedParams{RetentionS: month, MaxRows: 1000})
			return err
		}},
		{"MasterSessionPruneEnded", func(q *db.Queries) error {
			_, err := q.MasterSessionPruneEnded(ctx, db.MasterSessionPruneEndedParams{RetentionS: month, MaxRows: 1000})
			return err
		}},
	}
	// The foreign-key checks a session delete would run per row (Postgres' own RI
	// queries, run with generic plans) must be index probes too. Since schema v3 no
	// table has a foreign key to worker_sessions (the prune's own NOT EXISTS probes,
	// above, are the checks); the guard below fails if one is added without a case.
	fks := []struct{ name, sql string }{}
	// These are all the foreign keys to worker_sessions the schema has.
	var schemaFKs []string
	if err := conn.QueryRow(ctx, `SELECT coalesce(array_agg(x.name ORDER BY x.name), '{}') FROM (
		SELECT 'FK check ' || cl.relname || '.' || a.attname AS name
		FROM pg_constraint c JOIN pg_class cl ON cl.oid = c.conrelid
		JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey)
		WHERE c.contype = 'f' AND c.confrelid = 'worker_sessions'::regclass) AS x`).Scan(&schemaFKs); err != nil {
		t.Fatal(err)
	}
	var covered []string
	for _, fk := range fks {
		covered = append(covered, fk.name)
	}
	slices.Sort(covered)
	if !slices.Equal(schemaFKs, covered) {
		t.Fatalf("foreign keys to worker_sessions %v, the checks below cover %v", schemaFKs, covered)
	}
	for i, fk := range fks {
		name := fmt.Sprintf("fk%d", i)
		exec(fmt.Sprintf("PREPARE %s(bigint) AS %s", name, fk.sql))
		cases = append(cases, struct {
			name string
			call func(q *db.Queries) error
		}{fk.name, func(*db.Queries) error {
			rec.sql, rec.args = fmt.Sprintf("EXECUTE %s(%d)", name, deadSession), nil
			return nil
		}})
	}
	big := []string{"tasks", "task_attempt_log", "worker_sessions", "master_sessions", "failover_events", "dispatch_queue"}
	for _, c := range cases {
		// Capture the generated statement and its arguments, then explain it with
		// ANALYZE inside a transaction that is rolled back (DELETEs included).
		rec.sql, rec.args = "", nil
		tx, err := conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.call(db.New(tx)); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		sql, args := rec.sql, rec.args
		if err := tx.Rollback(ctx); err != nil {
			t.Fatal(err)
		}
		tx, err = conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		// Generic plans: the ones prepared statements (and RI checks) run with.
		if _, err := tx.Exec(ctx, "SET LOCAL plan_cache_mode = force_generic_plan"); err != nil {
			t.Fatal(err)
		}
		rows, err := tx.Query(ctx, "EXPLAIN (ANALYZE, BUFFERS, TIMING OFF) "+sql, args...)
		if err != nil {
			t.Fatalf("explain %s: %v", c.name, err)
		}
		var plan []string
		for rows.Next() {
			var line string
			if err := rows.Scan(&line); err != nil {
				t.Fatal(err)
			}
			plan = append(plan, line)
		}
		if err := rows.Err(); err != nil {
			t.Fatalf("explain %s: %v", c.name, err)
		}
		if err := tx.Rollback(ctx); err != nil {
			t.Fatal(err)
		}
		text := strings.Join(plan, "\n")
		fmt.Printf("-- %s\n%s\n\n", c.name, text)
		for _, tbl := range big {
			if strings.Contains(text, "Seq Scan on "+tbl+" ") || strings.HasSuffix(text, "Seq Scan on "+tbl) {
				t.Errorf("%s scans all of %s:\n%s", c.name, tbl, text)
			}
		}
	}
}

// recorder is a pgx tracer that keeps the last statement run on its connection.
type recorder struct {
	sql  string
	args []any
}

func (r *recorder) TraceQueryStart(ctx context.Context, _ *pgx.Conn, data pgx.TraceQueryStartData) context.Context {
	if !strings.HasPrefix(data.SQL, "EXPLAIN") && data.SQL != "begin" && data.SQL != "rollback" {
		r.sql, r.args = data.SQL, data.Args
	}
	return ctx
}

func (r *recorder) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}
