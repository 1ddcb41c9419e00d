package workflow_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/workflow"
)

// mapDef: list -> each (map over list's items) -> after.
func mapDef(name string, par int) workflow.Definition {
	list := step("list")
	list.Outputs = []string{"items"}
	each := step("each", "list")
	each.Map = &workflow.Map{Over: "${steps.list.outputs.items}", Parallelism: par, MaxItems: 5}
	each.Payload = map[string]any{"v": "${map.item}", "i": "${map.index}"}
	after := step("after", "each")
	after.Payload = map[string]any{"r": "${steps.each.outputs.results}", "n": "${steps.each.outputs.count}"}
	return def(name, list, each, after)
}

// A map step fans out over an upstream output, never has more than its
// parallelism of item tasks live, and fans back in: its outputs are the items'
// outputs in order.
func TestMapStep(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.apply(mapDef("map", 2))
	id := e.start(workflow.StartParams{Workflow: "map"})
	e.finish(e.claim(), func(claimed) (string, string) { return "succeeded", `{"items": ["a", "b\"q", {"k": 1}, 4]}` })
	seen := map[string]bool{}
	for round := 0; ; round++ {
		cs := e.claim()
		if len(cs) == 0 {
			t.Fatal("map stalled")
		}
		if cs[0].step == "after" {
			var p map[string]string
			if err := json.Unmarshal(cs[0].payload, &p); err != nil {
				t.Fatal(err)
			}
			if p["n"] != "4" || p["r"] != `[{"i": "0"}, {"i": "1"}, null, {"i": "3"}]` {
				t.Fatalf("after's payload %s", cs[0].payload)
			}
			e.finish(cs, func(claimed) (string, string) { return "succeeded", "" })
			break
		}
		if live := e.int("SELECT count(*) FROM tasks WHERE workflow_run_id = $1 AND workflow_item IS NOT NULL AND state IN ('queued', 'running')", id); live > 2 {
			t.Fatalf("round %d: %d item tasks live; parallelism is 2", round, live)
		}
		for _, c := range cs {
			if c.step != "each" {
				t.Fatalf("claimed %+v", c)
			}
			seen[string(c.payload)] = true
		}
		// Item 2 returns no object: its place in the results is null.
		e.finish(cs, func(c claimed) (string, string) {
			var p map[string]string
			_ = json.Unmarshal(c.payload, &p)
			if p["i"] == "2" {
				return "succeeded", "not an object"
			}
			return "succeeded", fmt.Sprintf(`{"i": "%s"}`, p["i"])
		})
	}
	want := []string{`{"i": "0", "v": "a"}`, `{"i": "1", "v": "b\"q"}`, `{"i": "2", "v": "{\"k\": 1}"}`, `{"i": "3", "v": "4"}`}
	for _, w := range want {
		if !seen[w] {
			t.Fatalf("item payloads %v; want %v", seen, want)
		}
	}
	r := e.run(id)
	if r.State != "succeeded" || r.Steps[1].Items != 4 || r.Steps[1].ItemsDone != 4 || r.Steps[1].State != "succeeded" {
		t.Fatalf("run %+v", r)
	}
}

