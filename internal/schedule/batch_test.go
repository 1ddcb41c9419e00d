package schedule_test

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/schedule"
	"github.com/baton-scheduler/baton/internal/workflow"
)

// runShape describes a run without its ids and instants: the run, its steps
// and the tasks of its steps.
func (e *env) runShape(run int64) string {
	e.t.Helper()
	var shape string
	if err := e.pool.QueryRow(e.ctx, `
		SELECT json_build_object(
		  'run', (SELECT json_build_object('state', r.state, 'params', r.params, 'strategy', r.failure_strategy,
		          'steps_left', r.steps_left, 'step_failed', r.step_failed, 'deadline_in', r.deadline - r.created_at, 'version', r.version_id)
		          FROM workflow_runs r WHERE r.id = $1),
		  'steps', (SELECT json_agg(json_build_object('name', s.name, 'state', s.state, 'task_count', s.task_count,
		            'has_task', s.task_id IS NOT NULL, 'ready', s.ready_at IS NOT NULL, 'finished', s.finished_at IS NOT NULL, 'error', s.error,
		            'up_total', s.up_total, 'up_done', s.up_done) ORDER BY s.name)
		            FROM workflow_run_steps s WHERE s.run_id = $1),
		  'tasks', (SELECT json_agg(json_build_object('step', t.workflow_step, 'group', t.group_name, 'kind', t.kind, 'payload', t.payload,
		            'priority', t.priority, 'max_retries', t.max_retries, 'timeout_ms', t.timeout_ms, 'retry_base_ms', t.retry_base_ms,
		            'retry_max_ms', t.retry_max_ms, 'state', t.state, 'is_step_task', t.id = s.task_id) ORDER BY t.workflow_step)
		            FROM tasks t JOIN workflow_run_steps s ON s.run_id = t.workflow_run_id AND s.name = t.workflow_step
		            WHERE t.workflow_run_id = $1))::text`, run).Scan(&shape); err != nil {
		e.t.Fatal(err)
	}
	return shape
}

// The set-based start (schedule_fire_start_many) creates the same run, steps
// and first tasks as workflow.Start: resolved payloads, retry settings, root
// steps queued, the others pending, the run timeout's deadline.
func TestBatchStartMatchesWorkflowStart(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.tx(func(q *db.Queries) error {
		_, err := workflow.Apply(e.ctx, q, workflow.Definition{Name: "dag", Timeout: "1h",
			Params: []workflow.Param{{Name: "x", Default: ptr("a")}},
			Steps: []workflow.Step{
				{Name: "a", Group: "g", Kind: "noop", Payload: map[string]any{"p": "${params.x}"}, Priority: 3, MaxRetries: 2, Timeout: "30s"},
				{Name: "b", Group: "g", Kind: "noop", RetryBackoffBase: "2s", RetryBackoffMax: "1m"},
				{Name: "c", Group: "g", Kind: "noop", DependsOn: []string{"a", "b"}},
				{Name: "d", Group: "g", Kind: "noop", DependsOn: []string{"c"}, TriggerRule: "all_done"},
			}})
		return err
	})
	for i := range 3 {
		e.create(schedule.Spec{Name: fmt.Sprintf("dag-%d", i), Workflow: "dag", Cron: "* * * * *", Params: map[string]any{"x": "z"}, Overlap: schedule.OverlapAllow})
	}
	if res := e.at(e.now.Add(time.Minute)); res.Started != 3 {
		t.Fatalf("started %d of 3", res.Started)
	}
	var want string
	e.tx(func(q *db.Queries) error {
		st, err := workflow.Start(e.ctx, q, workflow.StartParams{Workflow: "dag", Params: map[string]any{"x": "z"}})
		want = fmt.Sprint(st.RunID)
		return err
	})
	var ref int64
	_, _ = fmt.Sscan(want, &ref)
	wantShape := e.runShape(ref)
	rows, err := e.pool.Query(e.ctx, "SELECT run_id, run_state, run_active, lag_ms FROM schedule_fires ORDER BY id")
	if err != nil {
		t.Fatal(err)
	}
	type fire struct {
		run    int64
		state  string
		active bool
		lag    int64
	}
	var fires []fire
	for rows.Next() {
		var f fire
		if err := rows.Scan(&f.run, &f.state, &f.active, &f.lag); err != nil {
			t.Fatal(err)
		}
		fires = append(fires, f)
	}
	if len(fires) != 3 {
		t.Fatalf("%d ledger rows", len(fires))
	}
	for _, f := range fires {
		if f.state != "running" || !f.active || f.lag != 0 {
			t.Fatalf("ledger row %+v: want running, active, lag 0 on the injected clock", f)
		}
		if got := e.runShape(f.run); got != wantShape {
			t.Fatalf("scheduled run %d:\n%s\nworkflow.Start's run:\n%s", f.run, got, wantShape)
		}
	}
	var shape map[string]any
	_ = json.Unmarshal([]byte(wantShape), &shape)
	if n := len(shape["tasks"].([]any)); n != 2 {
		t.Fatalf("reference run has %d tasks, want the two root steps': %s", n, wantShape)
	}
	// And it behaves like one: c waits for both of its upstreams (the
	// set-based start once stored no upstream counts, and c ran after a alone).
	run := fires[0].run
	if _, err := e.pool.Exec(e.ctx, `UPDATE tasks SET state = 'succeeded', finished_at = now(), attempt = 1
		WHERE workflow_run_id = $1 AND workflow_step = 'a'`, run); err != nil {
		t.Fatal(err)
	}
	var c string
	if err := e.pool.QueryRow(e.ctx, `SELECT state FROM workflow_run_steps WHERE run_id = $1 AND name = 'c'`, run).Scan(&c); err != nil {
		t.Fatal(err)
	}
	if c != "pending" {
		t.Fatalf("scheduled run %d: c is %s after a alone ended; it depends on a and b", run, c)
	}
	e.checkLedger()
}

// A batch whose set-based start fails (here: a run already holds one fire's
// idempotency key) is fired schedule by schedule: the others start, the
// failing one records nothing and stays due.
func TestBatchFallsBackPerSchedule(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	var ids []int64
	for i := range 3 {
		ids = append(ids, e.create(schedule.Spec{Name: fmt.Sprintf("s%d", i), Cron: "* * * * *", Overlap: schedule.OverlapAllow}).ID)
	}
	due := e.now.Truncate(time.Minute).Add(time.Minute)
	e.tx(func(q *db.Queries) error {
		_, err := workflow.Start(e.ctx, q, workflow.StartParams{Workflow: "wf",
			IdempotencyKey: fmt.Sprintf("baton-schedule:%d:%s", ids[1], due.UTC().Format(time.RFC3339Nano))})
		return err
	})
	e.now = due
	res, err := schedule.FirePass(e.ctx, e.pool, schedule.FireConfig{Now: &e.now})
	if err != nil {
		t.Fatal(err)
	}
	if res.Started != 2 || res.Schedules != 2 {
		t.Fatalf("%+v: want s0 and s2 started", res)
	}
	if n := e.int("SELECT count(*) FROM schedule_fires WHERE schedule_id = $1", ids[1]); n != 0 {
		t.Fatalf("s1 has %d ledger rows", n)
	}
	if n := e.int("SELECT count(*) FROM schedules WHERE id = $1 AND next_nominal_at = $2", ids[1], due); n != 1 {
		t.Fatal("s1 was advanced without firing")
	}
	if n := e.int("SELECT count(*) FROM workflow_runs"); n != 3 {
		t.Fatalf("%d runs: want the one holding the key and two scheduled", n)
	}
}
