package baton_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap/zaptest"

	"github.com/baton-scheduler/baton"
	"github.com/baton-scheduler/baton/batontest"
)

// startWorker runs an embedded worker (with a master) of group "app" with
// handlers until the test ends.
func startWorker(t *testing.T, dsn string, handlers map[string]baton.Handler) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	w, err := baton.NewWorker(ctx, baton.WorkerConfig{
		DatabaseURL: dsn, Group: "app", Logger: zaptest.NewLogger(t), Handlers: handlers, Master: &baton.MasterConfig{},
	})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	select {
	case <-w.Ready():
	case <-time.After(20 * time.Second):
		t.Fatal("worker not ready")
	}
}

// A workflow through the public API with a real worker: apply, start, wait;
// a handler's JSON output and a parameter reach the downstream step.
func TestWorkflowEndToEnd(t *testing.T) {
	t.Parallel()
	pool, dsn := srv.NewPool(t)
	ctx := context.Background()
	var mu sync.Mutex
	seen := map[string]string{}
	startWorker(t, dsn, map[string]baton.Handler{
		"extract": func(_ context.Context, task baton.Task) (string, error) {
			return `{"rows": "42"}`, nil
		},
		"load": func(_ context.Context, task baton.Task) (string, error) {
			mu.Lock()
			seen[string(task.Payload)] = "load"
			mu.Unlock()
			return "", nil
		},
	})
	client, err := baton.NewClient(pool, &baton.ClientConfig{Logger: zaptest.NewLogger(t), WaitPollInterval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	def, err := baton.ParseWorkflow([]byte(`
name: etl
params:
  - {name: day}
steps:
  - {name: extract, group: app, kind: extract, outputs: [rows]}
  - name: load
    group: app
    kind: load
    depends_on: [extract]
    payload: {rows: "${steps.extract.outputs.rows}", day: "${params.day}"}
`))
	if err != nil {
		t.Fatal(err)
	}
	if a, err := client.ApplyWorkflow(ctx, def); err != nil || a.Version != 1 || !a.Created {
		t.Fatalf("apply: %+v, %v", a, err)
	}
	id, err := client.StartRun(ctx, baton.RunSpec{Workflow: "etl", Params: map[string]any{"day": "2026-12-05"}})
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	r, err := client.WaitRun(wctx, id)
	if err != nil || r.State != "succeeded" || len(r.Steps) != 2 {
		t.Fatalf("wait: %+v, %v", r, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if seen[`{"day": "2026-12-05", "rows": "42"}`] != "load" {
		t.Fatalf("load saw %v", seen)
	}
	runs, err := client.ListRuns(ctx, baton.RunListParams{Workflow: "etl"})
	if err != nil || len(runs) != 1 || runs[0].ID != id {
		t.Fatalf("list: %+v, %v", runs, err)
	}
	if _, err := client.StartRun(ctx, baton.RunSpec{Workflow: "etl"}); !errors.Is(err, baton.ErrInvalidWorkflow) {
		t.Fatalf("start without a required parameter: %v", err)
	}
	if _, err := client.GetRun(ctx, 999); !errors.Is(err, baton.ErrWorkflowNotFound) {
		t.Fatalf("get unknown run: %v", err)
	}
}

// StartRunTx on the application's pool (baton's schema not on its
// search_path): rolled back, no run and no task; committed, the run; the
// caller's search_path is restored.
func TestStartRunTx(t *testing.T) {
	t.Parallel()
	_, dsn := srv.NewPool(t)
	ctx := context.Background()
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	cfg.ConnConfig.RuntimeParams["search_path"] = "public"
	app, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	client, err := baton.NewClient(app, &baton.ClientConfig{Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.CreateGroup(ctx, "app", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := client.ApplyWorkflow(ctx, baton.WorkflowDefinition{Name: "w", Steps: []baton.WorkflowStep{{Name: "a", Group: "app", Kind: "k"}}}); err != nil {
		t.Fatal(err)
	}
	count := func() int64 {
		return batontest.Int64(t, app, "SELECT (SELECT count(*) FROM baton.workflow_runs) + (SELECT count(*) FROM baton.tasks)")
	}
	for _, commit := range []bool{false, true} {
		tx, err := app.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		id, err := client.StartRunTx(ctx, tx, baton.RunSpec{Workflow: "w"})
		if err != nil {
			t.Fatal(err)
		}
		var sp string
		if err := tx.QueryRow(ctx, "SHOW search_path").Scan(&sp); err != nil || sp != "public" {
			t.Fatalf("search_path after StartRunTx: %q, %v", sp, err)
		}
		if commit {
			if err := tx.Commit(ctx); err != nil {
				t.Fatal(err)
			}
			if n := count(); n != 2 {
				t.Fatalf("committed: %d rows; want the run and its task", n)
			}
			if r, err := client.GetRun(ctx, id); err != nil || r.Steps[0].State != "queued" {
				t.Fatalf("committed run: %+v, %v", r, err)
			}
		} else {
			if err := tx.Rollback(ctx); err != nil {
				t.Fatal(err)
			}
			if n := count(); n != 0 {
				t.Fatalf("rolled back: %d rows remain", n)
			}
		}
	}
}

// BenchmarkWorkflowHandoff measures the hand-off of a chain: a step's task
// finishes -> its successor's task is running (started_at of the successor
// minus finished_at of the predecessor, both Postgres time), over a chain of
// BATON_BENCH_CHAIN steps (default 1,000) of no-op handlers on one embedded
// worker. Run on the durable Postgres:
//
//	BATON_TEST_DATABASE_URL=postgres://baton:baton@127.0.0.1:5433/postgres go test -run '^$' -bench WorkflowHandoff -benchtime 1x .
func BenchmarkWorkflowHandoff(b *testing.B) {
	client, pool := benchWorkflowEnv(b, baton.WorkerSlotsDefault)
	ctx := context.Background()
	n := benchEnvInt("BATON_BENCH_CHAIN", 1000)
	def := baton.WorkflowDefinition{Name: "chain"}
	for i := range n {
		s := baton.WorkflowStep{Name: fmt.Sprintf("s%04d", i), Group: "app", Kind: "noop"}
		if i > 0 {
			s.DependsOn = []string{fmt.Sprintf("s%04d", i-1)}
		}
		def.Steps = append(def.Steps, s)
	}
	if _, err := client.ApplyWorkflow(ctx, def); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		id, err := client.StartRun(ctx, baton.RunSpec{Workflow: "chain"})
		if err != nil {
			b.Fatal(err)
		}
		wctx, wcancel := context.WithTimeout(ctx, 5*time.Minute)
		r, err := client.WaitRun(wctx, id)
		wcancel()
		if err != nil || r.State != "succeeded" {
			b.Fatalf("run: %s, %v", r.State, err)
		}
		var p50, p99, maxMs float64
		if err := pool.QueryRow(ctx, `
			WITH s AS (
				SELECT t.started_at - lag(t.finished_at) OVER (ORDER BY t.workflow_step) AS d
				FROM tasks t WHERE t.workflow_run_id = $1)
			SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM d) * 1000),
			       percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM d) * 1000),
			       max(extract(epoch FROM d) * 1000)
			FROM s WHERE d IS NOT NULL`, id).Scan(&p50, &p99, &maxMs); err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(p50, "handoff-p50-ms")
		b.ReportMetric(p99, "handoff-p99-ms")
		b.ReportMetric(maxMs, "handoff-max-ms")
		b.Logf("chain of %d steps: hand-off p50 %.2f ms, p99 %.2f ms, max %.2f ms", n, p50, p99, maxMs)
	}
}

// A map step over a handler's JSON array and a sub-workflow, through the
// public API with a real worker: the map's results reach the child run's
// parameter, the child's step sees it, and the parent ends with the child.
func TestMapAndSubWorkflowEndToEnd(t *testing.T) {
	t.Parallel()
	pool, dsn := srv.NewPool(t)
	ctx := context.Background()
	var mu sync.Mutex
	var got string
	startWorker(t, dsn, map[string]baton.Handler{
		"list": func(context.Context, baton.Task) (string, error) { return `{"parts": ["eu", "us", "apac"]}`, nil },
		"part": func(_ context.Context, task baton.Task) (string, error) {
			var p struct{ Part string }
			if err := json.Unmarshal(task.Payload, &p); err != nil {
				return "", err
			}
			return fmt.Sprintf(`{"n": "%d"}`, len(p.Part)), nil
		},
		"report": func(_ context.Context, task baton.Task) (string, error) {
			mu.Lock()
			got = string(task.Payload)
			mu.Unlock()
			return "", nil
		},
	})
	client, err := baton.NewClient(pool, &baton.ClientConfig{Logger: zaptest.NewLogger(t), WaitPollInterval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	for _, y := range []string{`
name: report
params: [{name: results}]
steps:
  - {name: r, group: app, kind: report, payload: {results: "${params.results}"}}
`, `
name: parts
steps:
  - {name: list, group: app, kind: list, outputs: [parts]}
  - name: each
    group: app
    kind: part
    depends_on: [list]
    map: {over: "${steps.list.outputs.parts}", parallelism: 2}
    payload: {part: "${map.item}"}
  - name: sub
    depends_on: [each]
    workflow: report
    params: {results: "${steps.each.outputs.results}"}
`} {
		def, err := baton.ParseWorkflow([]byte(y))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := client.ApplyWorkflow(ctx, def); err != nil {
			t.Fatal(err)
		}
	}
	id, err := client.StartRun(ctx, baton.RunSpec{Workflow: "parts"})
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	r, err := client.WaitRun(wctx, id)
	if err != nil || r.State != "succeeded" || r.Steps[1].Items != 3 || r.Steps[2].ChildRunID == 0 {
		t.Fatalf("wait: %+v, %v", r, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if got != `{"results": "[{\"n\": \"2\"}, {\"n\": \"2\"}, {\"n\": \"4\"}]"}` {
		t.Fatalf("the child's step saw %s", got)
	}
	if c, err := client.GetRun(ctx, r.Steps[2].ChildRunID); err != nil || c.ParentRunID != id || c.State != "succeeded" {
		t.Fatalf("child run %+v, %v", c, err)
	}
}