// A failed item fails the map step (after its other items ended); an empty
// array succeeds at once; a value that is not an array, or too long, fails
// the step naming why.
func TestMapStepOutcomes(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name, items, item string
		want              map[string]string
		err               string
	}{
		{"item fails", `{"items": "[1, 2, 3]"}`, "failed", map[string]string{"each": "failed", "after": "upstream_failed"}, "item 0: injected failure"},
		{"empty", `{"items": []}`, "", map[string]string{"each": "succeeded", "after": "succeeded"}, ""},
		{"not an array", `{"items": {"a": 1}}`, "", map[string]string{"each": "failed", "after": "upstream_failed"},
			"map over ${steps.list.outputs.items}: a JSON object, not an array"},
		{"not JSON", `{"items": "a, b"}`, "", map[string]string{"each": "failed", "after": "upstream_failed"},
			"map over ${steps.list.outputs.items}: not JSON: a, b"},
		{"too many", `{"items": [1, 2, 3, 4, 5, 6]}`, "", map[string]string{"each": "failed", "after": "upstream_failed"},
			"map over ${steps.list.outputs.items}: 6 items, over the step's max_items 5"},
		// Item 1's payload would be over 1 MiB: that item fails, the others run.
		{"item task cannot be stored", `{"items": ["a", "` + strings.Repeat("x", 1100000) + `", "c"]}`, "",
			map[string]string{"each": "failed", "after": "upstream_failed"}, "item 1: task could not be created: "},
	}
	cases = append(cases, struct {
		name, items, item string
		want              map[string]string
		err               string
	}{"results over 1 MiB", `{"items": [1, 2]}`, "big", map[string]string{"each": "failed", "after": "upstream_failed"},
		"map results over 1 MiB ("})
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			e.apply(mapDef("m", 0))
			id := e.start(workflow.StartParams{Workflow: "m"})
			e.finish(e.claim(), func(claimed) (string, string) { return "succeeded", tc.items })
			first := true
			for cs := e.claim(); len(cs) > 0; cs = e.claim() {
				e.finish(cs, func(c claimed) (string, string) {
					if c.step == "each" && tc.item == "failed" && first {
						first = false
						return "failed", ""
					}
					if c.step == "each" && tc.item == "big" {
						return "succeeded", `{"blob": "` + strings.Repeat("x", 600000) + `"}`
					}
					return "succeeded", ""
				})
			}
			r := e.run(id)
			got := map[string]string{}
			var errText string
			for _, s := range r.Steps {
				got[s.Name] = s.State
				if s.Name == "each" {
					errText = s.Error
				}
			}
			if got["each"] != tc.want["each"] || got["after"] != tc.want["after"] || !strings.HasPrefix(errText, tc.err) || (tc.err == "") != (errText == "") {
				t.Fatalf("steps %v, each's error %q; want %v, %q", got, errText, tc.want, tc.err)
			}
		})
	}
}

// Canceling a run in the middle of a map ends every item (running ones through
// the task cancel path, pending ones at once) and the step; late results are
// refused. Pause holds the items that have no task yet; resume gives them one.
func TestMapStepPauseAndCancel(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	e.apply(mapDef("mapc", 2))
	id := e.start(workflow.StartParams{Workflow: "mapc"})
	e.finish(e.claim(), func(claimed) (string, string) { return "succeeded", `{"items": [1, 2, 3, 4, 5]}` })
	cs := e.claim()
	if len(cs) != 2 {
		t.Fatalf("claimed %d items; parallelism 2", len(cs))
	}
	if err := e.tx(func(q *db.Queries) error { return workflow.Pause(ctx, q, id) }); err != nil {
		t.Fatal(err)
	}
	e.finish(cs[:1], func(claimed) (string, string) { return "succeeded", "" })
	if n := e.int("SELECT count(*) FROM tasks WHERE workflow_run_id = $1 AND workflow_item IS NOT NULL", id); n != 2 {
		t.Fatalf("paused: %d item tasks; want no new one", n)
	}
	if err := e.tx(func(q *db.Queries) error { return workflow.Resume(ctx, q, id) }); err != nil {
		t.Fatal(err)
	}
	more := e.claim()
	if len(more) != 1 {
		t.Fatalf("after resume claimed %d; want 1 (one running, parallelism 2)", len(more))
	}
	if err := e.tx(func(q *db.Queries) error { return workflow.End(ctx, q, id, "canceled") }); err != nil {
		t.Fatal(err)
	}
	if sum := e.finish(append(cs[1:], more...), func(claimed) (string, string) { return "succeeded", "" }); len(sum.Applied) != 0 {
		t.Fatalf("late item results applied: %+v", sum)
	}
	r := e.run(id)
	if r.State != "canceled" || r.StepsLeft != 0 || r.Steps[1].State != "canceled" || r.Steps[2].State != "canceled" {
		t.Fatalf("run %+v", r)
	}
	if n := e.int("SELECT count(*) FROM workflow_run_map_items WHERE run_id = $1 AND state NOT IN ('succeeded', 'canceled')", id); n != 0 {
		t.Fatalf("%d items neither succeeded nor canceled", n)
	}
}

