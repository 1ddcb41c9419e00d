// Package bench measures end-to-end figures on a real Postgres: no-op task
// throughput with four workers and submit→running latency at a moderate rate.
// Run with `make bench`; the figures are printed as benchmark metrics.
package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/baton-scheduler/baton/batontest"
	"github.com/baton-scheduler/baton/internal/executor"
	"github.com/baton-scheduler/baton/internal/master"
	"github.com/baton-scheduler/baton/internal/submit"
	"github.com/baton-scheduler/baton/internal/worker"
)

var srv *batontest.Server

// TestMain starts a Postgres only for benchmarks: the package has no tests, so a
// plain `go test ./...` must not start (or migrate) a server it never uses.
func TestMain(m *testing.M) {
	if !batontest.BenchmarksRequested() {
		os.Exit(m.Run())
	}
	os.Exit(batontest.Main(m, func(s *batontest.Server) { srv = s }))
}

// cluster starts one master and n workers in-process (group "bench").
func cluster(b *testing.B, dsn string, workers, slots int) func() {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	m, err := master.New(ctx, master.Config{DatabaseURL: dsn})
	if err != nil {
		b.Fatal(err)
	}
	wg.Add(1)
	go func() { defer wg.Done(); _ = m.Run(ctx) }()
	noop := map[string]executor.Handler{"noop": func(context.Context, executor.Task) (string, error) { return "", nil }}
	ws := make([]*worker.Worker, workers)
	for i := range ws {
		w, err := worker.New(ctx, worker.Config{DatabaseURL: dsn, Group: "bench", Name: fmt.Sprintf("w%d", i), Slots: slots, Handlers: noop})
		if err != nil {
			b.Fatal(err)
		}
		ws[i] = w
		wg.Add(1)
		go func() { defer wg.Done(); _ = w.Run(ctx) }()
	}
	for _, w := range ws {
		batontest.WaitFor(b, 10*time.Second, func() (bool, string) { return w.SessionID() != 0, "worker registered" })
	}
	return func() { cancel(); wg.Wait() }
}

// unfinished reports whether a task is still queued, dispatched or running (1) or
// not (0). It is polled while the clock runs, so it reads two indexes and stops at
// the first row: a count over every task would cost the server as much as the
// work being measured.
func unfinished(b *testing.B, pool *pgxpool.Pool) int64 {
	var n int64
	if err := pool.QueryRow(context.Background(), `SELECT (EXISTS (SELECT 1 FROM tasks WHERE state = 'queued')
		OR EXISTS (SELECT 1 FROM tasks WHERE worker_session_id IS NOT NULL))::int`).Scan(&n); err != nil {
		b.Fatal(err)
	}
	return n
}

func specs(n int) []submit.Spec {
	s := make([]submit.Spec, n)
	for i := range s {
		s[i] = submit.Spec{Group: "bench", Kind: "noop", Payload: json.RawMessage(`{}`)}
	}
	return s
}

// BenchmarkThroughputNoop: 4 workers × 64 slots burn down 20,000 pre-submitted
// no-op Go-handler tasks; tasks/s from the first dispatch to the last finish.
func BenchmarkThroughputNoop(b *testing.B) {
	const n = 20000
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		pool, dsn := srv.NewPool(b)
		stop := cluster(b, dsn, 4, 256)
		for off := 0; off < n; off += 5000 {
			if _, err := submit.Many(context.Background(), pool, specs(5000)); err != nil {
				b.Fatal(err)
			}
		}
		b.StartTimer()
		batontest.WaitFor(b, 10*time.Minute, func() (bool, string) {
			return unfinished(b, pool) == 0, "tasks left"
		})
		b.StopTimer()
		var secs float64
		if err := pool.QueryRow(context.Background(),
			"SELECT extract(epoch FROM max(finished_at) - min(dispatched_at)) FROM tasks").Scan(&secs); err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(n/secs, "tasks/s")
		stop()
	}
}

