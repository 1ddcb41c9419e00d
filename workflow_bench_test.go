package baton_test

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/baton-scheduler/baton"
)

// benchWorkflowEnv runs one embedded worker of group "app" with slots slots
// and a no-op handler until the benchmark ends, and returns a client.
func benchWorkflowEnv(b *testing.B, slots int) (*baton.Client, *pgxpool.Pool) {
	b.Helper()
	pool, dsn := srv.NewPool(b)
	ctx, cancel := context.WithCancel(context.Background())
	w, err := baton.NewWorker(ctx, baton.WorkerConfig{DatabaseURL: dsn, Group: "app", Slots: slots, Logger: zap.NewNop(),
		Handlers: map[string]baton.Handler{"noop": func(context.Context, baton.Task) (string, error) { return "", nil }}})
	if err != nil {
		cancel()
		b.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	b.Cleanup(func() { cancel(); <-done })
	select {
	case <-w.Ready():
	case <-time.After(30 * time.Second):
		b.Fatal("worker not ready")
	}
	client, err := baton.NewClient(pool, &baton.ClientConfig{Logger: zap.NewNop(), WaitPollInterval: 100 * time.Millisecond})
	if err != nil {
		b.Fatal(err)
	}
	return client, pool
}

func benchEnvInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// BenchmarkWorkflowFanOut: a fan-out/fan-in DAG of BATON_BENCH_FANOUT steps
// (default 1,000: a root, 998 parallel steps, a sink) of no-op handlers, start
// -> finished (the run's finished_at - created_at, Postgres time), against
// the same number of independent no-op tasks submitted at once on the same
// worker (last finished_at - first submitted_at); and the same fan-out as one
// map step of as many items, in BATON_BENCH_ROUNDS interleaved rounds (default
// 5; the figures are medians). Worker slots: BATON_BENCH_SLOTS (default 32).
//
//	BATON_TEST_DATABASE_URL=postgres://baton:baton@127.0.0.1:5433/postgres go test -run '^$' -bench WorkflowFanOut -benchtime 1x -count 3 .
func BenchmarkWorkflowFanOut(b *testing.B) {
	n := benchEnvInt("BATON_BENCH_FANOUT", 1000)
	client, pool := benchWorkflowEnv(b, benchEnvInt("BATON_BENCH_SLOTS", 32))
	ctx := context.Background()
	dag := baton.WorkflowDefinition{Name: "fan", Steps: []baton.WorkflowStep{{Name: "root", Group: "app", Kind: "noop"}}}
	var mids []string
	for i := range n - 2 {
		name := fmt.Sprintf("m%04d", i)
		mids = append(mids, name)
		dag.Steps = append(dag.Steps, baton.WorkflowStep{Name: name, Group: "app", Kind: "noop", DependsOn: []string{"root"}})
	}
	dag.Steps = append(dag.Steps, baton.WorkflowStep{Name: "sink", Group: "app", Kind: "noop", DependsOn: mids})
	mapped := baton.WorkflowDefinition{Name: "mapped", Params: []baton.WorkflowParam{{Name: "items"}}, Steps: []baton.WorkflowStep{
		{Name: "each", Group: "app", Kind: "noop", Map: &baton.WorkflowMap{Over: "${params.items}", MaxItems: 10000},
			Payload: map[string]any{"i": "${map.item}"}},
	}}
	items := "["
	for i := range n {
		if i > 0 {
			items += ","
		}
		items += strconv.Itoa(i)
	}
	items += "]"
	for _, d := range []baton.WorkflowDefinition{dag, mapped} {
		if _, err := client.ApplyWorkflow(ctx, d); err != nil {
			b.Fatal(err)
		}
	}
	runMs := func(spec baton.RunSpec) float64 {
		b.Helper()
		id, err := client.StartRun(ctx, spec)
		if err != nil {
			b.Fatal(err)
		}
		wctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
		defer cancel()
		if r, err := client.WaitRun(wctx, id); err != nil || r.State != "succeeded" {
			b.Fatalf("run %d: %s, %v", id, r.State, err)
		}
		var ms float64
		if err := pool.QueryRow(ctx, `SELECT extract(epoch FROM finished_at - created_at) * 1000 FROM workflow_runs WHERE id = $1`, id).Scan(&ms); err != nil {
			b.Fatal(err)
		}
		// Where the time went, from the run's start (ms): first task started,
		// first and last task finished, last task started.
		var firstStart, firstEnd, lastStart, lastEnd float64
		if err := pool.QueryRow(ctx, `SELECT extract(epoch FROM min(t.started_at) - r.created_at) * 1000,
				extract(epoch FROM min(t.finished_at) - r.created_at) * 1000,
				extract(epoch FROM max(t.started_at) - r.created_at) * 1000,
				extract(epoch FROM max(t.finished_at) - r.created_at) * 1000
			FROM workflow_runs r JOIN tasks t ON t.workflow_run_id = r.id WHERE r.id = $1 GROUP BY r.created_at`, id).Scan(
			&firstStart, &firstEnd, &lastStart, &lastEnd); err != nil {
			b.Fatal(err)
		}
		// The longest pause between two task starts (a worker that slept
		// through a wake-up shows here).
		var gap, gapAt float64
		if err := pool.QueryRow(ctx, `SELECT coalesce(max(g), 0), coalesce((array_agg(at ORDER BY g DESC))[1], 0) FROM (
				SELECT extract(epoch FROM started_at - lag(started_at) OVER (ORDER BY started_at)) * 1000 AS g,
				       extract(epoch FROM started_at - (SELECT created_at FROM workflow_runs WHERE id = $1)) * 1000 AS at
				FROM tasks WHERE workflow_run_id = $1) x WHERE g IS NOT NULL`, id).Scan(&gap, &gapAt); err != nil {
			b.Fatal(err)
		}
		b.Logf("%s: first task started %.0f ms, first finished %.0f, last started %.0f, last finished %.0f, run finished %.0f; longest pause between starts %.0f ms (ending at %.0f)",
			spec.Workflow, firstStart, firstEnd, lastStart, lastEnd, ms, gap, gapAt)
		return ms
	}
	tasksMs := func() float64 {
		b.Helper()
		specs := make([]baton.TaskSpec, n)
		for i := range specs {
			specs[i] = baton.TaskSpec{Group: "app", Kind: "noop"}
		}
		ids, err := client.SubmitMany(ctx, specs)
		if err != nil {
			b.Fatal(err)
		}
		// Polled as often as WaitRun polls a run: the times come from the rows,
		// and a poll of 1,000 ids every 20 ms took a tenth of a core from the
		// worker it measures.
		for deadline := time.Now().Add(10 * time.Minute); ; time.Sleep(100 * time.Millisecond) {
			var left int
			if err := pool.QueryRow(ctx, `SELECT count(*) FROM tasks WHERE id = ANY($1) AND state <> 'succeeded'`, ids).Scan(&left); err != nil {
				b.Fatal(err)
			}
			if left == 0 {
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("%d independent tasks left", left)
			}
		}
		var ms float64
		if err := pool.QueryRow(ctx, `SELECT extract(epoch FROM max(finished_at) - min(submitted_at)) * 1000 FROM tasks WHERE id = ANY($1)`,
			ids).Scan(&ms); err != nil {
			b.Fatal(err)
		}
		return ms
	}
	// Rounds interleave the three, so a noisy moment of the machine falls on
	// all of them; the figures are the medians, and the ratios the medians of
	// each round's ratio.
	rounds := benchEnvInt("BATON_BENCH_ROUNDS", 5)
	for b.Loop() {
		var tasks, dags, maps, dagRatio, mapRatio []float64
		for range rounds {
			t := tasksMs()
			d := runMs(baton.RunSpec{Workflow: "fan"})
			m := runMs(baton.RunSpec{Workflow: "mapped", Params: map[string]any{"items": items}})
			tasks, dags, maps = append(tasks, t), append(dags, d), append(maps, m)
			dagRatio, mapRatio = append(dagRatio, d/t), append(mapRatio, m/t)
			b.Logf("round: independent tasks %.0f ms, DAG %.0f ms (x%.2f), map %.0f ms (x%.2f)", t, d, d/t, m, m/t)
		}
		b.ReportMetric(median(tasks), "tasks-ms")
		b.ReportMetric(median(dags), "dag-ms")
		b.ReportMetric(median(maps), "map-ms")
		b.ReportMetric(median(dagRatio), "dag/tasks")
		b.ReportMetric(median(mapRatio), "map/tasks")
		b.Logf("%d steps, median of %d rounds: independent tasks %.0f ms, fan-out/fan-in DAG %.0f ms (x%.2f), map step %.0f ms (x%.2f)",
			n, rounds, median(tasks), median(dags), median(dagRatio), median(maps), median(mapRatio))
	}
}

// median of xs (sorted in place).
func median(xs []float64) float64 {
	sort.Float64s(xs)
	if len(xs) == 0 {
		return 0
	}
	if len(xs)%2 == 1 {
		return xs[len(xs)/2]
	}
	return (xs[len(xs)/2-1] + xs[len(xs)/2]) / 2
}

// BenchmarkWorkflowConcurrentRuns: BATON_BENCH_RUNS (default 100) runs of a
// 10-step chain of no-op handlers started at once; runs/s and steps/s over the
// first created_at to the last finished_at (Postgres time). Worker slots:
// BATON_BENCH_SLOTS (default 32).
//
//	BATON_TEST_DATABASE_URL=postgres://baton:baton@127.0.0.1:5433/postgres go test -run '^$' -bench WorkflowConcurrentRuns -benchtime 1x -count 3 .
func BenchmarkWorkflowConcurrentRuns(b *testing.B) {
	runs := benchEnvInt("BATON_BENCH_RUNS", 100)
	const steps = 10
	client, pool := benchWorkflowEnv(b, benchEnvInt("BATON_BENCH_SLOTS", 32))
	ctx := context.Background()
	d := baton.WorkflowDefinition{Name: "chain10"}
	for i := range steps {
		s := baton.WorkflowStep{Name: fmt.Sprintf("s%d", i), Group: "app", Kind: "noop"}
		if i > 0 {
			s.DependsOn = []string{fmt.Sprintf("s%d", i-1)}
		}
		d.Steps = append(d.Steps, s)
	}
	if _, err := client.ApplyWorkflow(ctx, d); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		ids := make([]int64, runs)
		errs := make(chan error, runs)
		for i := range ids {
			go func() {
				id, err := client.StartRun(ctx, baton.RunSpec{Workflow: "chain10"})
				ids[i] = id
				errs <- err
			}()
		}
		for range ids {
			if err := <-errs; err != nil {
				b.Fatal(err)
			}
		}
		for deadline := time.Now().Add(10 * time.Minute); ; time.Sleep(20 * time.Millisecond) {
			var left int
			if err := pool.QueryRow(ctx, `SELECT count(*) FROM workflow_runs WHERE id = ANY($1) AND state IN ('running', 'paused')`, ids).Scan(&left); err != nil {
				b.Fatal(err)
			}
			if left == 0 {
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("%d runs left", left)
			}
		}
		var failed int
		var secs float64
		if err := pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE state <> 'succeeded'), extract(epoch FROM max(finished_at) - min(created_at))
			FROM workflow_runs WHERE id = ANY($1)`, ids).Scan(&failed, &secs); err != nil {
			b.Fatal(err)
		}
		if failed > 0 {
			b.Fatalf("%d runs did not succeed", failed)
		}
		b.ReportMetric(float64(runs)/secs, "runs/s")
		b.ReportMetric(float64(runs*steps)/secs, "steps/s")
		b.Logf("%d runs of a %d-step chain in %.2f s: %.1f runs/s, %.0f steps/s", runs, steps, secs, float64(runs)/secs, float64(runs*steps)/secs)
	}
}