// childDef: c1 -> c2, parameter n (int, required).
func childDef() workflow.Definition {
	c1 := step("c1")
	c1.Payload = map[string]any{"n": "${params.n}"}
	d := def("child", c1, step("c2", "c1"))
	d.Params = []workflow.Param{{Name: "n", Type: "int"}}
	return d
}

func parentDef(name string) workflow.Definition {
	sub := workflow.Step{Name: "sub", Workflow: "child", Params: map[string]string{"n": "${params.k}"}, DependsOn: []string{"p0"}}
	p2 := step("p2", "sub")
	p2.Payload = map[string]any{"child": "${steps.sub.outputs.run_id}/${steps.sub.outputs.state}"}
	d := def(name, step("p0"), sub, p2)
	d.Params = []workflow.Param{{Name: "k", Default: ptr("7")}}
	return d
}

// childOf returns the child run of run id's step sub.
func (e *env) childOf(id int64) int64 {
	e.t.Helper()
	for _, s := range e.run(id).Steps {
		if s.Name == "sub" {
			return s.ChildRunID
		}
	}
	return 0
}

// A sub-workflow step starts a child run (its parameters resolved and typed)
// and ends with it, in the transaction that ends the child; its outputs flow
// downstream. A failed child fails the step.
func TestSubWorkflow(t *testing.T) {
	t.Parallel()
	for _, outcome := range []string{"succeeded", "failed"} {
		t.Run(outcome, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			e.apply(childDef())
			e.apply(parentDef("parent"))
			id := e.start(workflow.StartParams{Workflow: "parent"})
			if order := e.drive(map[string]string{"c2": outcome}); fmt.Sprint(order) != map[string]string{
				"succeeded": "[[p0] [c1] [c2] [p2]]", "failed": "[[p0] [c1] [c2]]"}[outcome] {
				t.Fatalf("order %v", order)
			}
			child := e.childOf(id)
			cr := e.run(child)
			if cr.ParentRunID != id || cr.State != outcome || string(cr.Params) != `{"n": 7}` {
				t.Fatalf("child run %+v", cr)
			}
			r := e.run(id)
			if outcome == "succeeded" {
				if r.State != "succeeded" || string(r.Steps[1].Output) != fmt.Sprintf(`{"state": "succeeded", "run_id": "%d"}`, child) {
					t.Fatalf("parent %+v", r)
				}
				p2 := e.int("SELECT task_id FROM workflow_run_steps WHERE run_id = $1 AND name = 'p2'", id)
				var payload string
				if err := e.pool.QueryRow(context.Background(), "SELECT payload->>'child' FROM tasks WHERE id = $1", p2).Scan(&payload); err != nil ||
					payload != fmt.Sprintf("%d/succeeded", child) {
					t.Fatalf("p2's payload %q, %v", payload, err)
				}
				return
			}
			if s := e.states(id); r.State != "failed" || s["sub"] != "failed" || s["p2"] != "upstream_failed" ||
				!strings.Contains(r.Steps[1].Error, fmt.Sprintf("sub-workflow run %d failed", child)) {
				t.Fatalf("parent %+v", r)
			}
		})
	}
}

