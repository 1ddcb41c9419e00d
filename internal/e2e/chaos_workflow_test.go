package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/store"
	"github.com/baton-scheduler/baton/internal/workflow"
)

// The campaign's workflow load: runs of a small DAG whose steps are ledger tasks
// of both groups (shell and Go), started while the faults go on, so masters are
// killed and workers fail over mid-DAG. At the end every run must have ended
// (none stuck), as its steps say it should, every step task is judged by the
// ledger checker like any task, and the repair sweep must have found nothing.

const chaosWorkflow = "chaos-dag"

// chaosDAG: extract (A, shell) -> transform (B, Go) and index (A, shell) ->
// load (B, Go, all_success) -> report (A, shell, all_done).
func (c *campaign) chaosDAG() workflow.Definition {
	r := c.r
	shell := func(name, group string, ticks int, deps ...string) workflow.Step {
		return workflow.Step{Name: name, Group: group, Shell: shellScript, MaxRetries: 3, DependsOn: deps,
			Env: map[string]string{"LEDGER": r.bins.Ledger, "BATON_LEDGER_DSN": r.dsn, "TICKS": fmt.Sprint(ticks), "EVERY": tickEvery.String()}}
	}
	gostep := func(name, group string, ticks int, deps ...string) workflow.Step {
		return workflow.Step{Name: name, Group: group, Kind: "ledger", MaxRetries: 3, DependsOn: deps,
			Payload: map[string]any{"dsn": r.dsn, "ticks": ticks, "tick_ms": tickEvery.Milliseconds()}}
	}
	report := shell("report", chaosGroupA, 2, "load")
	report.TriggerRule = workflow.AllDone
	return workflow.Definition{Name: chaosWorkflow, Steps: []workflow.Step{
		shell("extract", chaosGroupA, 4),
		gostep("transform", chaosGroupB, 6, "extract"),
		shell("index", chaosGroupA, 3, "extract"),
		gostep("load", chaosGroupB, 4, "transform", "index"),
		report,
	}}
}

// applyWorkflow stores the DAG once.
func (c *campaign) applyWorkflow() {
	d := c.chaosDAG()
	if err := d.Validate(); err != nil {
		c.t.Fatalf("chaos: workflow: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := store.WithTx(ctx, c.r.pool, func(q *db.Queries, _ pgx.Tx) error {
		_, err := workflow.Apply(ctx, q, d)
		return err
	}); err != nil {
		c.t.Fatalf("chaos: apply workflow: %v", err)
	}
}

// startRun starts a run when fewer than two are active (Postgres away: the
// next round tries again; only runs whose start committed are counted).
func (c *campaign) startRun(rng *rand.Rand) {
	active, err := c.r.tryInt(`SELECT count(*) FROM workflow_runs WHERE state IN ('running', 'paused')`)
	if err != nil || active >= 2 || rng.IntN(3) != 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	var s workflow.Started
	if err := store.WithTx(ctx, c.r.pool, func(q *db.Queries, _ pgx.Tx) (err error) {
		s, err = workflow.Start(ctx, q, workflow.StartParams{Workflow: chaosWorkflow})
		return err
	}); err != nil {
		return
	}
	c.mu.Lock()
	c.runs = append(c.runs, s.RunID)
	c.mu.Unlock()
}

func (c *campaign) runList() []int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]int64(nil), c.runs...)
}

// settleRuns waits (bounded) until every started run has ended, then hands the
// runs' step tasks to the ledger checker. It returns what the table reports.
func (c *campaign) settleRuns(bound time.Duration) runStats {
	r := c.r
	runs := c.runList()
	var st runStats
	st.started = len(runs)
	if ok, desc := r.waitFor(bound, func() (bool, string, error) {
		n, err := r.tryInt(`SELECT count(*) FROM workflow_runs WHERE id = ANY($1::bigint[]) AND state IN ('running', 'paused')`, runs)
		return err == nil && n == 0, fmt.Sprintf("%d of %d workflow runs not ended", n, len(runs)), err
	}); !ok {
		c.t.Errorf("chaos: workflow runs still running %s after the last fault: %s", bound, desc)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rows, err := r.pool.Query(ctx, `SELECT id FROM tasks WHERE workflow_run_id = ANY($1::bigint[])`, runs)
	if err != nil {
		c.t.Errorf("chaos: step tasks: %v", err)
		return st
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		c.t.Errorf("chaos: step tasks: %v", err)
		return st
	}
	c.sub.add(stepTask, ids)
	if err := r.pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE state = 'succeeded'), count(*) FILTER (WHERE state = 'failed'),
		count(*) FILTER (WHERE state NOT IN ('succeeded', 'failed')) FROM workflow_runs WHERE id = ANY($1::bigint[])`, runs).
		Scan(&st.succeeded, &st.failed, &st.other); err != nil {
		c.t.Errorf("chaos: run states: %v", err)
	}
	// A run ends as its steps say: succeeded exactly when every step succeeded
	// (report runs all_done, so a failure upstream leaves load upstream_failed
	// and the run failed).
	if err := r.pool.QueryRow(ctx, `SELECT count(*) FROM workflow_runs wr WHERE wr.id = ANY($1::bigint[])
		AND (wr.state = 'succeeded') <> NOT EXISTS (SELECT 1 FROM workflow_run_steps s WHERE s.run_id = wr.id AND s.state <> 'succeeded')`, runs).
		Scan(&st.inconsistent); err != nil {
		c.t.Errorf("chaos: run consistency: %v", err)
	}
	if err := r.pool.QueryRow(ctx, `SELECT count(*) FROM workflow_run_findings`).Scan(&st.findings); err != nil {
		c.t.Errorf("chaos: repair findings: %v", err)
	}
	if st.inconsistent > 0 {
		c.t.Errorf("chaos: %d workflow runs ended in a state their steps contradict", st.inconsistent)
	}
	if st.findings > 0 {
		c.t.Errorf("chaos: the repair sweep found %d stuck workflow runs", st.findings)
	}
	if st.started == 0 {
		c.t.Errorf("chaos: no workflow run was started: the workflow load did nothing")
	}
	return st
}

type runStats struct {
	started                                          int
	succeeded, failed, other, inconsistent, findings int64
}

func (s runStats) String() string {
	return fmt.Sprintf("%d started; succeeded %d, failed %d, other %d; state contradicting its steps %d; repair findings %d",
		s.started, s.succeeded, s.failed, s.other, s.inconsistent, s.findings)
}
