package httpapi

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/schedule"
)

const apiWorkflow = `name: report
params:
  - name: day
    type: string
    default: "2026-01-01"
steps:
  - name: extract
    group: g
    shell: echo extract ${params.day}
  - name: publish
    group: g
    shell: echo publish
    depends_on: [extract]
`

// workflowAPI: workflows, runs, schedules and backfills through the API (part
// of TestAPI, whose end checks every documented answer was seen): every route,
// its errors, and every answer checked against openapi.yaml (a.do); each change
// in the audit log. Group g exists.
func workflowAPI(t *testing.T, a *api) {
	ctx := context.Background()
	q := db.New(a.pool)

	// Workflows.
	var applied struct {
		Name    string
		Version int
		Created bool
	}
	a.want(201, "POST", "/api/v1/workflows", a.operate, apiWorkflow, &applied)
	if applied.Name != "report" || applied.Version != 1 || !applied.Created {
		t.Fatalf("applied %+v", applied)
	}
	a.want(200, "POST", "/api/v1/workflows", a.operate, apiWorkflow, &applied) // unchanged
	if applied.Created || applied.Version != 1 {
		t.Fatalf("re-applied %+v", applied)
	}
	a.wantErr(400, "request body is empty", "POST", "/api/v1/workflows", a.operate, "")
	a.wantErr(400, "invalid workflow", "POST", "/api/v1/workflows", a.operate, "name: x\nsteps: []\n")
	a.wantErr(400, "invalid workflow", "POST", "/api/v1/workflows", a.operate,
		"name: loop\nsteps:\n  - {name: a, group: g, shell: 'true', depends_on: [b]}\n  - {name: b, group: g, shell: 'true', depends_on: [a]}\n")
	a.want(200, "GET", "/api/v1/workflows", a.read, nil, nil)
	var version struct {
		Version    int
		Definition map[string]any
	}
	a.want(200, "GET", "/api/v1/workflows/report", a.read, nil, &version)
	if version.Version != 1 || version.Definition["name"] != "report" {
		t.Fatalf("version %+v", version)
	}
	a.want(200, "GET", "/api/v1/workflows/report?version=1", a.read, nil, nil)
	a.wantErr(404, `workflow "report" has no version 9`, "GET", "/api/v1/workflows/report?version=9", a.read, nil)
	a.wantErr(404, `workflow "nope" not found`, "GET", "/api/v1/workflows/nope", a.read, nil)
	a.wantErr(400, "version", "GET", "/api/v1/workflows/report?version=x", a.read, nil)

	// Runs.
	var started struct {
		RunID   int64 `json:"run_id"`
		Created bool
	}
	start := StartRunRequest{Workflow: "report", Params: map[string]any{"day": "2026-12-05"}, IdempotencyKey: "d1"}
	a.want(201, "POST", "/api/v1/runs", a.operate, start, &started)
	if started.RunID == 0 || !started.Created {
		t.Fatalf("started %+v", started)
	}
	first := started.RunID
	a.want(200, "POST", "/api/v1/runs", a.operate, start, &started)
	if started.RunID != first || started.Created {
		t.Fatalf("idempotent start %+v, want run %d again", started, first)
	}
	a.wantErr(404, "not found", "POST", "/api/v1/runs", a.operate, StartRunRequest{Workflow: "nope"})
	a.wantErr(400, "workflow is required", "POST", "/api/v1/runs", a.operate, StartRunRequest{})
	a.wantErr(400, "unknown field", "POST", "/api/v1/runs", a.operate, `{"workflow":"report","colour":1}`)
	a.wantErr(400, "invalid workflow", "POST", "/api/v1/runs", a.operate, StartRunRequest{Workflow: "report", Params: map[string]any{"nope": 1}})
	var run struct {
		ID    int64
		State string
		Steps []struct{ Name, State string }
	}
	a.want(200, "GET", "/api/v1/runs/"+itoa(first), a.read, nil, &run)
	if run.State != "running" || len(run.Steps) != 2 || run.Steps[0].Name != "extract" {
		t.Fatalf("run %+v", run)
	}
	var page struct {
		Runs []struct{ ID int64 }
	}
	a.want(200, "GET", "/api/v1/runs?workflow=report&state=running&limit=10", a.read, nil, &page)
	if len(page.Runs) != 1 || page.Runs[0].ID != first {
		t.Fatalf("runs %+v", page)
	}
	a.wantErr(400, `unknown run state "nope"`, "GET", "/api/v1/runs?state=nope", a.read, nil)
	a.wantErr(404, "run 999999", "GET", "/api/v1/runs/999999", a.read, nil)

	a.want(200, "POST", "/api/v1/runs/"+itoa(first)+"/pause", a.operate, nil, &run)
	if run.State != "paused" {
		t.Fatalf("paused run is %s", run.State)
	}
	a.wantErr(409, "not running", "POST", "/api/v1/runs/"+itoa(first)+"/pause", a.operate, nil)
	a.want(200, "POST", "/api/v1/runs/"+itoa(first)+"/resume", a.operate, nil, &run)
	a.wantErr(409, "not paused", "POST", "/api/v1/runs/"+itoa(first)+"/resume", a.operate, nil)
	a.wantErr(409, "not in a state", "POST", "/api/v1/runs/"+itoa(first)+"/rerun", a.operate, RerunRequest{Failed: true})
	a.want(200, "POST", "/api/v1/runs/"+itoa(first)+"/cancel", a.operate, nil, &run)
	if run.State != "canceled" {
		t.Fatalf("canceled run is %s", run.State)
	}
	a.wantErr(409, "already canceled", "POST", "/api/v1/runs/"+itoa(first)+"/stop", a.operate, nil)
	a.wantErr(404, "run 999999", "POST", "/api/v1/runs/999999/cancel", a.operate, nil)
	a.wantErr(409, "already canceled", "POST", "/api/v1/runs/"+itoa(first)+"/cancel", a.operate, nil)
	for _, c := range []string{"pause", "resume", "cancel", "stop"} {
		a.wantErr(404, "run 999999", "POST", "/api/v1/runs/999999/"+c, a.operate, nil)
	}
	a.wantErr(404, "run 999999", "POST", "/api/v1/runs/999999/rerun", a.operate, RerunRequest{Failed: true})
	a.want(201, "POST", "/api/v1/runs", a.operate, StartRunRequest{Workflow: "report"}, &started)
	a.want(200, "POST", "/api/v1/runs/"+itoa(started.RunID)+"/stop", a.operate, nil, &run)
	if run.State != "stopped" {
		t.Fatalf("stopped run is %s", run.State)
	}
	a.wantErr(400, "one of them", "POST", "/api/v1/runs/"+itoa(first)+"/rerun", a.operate, RerunRequest{})
	var rerun struct{ Steps int }
	a.want(200, "POST", "/api/v1/runs/"+itoa(first)+"/rerun", a.operate, RerunRequest{From: "extract"}, &rerun)
	if rerun.Steps != 2 {
		t.Fatalf("rerun from extract: %d steps, want 2", rerun.Steps)
	}

	// Schedules (created as `baton schedule create` does; the API reads and pauses them).
	now := time.Date(2026, 12, 5, 10, 30, 0, 0, time.UTC)
	if _, err := schedule.Create(ctx, q, schedule.Spec{Name: "hourly-report", Workflow: "report", Cron: "@hourly", Zone: "Europe/London"}, &now); err != nil {
		t.Fatal(err)
	}
	var sc struct {
		Name, Zone    string
		Paused        bool
		NextNominalAt *string `json:"next_nominal_at"`
	}
	a.want(200, "GET", "/api/v1/schedules/hourly-report", a.read, nil, &sc)
	if sc.Zone != "Europe/London" || sc.NextNominalAt == nil || *sc.NextNominalAt != "2026-12-05T11:00:00Z" {
		t.Fatalf("schedule %+v", sc)
	}
	a.want(200, "GET", "/api/v1/schedules?workflow=report", a.read, nil, nil)
	var preview struct {
		Fires []struct{ Nominal string }
	}
	a.want(200, "GET", "/api/v1/schedules/hourly-report/preview?n=3", a.read, nil, &preview)
	if len(preview.Fires) != 3 || preview.Fires[2].Nominal != "2026-12-05T13:00:00Z" {
		t.Fatalf("preview %+v", preview)
	}
	a.wantErr(400, "query parameter n", "GET", "/api/v1/schedules/hourly-report/preview?n=0", a.read, nil)
	a.want(200, "POST", "/api/v1/schedules/hourly-report/pause", a.operate, nil, &sc)
	if !sc.Paused {
		t.Fatal("schedule not paused")
	}
	a.want(200, "POST", "/api/v1/schedules/hourly-report/resume", a.operate, nil, &sc)
	if sc.Paused {
		t.Fatal("schedule not resumed")
	}
	a.wantErr(404, "schedule nope", "GET", "/api/v1/schedules/nope", a.read, nil)
	a.wantErr(404, "schedule nope", "POST", "/api/v1/schedules/nope/pause", a.operate, nil)
	a.wantErr(404, "schedule nope", "POST", "/api/v1/schedules/nope/resume", a.operate, nil)
	a.wantErr(400, "query parameter limit", "GET", "/api/v1/schedules?limit=0", a.read, nil)
	var trig struct {
		NominalTime string `json:"nominal_time"`
		RunID       int64  `json:"run_id"`
	}
	at := `{"at": "2026-12-05T09:00:00Z"}`
	a.want(201, "POST", "/api/v1/schedules/hourly-report/trigger", a.operate, at, &trig)
	if trig.NominalTime != "2026-12-05T09:00:00Z" || trig.RunID == 0 {
		t.Fatalf("trigger: %+v", trig)
	}
	a.wantErr(409, "is running", "POST", "/api/v1/schedules/hourly-report/trigger", a.operate, at)
	a.wantErr(404, "schedule nope", "POST", "/api/v1/schedules/nope/trigger", a.operate, nil)
	a.wantErr(400, "request body", "POST", "/api/v1/schedules/hourly-report/trigger", a.operate, `{"at": "yesterday"}`)
	a.wantErr(404, "schedule nope", "GET", "/api/v1/schedules/nope/preview", a.read, nil)

	// Backfills.
	b, _, err := schedule.CreateBackfill(ctx, q, schedule.BackfillSpec{Workflow: "report",
		From: now.Add(-72 * time.Hour), To: now, Parallel: 2}, false)
	if err != nil {
		t.Fatal(err)
	}
	id := itoa(b.ID)
	a.want(200, "GET", "/api/v1/backfills", a.read, nil, nil)
	var bf struct{ State string }
	a.want(200, "GET", "/api/v1/backfills/"+id, a.read, nil, &bf)
	a.want(200, "POST", "/api/v1/backfills/"+id+"/pause", a.operate, nil, &bf)
	if bf.State != "paused" {
		t.Fatalf("paused backfill is %s", bf.State)
	}
	a.wantErr(409, "cannot make it paused", "POST", "/api/v1/backfills/"+id+"/pause", a.operate, nil)
	a.want(200, "POST", "/api/v1/backfills/"+id+"/resume", a.operate, nil, &bf)
	a.want(200, "POST", "/api/v1/backfills/"+id+"/cancel", a.operate, nil, &bf)
	if bf.State != "canceled" {
		t.Fatalf("canceled backfill is %s", bf.State)
	}
	a.wantErr(409, "cannot make it running", "POST", "/api/v1/backfills/"+id+"/resume", a.operate, nil)
	a.wantErr(404, "backfill", "GET", "/api/v1/backfills/999999", a.read, nil)
	a.wantErr(409, "cannot make it canceled", "POST", "/api/v1/backfills/"+id+"/cancel", a.operate, nil)
	for _, c := range []string{"pause", "resume", "cancel"} {
		a.wantErr(404, "backfill", "POST", "/api/v1/backfills/999999/"+c, a.operate, nil)
	}
	a.wantErr(400, "query parameter limit", "GET", "/api/v1/backfills?limit=x", a.read, nil)

	// Every change above is in the audit log.
	var actions []string
	rows, err := a.pool.Query(ctx, `SELECT action FROM audit_log WHERE split_part(action, '.', 1) IN ('workflow', 'run', 'schedule', 'backfill') ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			t.Fatal(err)
		}
		actions = append(actions, s)
	}
	want := []string{"workflow.apply", "workflow.apply", "run.start", "run.pause", "run.resume", "run.cancel",
		"run.start", "run.stop", "run.rerun", "schedule.pause", "schedule.resume", "schedule.trigger", "backfill.pause", "backfill.resume", "backfill.cancel"}
	if len(actions) != len(want) {
		t.Fatalf("audit log %v, want %v", actions, want)
	}
	for i := range want {
		if actions[i] != want[i] {
			t.Fatalf("audit log %v, want %v", actions, want)
		}
	}
}

func itoa(id int64) string { return strconv.FormatInt(id, 10) }
