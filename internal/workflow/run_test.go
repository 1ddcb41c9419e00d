package workflow_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/baton-scheduler/baton/batontest"
	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/executor"
	"github.com/baton-scheduler/baton/internal/report"
	"github.com/baton-scheduler/baton/internal/workflow"
)

var srv *batontest.Server

func TestMain(m *testing.M) {
	os.Exit(batontest.MainNoLeaks(m, func(s *batontest.Server) { srv = s }))
}

// env is one test's database with a worker session of group "g" that the test
// drives by hand: it claims with the workers' claim query and reports with the
// workers' result path (report.Finish), so every advancement goes through the
// production statements.
type env struct {
	t       *testing.T
	pool    *pgxpool.Pool
	session int64
}

func newEnv(t *testing.T) *env {
	t.Helper()
	pool, _ := srv.NewPool(t)
	e := &env{t: t, pool: pool}
	e.session = batontest.NewWorkerSession(t, pool, &batontest.WorkerSessionOpts{Group: batontest.Ptr("g"), Slots: batontest.Ptr(10000)})
	// The repair check: no run may be left running with nothing live, nor
	// with a steps_left that disagrees with its steps, after any test.
	t.Cleanup(func() {
		stuck, err := db.New(pool).WorkflowRunsStuck(context.Background())
		if err != nil {
			t.Errorf("repair check: %v", err)
		}
		if len(stuck) > 0 {
			t.Errorf("repair check found stuck runs %v", stuck)
		}
	})
	return e
}

func (e *env) tx(fn func(q *db.Queries) error) error {
	return pgx.BeginFunc(context.Background(), e.pool, func(tx pgx.Tx) error { return fn(db.New(tx)) })
}

func (e *env) apply(d workflow.Definition) workflow.Applied {
	e.t.Helper()
	var a workflow.Applied
	if err := e.tx(func(q *db.Queries) error {
		var err error
		a, err = workflow.Apply(context.Background(), q, d)
		return err
	}); err != nil {
		e.t.Fatalf("apply %s: %v", d.Name, err)
	}
	return a
}

func (e *env) start(p workflow.StartParams) int64 {
	e.t.Helper()
	var s workflow.Started
	if err := e.tx(func(q *db.Queries) error {
		var err error
		s, err = workflow.Start(context.Background(), q, p)
		return err
	}); err != nil {
		e.t.Fatalf("start %s: %v", p.Workflow, err)
	}
	return s.RunID
}

func (e *env) run(id int64) workflow.Run {
	e.t.Helper()
	r, err := workflow.GetRun(context.Background(), db.New(e.pool), id)
	if err != nil {
		e.t.Fatal(err)
	}
	return r
}

func (e *env) states(id int64) map[string]string {
	e.t.Helper()
	m := map[string]string{}
	for _, s := range e.run(id).Steps {
		m[s.Name] = s.State
	}
	return m
}

func (e *env) int(sql string, args ...any) int64 {
	e.t.Helper()
	return batontest.Int64(e.t, e.pool, sql, args...)
}

// claimed is a task the test's worker claimed.
type claimed struct {
	id      int64
	attempt int32
	step    string
	run     int64
	payload json.RawMessage
}

// claim claims every claimable task of group g.
func (e *env) claim() []claimed {
	e.t.Helper()
	ctx := context.Background()
	rows, err := db.New(e.pool).TaskClaimQueued(ctx, db.TaskClaimQueuedParams{GroupName: "g", MaxTasks: 10000, SessionID: e.session})
	if err != nil {
		e.t.Fatalf("claim: %v", err)
	}
	var out []claimed
	for _, r := range rows {
		c := claimed{id: r.ID, attempt: r.Attempt, payload: r.Payload}
		if err := e.pool.QueryRow(ctx, "SELECT workflow_step, workflow_run_id FROM tasks WHERE id = $1", r.ID).Scan(&c.step, &c.run); err != nil {
			e.t.Fatal(err)
		}
		out = append(out, c)
	}
	return out
}