// BenchmarkBurnDown is the figure compared with River (scripts/bench.sh runs it
// alternately with bench/river on the same durable Postgres): 100,000
// pre-submitted no-op Go-handler tasks (BATON_BENCH_TASKS overrides), one master
// and four workers of 512 slots in this process; tasks/s from the moment the
// cluster starts (Postgres clock) to the last finish.
func BenchmarkBurnDown(b *testing.B) {
	n := 100_000
	if v, err := strconv.Atoi(os.Getenv("BATON_BENCH_TASKS")); err == nil && v > 0 {
		n = v
	}
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		pool, dsn := srv.NewPool(b)
		ctx := context.Background()
		if _, err := pool.Exec(ctx, "INSERT INTO worker_groups (name) VALUES ('bench')"); err != nil {
			b.Fatal(err)
		}
		for off := 0; off < n; off += 5000 {
			if _, err := submit.Many(ctx, pool, specs(min(5000, n-off))); err != nil {
				b.Fatal(err)
			}
		}
		if _, err := pool.Exec(ctx, "VACUUM ANALYZE"); err != nil {
			b.Fatal(err)
		}
		var start time.Time
		if err := pool.QueryRow(ctx, "SELECT clock_timestamp()").Scan(&start); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		stop := cluster(b, dsn, 4, 512)
		batontest.WaitFor(b, 10*time.Minute, func() (bool, string) {
			return unfinished(b, pool) == 0, "tasks left"
		})
		b.StopTimer()
		var secs float64
		var bad int64
		if err := pool.QueryRow(ctx,
			"SELECT extract(epoch FROM max(finished_at) - $1), count(*) FILTER (WHERE state <> 'succeeded') FROM tasks", start).Scan(&secs, &bad); err != nil {
			b.Fatal(err)
		}
		if bad != 0 {
			b.Fatalf("%d tasks did not succeed", bad)
		}
		b.ReportMetric(float64(n)/secs, "tasks/s")
		stop()
	}
}

// BenchmarkDispatchLatency: tasks submitted one per call at a fixed rate (100/s
// for 20 s, 2,000/s for 5 s; each submit on its own goroutine, so a slow one does
// not hold back the next; submitted/s reports the rate reached — on a 2-core
// machine with a durable Postgres the single-task submits themselves top out below
// 2,000/s) to 4 idle workers of 64 slots; latency = started_at − submitted_at (both
// Postgres time).
func BenchmarkDispatchLatency(b *testing.B) {
	for _, c := range []struct{ rate, n int }{{100, 2000}, {2000, 10000}} {
		b.Run(fmt.Sprintf("rate=%d", c.rate), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				pool, dsn := srv.NewPool(b)
				stop := cluster(b, dsn, 4, 64)
				b.StartTimer()
				tick := time.NewTicker(time.Second / time.Duration(c.rate))
				var wg sync.WaitGroup
				errs := make(chan error, 1)
				for range c.n {
					<-tick.C
					wg.Add(1)
					go func() {
						defer wg.Done()
						if _, err := submit.Many(context.Background(), pool, specs(1)); err != nil {
							select {
							case errs <- err:
							default:
							}
						}
					}()
				}
				tick.Stop()
				wg.Wait()
				elapsed := b.Elapsed()
				select {
				case err := <-errs:
					b.Fatal(err)
				default:
				}
				batontest.WaitFor(b, time.Minute, func() (bool, string) { return unfinished(b, pool) == 0, "tasks left" })
				b.StopTimer()
				rows, err := pool.Query(context.Background(), "SELECT extract(epoch FROM started_at - submitted_at)::float8 FROM tasks")
				if err != nil {
					b.Fatal(err)
				}
				var lat []float64
				for rows.Next() {
					var v float64
					_ = rows.Scan(&v)
					lat = append(lat, v*1000)
				}
				rows.Close()
				sort.Float64s(lat)
				b.ReportMetric(lat[len(lat)/2], "p50_ms")
				b.ReportMetric(lat[len(lat)*99/100], "p99_ms")
				b.ReportMetric(float64(c.n)/elapsed.Seconds(), "submitted/s")
				stop()
			}
		})
	}
}