// Cancel and stop cascade to the child run (its live tasks canceled, its late
// results refused); pause and resume too. Ending the child alone ends the
// parent's step as canceled.
func TestSubWorkflowCascade(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, state := range []string{"canceled", "stopped", "failed"} { // failed: the parent's run timeout
		t.Run(state, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			e.apply(childDef())
			e.apply(parentDef("parent"))
			id := e.start(workflow.StartParams{Workflow: "parent"})
			e.finish(e.claim(), func(claimed) (string, string) { return "succeeded", "" })
			child := e.childOf(id)
			if err := e.tx(func(q *db.Queries) error { return workflow.Pause(ctx, q, id) }); err != nil {
				t.Fatal(err)
			}
			if r := e.run(child); r.State != "paused" {
				t.Fatalf("child %s after the parent's pause", r.State)
			}
			if cs := e.claim(); len(cs) != 0 {
				t.Fatalf("paused: claimed %+v", cs)
			}
			if err := e.tx(func(q *db.Queries) error { return workflow.Resume(ctx, q, id) }); err != nil {
				t.Fatal(err)
			}
			cs := e.claim()
			if len(cs) != 1 || cs[0].step != "c1" || cs[0].run != child {
				t.Fatalf("after resume claimed %+v", cs)
			}
			if err := e.tx(func(q *db.Queries) error {
				if state == "failed" {
					return workflow.TimeOut(ctx, q, id)
				}
				return workflow.End(ctx, q, id, state)
			}); err != nil {
				t.Fatal(err)
			}
			if sum := e.finish(cs, func(claimed) (string, string) { return "succeeded", "" }); len(sum.Applied) != 0 {
				t.Fatalf("late child result applied: %+v", sum)
			}
			r, cr := e.run(id), e.run(child)
			wantStep := map[string]string{"canceled": "canceled", "stopped": "canceled", "failed": "failed"}[state]
			if r.State != state || cr.State != state || r.StepsLeft != 0 || cr.StepsLeft != 0 || r.Steps[1].State != wantStep {
				t.Fatalf("parent %+v, child %+v", r, cr)
			}
		})
	}
	t.Run("child ended alone", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t)
		e.apply(childDef())
		d := parentDef("parent")
		d.Steps[2].TriggerRule = workflow.AllDone
		e.apply(d)
		id := e.start(workflow.StartParams{Workflow: "parent"})
		e.finish(e.claim(), func(claimed) (string, string) { return "succeeded", "" })
		child := e.childOf(id)
		if err := e.tx(func(q *db.Queries) error { return workflow.End(ctx, q, child, "stopped") }); err != nil {
			t.Fatal(err)
		}
		if s := e.states(id); s["sub"] != "canceled" || s["p2"] != "queued" {
			t.Fatalf("parent steps %v", s)
		}
		e.drive(nil)
		if r := e.run(id); r.State != "failed" {
			t.Fatalf("parent %s", r.State)
		}
	})
}

// Apply refuses a sub-workflow it cannot start: unknown workflow, unknown or
// missing parameter, a cycle through latest versions; and stores nothing.
func TestSubWorkflowValidation(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.apply(childDef())
	try := func(d workflow.Definition) error {
		return e.tx(func(q *db.Queries) error { _, err := workflow.Apply(context.Background(), q, d); return err })
	}
	sub := func(wf string, params map[string]string) workflow.Definition {
		return def("p", workflow.Step{Name: "sub", Workflow: wf, Params: params})
	}
	cases := []struct {
		d    workflow.Definition
		want string
	}{
		{sub("nope", nil), `steps[0] (sub).workflow: unknown workflow "nope" (apply it first)`},
		{sub("child", nil), `steps[0] (sub).params: workflow "child" requires parameter "n"`},
		{sub("child", map[string]string{"n": "1", "x": "2"}), `steps[0] (sub).params.x: workflow "child" has no parameter "x"`},
		{sub("p", nil), `steps[0] (sub).workflow: a workflow cannot run itself as a sub-workflow`},
		{def("p", workflow.Step{Name: "sub", Workflow: "child", Group: "g", Params: map[string]string{"n": "${params.zz}"}}),
			"a sub-workflow step takes no group"},
		{def("p", workflow.Step{Name: "sub", Workflow: "child", Params: map[string]string{"n": "${params.zz}"}}),
			`steps[0] (sub).params.n: reference ${params.zz}: unknown parameter "zz"`},
	}
	for _, tc := range cases {
		if err := try(tc.d); !errors.Is(err, workflow.ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("apply %+v: %v; want %q", tc.d.Steps, err, tc.want)
		}
	}
	// a -> sub b; then b -> sub a is a cycle.
	e.apply(def("b", step("x")))
	e.apply(def("a", workflow.Step{Name: "s", Workflow: "b"}))
	err := try(def("b", workflow.Step{Name: "s", Workflow: "a"}))
	if !errors.Is(err, workflow.ErrInvalid) || !strings.Contains(err.Error(), "sub-workflow cycle: b -> a -> b") {
		t.Fatalf("cycle: %v", err)
	}
	if n := e.int("SELECT count(*) FROM workflows WHERE name = 'p'"); n != 0 {
		t.Fatalf("a refused apply stored %d workflows", n)
	}
	if n := e.int("SELECT latest_version FROM workflows WHERE name = 'b'"); n != 1 {
		t.Fatalf("b's latest version %d after a refused apply", n)
	}
}