// finish reports results the way a worker's completer does.
func (e *env) finish(cs []claimed, outcome func(c claimed) (string, string)) report.Summary {
	e.t.Helper()
	var rs []report.Result
	for _, c := range cs {
		o, output := outcome(c)
		rs = append(rs, report.Result{TaskID: c.id, Attempt: c.attempt, SessionID: e.session, Outcome: o,
			ExitCode: executor.NoExitCode, Output: output, Error: map[bool]string{true: "injected failure"}[o == "failed"]})
	}
	sum, err := report.Finish(context.Background(), e.pool, rs)
	if err != nil {
		e.t.Fatalf("finish: %v", err)
	}
	return sum
}

// drive plays the workers until nothing is claimable: each step's task ends
// with outcomes[step] (default succeeded). It returns the order in which steps
// were claimed, one batch per element.
func (e *env) drive(outcomes map[string]string) [][]string {
	e.t.Helper()
	var order [][]string
	for i := 0; ; i++ {
		if i > 10000 {
			e.t.Fatal("drive: no end")
		}
		cs := e.claim()
		if len(cs) == 0 {
			return order
		}
		var names []string
		for _, c := range cs {
			names = append(names, c.step)
		}
		order = append(order, names)
		e.finish(cs, func(c claimed) (string, string) {
			if o, ok := outcomes[c.step]; ok {
				return o, ""
			}
			return "succeeded", ""
		})
	}
}

func step(name string, deps ...string) workflow.Step {
	return workflow.Step{Name: name, Group: "g", Kind: "noop", DependsOn: deps}
}

func ruled(rule, name string, deps ...string) workflow.Step {
	s := step(name, deps...)
	s.TriggerRule = rule
	return s
}

func def(name string, steps ...workflow.Step) workflow.Definition {
	return workflow.Definition{Name: name, Steps: steps}
}

func TestFanOutFanIn(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.apply(def("fan", step("a"), step("b", "a"), step("c", "a"), step("d", "a"), step("e", "b", "c", "d")))
	id := e.start(workflow.StartParams{Workflow: "fan"})
	order := e.drive(nil)
	want := [][]string{{"a"}, {"b", "c", "d"}, {"e"}}
	if fmt.Sprint(order) != fmt.Sprint(want) {
		t.Fatalf("claim order %v; want %v", order, want)
	}
	r := e.run(id)
	if r.State != "succeeded" || r.FinishedAt == nil || r.StepsLeft != 0 {
		t.Fatalf("run %+v; want succeeded", r)
	}
	for _, s := range r.Steps {
		if s.State != "succeeded" || s.Tasks != 1 || s.Attempt != 1 {
			t.Fatalf("step %+v", s)
		}
	}
}

// The decision of a trigger rule, as documented (docs/workflows.md): the
// reference model the SQL must agree with. "failed" counts failed,
// upstream_failed and canceled upstreams.
func reference(rule string, ups []string) string {
	var succ, fail, skip int
	for _, u := range ups {
		switch u {
		case "succeeded":
			succ++
		case "skipped":
			skip++
		default:
			fail++
		}
	}
	n := len(ups)
	switch rule {
	case workflow.AllSuccess, "":
		if succ == n {
			return "run"
		} else if fail > 0 {
			return "upstream_failed"
		}
		return "skipped"
	case workflow.AllFailed:
		if fail == n {
			return "run"
		}
		return "skipped"
	case workflow.AllDone, workflow.Always:
		return "run"
	case workflow.OneSuccess:
		if succ > 0 {
			return "run"
		} else if skip == n {
			return "skipped"
		}
		return "upstream_failed"
	case workflow.OneFailed:
		if fail > 0 {
			return "run"
		}
		return "skipped"
	case workflow.NoneFailed:
		if fail == 0 {
			return "run"
		}
		return "upstream_failed"
	case workflow.NoneFailedMinOneSuccess:
		if fail > 0 {
			return "upstream_failed"
		} else if succ > 0 {
			return "run"
		}
		return "skipped"
	}
	panic(rule)
}

