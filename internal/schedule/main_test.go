package schedule_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap/zaptest"

	"github.com/baton-scheduler/baton/batontest"
	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/executor"
	"github.com/baton-scheduler/baton/internal/report"
	"github.com/baton-scheduler/baton/internal/schedule"
	"github.com/baton-scheduler/baton/internal/workflow"
)

var srv *batontest.Server

func TestMain(m *testing.M) {
	os.Exit(batontest.MainNoLeaks(m, func(s *batontest.Server) { srv = s }))
}

// env is one test's database with workflow "wf" (one noop step in group g)
// and a worker session the test plays by hand.
type env struct {
	t       *testing.T
	ctx     context.Context
	pool    *pgxpool.Pool
	url     string
	session int64
	now     time.Time
}

func newEnv(t *testing.T) *env {
	t.Helper()
	pool, url := srv.NewPool(t)
	e := &env{t: t, ctx: context.Background(), pool: pool, url: url,
		now: time.Date(2026, 1, 5, 10, 0, 0, 0, time.UTC)}
	e.session = batontest.NewWorkerSession(t, pool, &batontest.WorkerSessionOpts{Group: batontest.Ptr("g"), Slots: batontest.Ptr(10000)})
	e.tx(func(q *db.Queries) error {
		_, err := workflow.Apply(e.ctx, q, workflow.Definition{Name: "wf", Params: []workflow.Param{{Name: "region", Default: batontest.Ptr("eu")}},
			Steps: []workflow.Step{{Name: "only", Group: "g", Kind: "noop"}}})
		return err
	})
	return e
}

func (e *env) tx(fn func(q *db.Queries) error) {
	e.t.Helper()
	if err := pgx.BeginFunc(e.ctx, e.pool, func(tx pgx.Tx) error { return fn(db.New(tx)) }); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) create(spec schedule.Spec) schedule.Schedule {
	e.t.Helper()
	if spec.Workflow == "" {
		spec.Workflow = "wf"
	}
	var s schedule.Schedule
	e.tx(func(q *db.Queries) error {
		var err error
		s, err = schedule.Create(e.ctx, q, spec, &e.now)
		return err
	})
	return s
}

// at moves the injected clock and runs passes until nothing is left to do.
func (e *env) at(t time.Time) schedule.FireResult {
	e.t.Helper()
	e.now = t
	var total schedule.FireResult
	for i := 0; ; i++ {
		if i > 1000 {
			e.t.Fatal("fire passes do not settle")
		}
		res, err := schedule.FirePass(e.ctx, e.pool, schedule.FireConfig{Now: &e.now, Logger: zaptest.NewLogger(e.t)})
		if err != nil {
			e.t.Fatal(err)
		}
		total.Started += res.Started
		total.Skipped += res.Skipped
		total.Buffered += res.Buffered
		total.Canceled += res.Canceled
		total.Paused += res.Paused
		if !res.More {
			return total
		}
	}
}

func (e *env) int(sql string, args ...any) int64 {
	e.t.Helper()
	return batontest.Int64(e.t, e.pool, sql, args...)
}

// ledger lists a schedule's rows as "HH:MM outcome[/reason]" (UTC), oldest first.
func (e *env) ledger(name string) []string {
	e.t.Helper()
	rows, err := e.pool.Query(e.ctx, `SELECT f.nominal_time, f.outcome, coalesce(f.reason, '') FROM schedule_fires f
		JOIN schedules s ON s.id = f.schedule_id WHERE s.name = $1 ORDER BY f.nominal_time`, name)
	if err != nil {
		e.t.Fatal(err)
	}
	var out []string
	for rows.Next() {
		var at time.Time
		var outcome, reason string
		if err := rows.Scan(&at, &outcome, &reason); err != nil {
			e.t.Fatal(err)
		}
		s := at.UTC().Format("15:04") + " " + outcome
		if reason != "" {
			s += "/" + reason
		}
		out = append(out, s)
	}
	if rows.Err() != nil {
		e.t.Fatal(rows.Err())
	}
	return out
}

func (e *env) expectLedger(name string, want ...string) {
	e.t.Helper()
	got := e.ledger(name)
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		e.t.Fatalf("ledger of %s:\n  %s\nwant\n  %s", name, strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}

// activeRuns lists the running runs started by a schedule.
func (e *env) activeRuns(name string) []int64 {
	e.t.Helper()
	rows, err := e.pool.Query(e.ctx, `SELECT r.id FROM schedule_fires f JOIN schedules s ON s.id = f.schedule_id
		JOIN workflow_runs r ON r.id = f.run_id WHERE s.name = $1 AND r.state IN ('running', 'paused') ORDER BY r.id`, name)
	if err != nil {
		e.t.Fatal(err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		e.t.Fatal(err)
	}
	return ids
}

// endRun ends a run through the workers' result path: its task is claimed and
// reported with outcome.
func (e *env) endRun(run int64, outcome string) {
	e.t.Helper()
	rows, err := db.New(e.pool).TaskClaimNext(e.ctx, db.TaskClaimNextParams{GroupName: "g", MaxTasks: 100000, SessionID: e.session})
	if err != nil {
		e.t.Fatal(err)
	}
	_ = rows
	var id int64
	var attempt int32
	if err := e.pool.QueryRow(e.ctx, "SELECT id, attempt FROM tasks WHERE workflow_run_id = $1 AND state = 'running'", run).Scan(&id, &attempt); err != nil {
		e.t.Fatalf("task of run %d: %v", run, err)
	}
	if _, err := report.Finish(e.ctx, e.pool, []report.Result{{TaskID: id, Attempt: attempt, SessionID: e.session, Outcome: outcome,
		ExitCode: executor.NoExitCode, Error: map[bool]string{true: "injected failure"}[outcome == "failed"]}}); err != nil {
		e.t.Fatal(err)
	}
	if st := e.int("SELECT count(*) FROM workflow_runs WHERE id = $1 AND state IN ('running', 'paused')", run); st != 0 {
		e.t.Fatalf("run %d still active after its task %s", run, outcome)
	}
}

// checkLedger: every ledger row of a started fire names a run that exists,
// no run is named twice, and every scheduled run has its ledger row.
func (e *env) checkLedger() {
	e.t.Helper()
	if n := e.int(`SELECT count(*) FROM (SELECT run_id FROM schedule_fires WHERE run_id IS NOT NULL GROUP BY run_id HAVING count(*) > 1) d`); n != 0 {
		e.t.Fatalf("%d runs named by two ledger rows", n)
	}
	if n := e.int(`SELECT count(*) FROM workflow_runs r WHERE r.idempotency_key LIKE 'baton-%'
		AND NOT EXISTS (SELECT 1 FROM schedule_fires f WHERE f.run_id = r.id OR r.id = ANY (f.previous_run_ids))`); n != 0 {
		e.t.Fatalf("%d scheduled runs without a ledger row", n)
	}
	if n := e.int(`SELECT count(*) FROM schedule_fires WHERE reason = 'starting'`); n != 0 {
		e.t.Fatalf("%d ledger rows left 'starting'", n)
	}
}

func hm(base time.Time, s string) time.Time {
	t, err := time.Parse("15:04", s)
	if err != nil {
		panic(err)
	}
	return time.Date(base.Year(), base.Month(), base.Day(), t.Hour(), t.Minute(), 0, 0, time.UTC)
}

func pgxBegin(e *env, fn func(q *db.Queries) error) error {
	return pgx.BeginFunc(e.ctx, e.pool, func(tx pgx.Tx) error { return fn(db.New(tx)) })
}