// Map and reference validation.
func TestMapValidation(t *testing.T) {
	t.Parallel()
	m := func(mod func(s *workflow.Step)) workflow.Definition {
		d := mapDef("m", 0)
		mod(&d.Steps[1])
		return d
	}
	cases := []struct {
		d    workflow.Definition
		want string
	}{
		{m(func(s *workflow.Step) { s.Map.Over = "items" }), `steps[1] (each).map.over: "items": write one reference`},
		{m(func(s *workflow.Step) { s.Map.Over = "${steps.list.outputs.nope}" }),
			`steps[1] (each).map.over: reference ${steps.list.outputs.nope}: step "list" declares no output "nope" (its outputs: [items])`},
		{m(func(s *workflow.Step) { s.Map.MaxItems = 20000 }), "steps[1] (each).map.max_items: max_items 20000 is outside 1..10000"},
		{m(func(s *workflow.Step) { s.Map.Parallelism = -1 }), "steps[1] (each).map.parallelism: parallelism -1 is outside"},
		{m(func(s *workflow.Step) { s.Outputs = []string{"x"} }), "steps[1] (each).outputs: a map step's outputs are results and count"},
		{m(func(s *workflow.Step) { s.Map = nil }), `steps[1] (each).payload: reference ${map.item}: only a map step's payload has a map item`},
	}
	for _, tc := range cases {
		err := tc.d.Validate()
		if !errors.Is(err, workflow.ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v; want %q", err, tc.want)
		}
	}
	if err := mapDef("m", 3).Validate(); err != nil {
		t.Fatal(err)
	}
}

// The steps one completion readies get their tasks in one statement; when one
// of them cannot be stored (its group was deleted) each is stored alone: that
// one fails its step (and its successor is decided from it), the others run,
// and the result that readied them is recorded.
func TestReadiedTaskThatCannotBeStored(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	if _, err := e.pool.Exec(ctx, "INSERT INTO worker_groups (name) VALUES ('gone')"); err != nil {
		t.Fatal(err)
	}
	c := step("c", "a")
	c.Group = "gone"
	e.apply(def("lost-group", step("a"), step("b", "a"), c, step("d", "c"), step("e", "b")))
	if _, err := e.pool.Exec(ctx, "DELETE FROM worker_groups WHERE name = 'gone'"); err != nil {
		t.Fatal(err)
	}
	id := e.start(workflow.StartParams{Workflow: "lost-group"})
	if sum := e.finish(e.claim(), func(claimed) (string, string) { return "succeeded", "" }); len(sum.Applied) != 1 {
		t.Fatalf("a's result: %+v", sum)
	}
	if s := e.states(id); s["a"] != "succeeded" || s["b"] != "queued" || s["c"] != "failed" || s["d"] != "upstream_failed" {
		t.Fatalf("states %v", s)
	}
	if r := e.run(id); !strings.Contains(r.Steps[2].Error, "task could not be created") {
		t.Fatalf("c's error %q", r.Steps[2].Error)
	}
	e.drive(nil)
	if s := e.states(id); s["e"] != "succeeded" || e.run(id).State != "failed" {
		t.Fatalf("states %v, run %s", s, e.run(id).State)
	}
}