// Every trigger rule against every combination of one and two upstream
// outcomes (succeeded, failed, skipped, upstream_failed, canceled), including
// skip propagation: each combination is a disjoint part of one workflow per
// rule. Upstream u with outcome:
//
//	succeeded/failed: u reports it;  skipped: u is all_failed under a parent that succeeds;
//	upstream_failed: u is all_success under a parent that fails;  canceled: u's task is canceled.
func TestTriggerRules(t *testing.T) {
	t.Parallel()
	outcomes := []string{"succeeded", "failed", "skipped", "upstream_failed", "canceled"}
	var combos [][]string
	for _, a := range outcomes {
		combos = append(combos, []string{a})
		for _, b := range outcomes {
			combos = append(combos, []string{a, b})
		}
	}
	for _, rule := range workflow.TriggerRules {
		t.Run(rule, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			d := def("rules-" + rule)
			inject := map[string]string{}
			cancel := map[string]bool{}
			for ci, combo := range combos {
				var ups []string
				for ui, o := range combo {
					p, u := fmt.Sprintf("c%d-p%d", ci, ui), fmt.Sprintf("c%d-u%d", ci, ui)
					d.Steps = append(d.Steps, step(p))
					us := step(u, p)
					switch o {
					case "failed":
						inject[u] = "failed"
					case "skipped":
						us.TriggerRule = workflow.AllFailed
					case "upstream_failed":
						inject[p] = "failed"
					case "canceled":
						cancel[u] = true
					}
					d.Steps = append(d.Steps, us)
					ups = append(ups, u)
				}
				d.Steps = append(d.Steps, ruled(rule, fmt.Sprintf("c%d-t", ci), ups...))
			}
			e.apply(d)
			id := e.start(workflow.StartParams{Workflow: d.Name})
			// Cancel the tasks of the steps meant to end canceled as soon as
			// they exist, through the task cancel path.
			for range 10 {
				for name := range cancel {
					e.cancelStepTask(id, name)
				}
				cs := e.claim()
				if len(cs) == 0 {
					break
				}
				e.finish(cs, func(c claimed) (string, string) {
					if o, ok := inject[c.step]; ok {
						return o, ""
					}
					return "succeeded", ""
				})
			}
			got := e.states(id)
			for ci, combo := range combos {
				for ui, o := range combo {
					if s := got[fmt.Sprintf("c%d-u%d", ci, ui)]; s != o {
						t.Fatalf("combo %v: upstream %d is %s; the setup is wrong", combo, ui, s)
					}
				}
				want := reference(rule, combo)
				if want == "run" {
					want = "succeeded"
				}
				if s := got[fmt.Sprintf("c%d-t", ci)]; s != want {
					t.Errorf("rule %s, upstreams %v: step is %s; want %s", rule, combo, s, want)
				}
			}
			if r := e.run(id); r.State != "failed" {
				t.Fatalf("run is %s; want failed (some steps failed)", r.State)
			}
		})
	}
}

// cancelStepTask cancels the task of a step if it has a live one, as
// Client.Cancel does.
func (e *env) cancelStepTask(run int64, step string) {
	e.t.Helper()
	ctx := context.Background()
	var task *int64
	if err := e.pool.QueryRow(ctx, "SELECT task_id FROM workflow_run_steps WHERE run_id = $1 AND name = $2 AND state IN ('queued', 'running')",
		run, step).Scan(&task); err != nil || task == nil {
		return
	}
	if err := e.tx(func(q *db.Queries) error {
		if _, err := q.TaskCancelLockTask(ctx, *task); err != nil {
			return err
		}
		_, err := q.TaskCancel(ctx, db.TaskCancelParams{ID: *task, Reason: "test"})
		return err
	}); err != nil {
		e.t.Fatalf("cancel task of %s: %v", step, err)
	}
}
