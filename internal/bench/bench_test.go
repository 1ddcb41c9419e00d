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
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/baton-scheduler/baton"
	"github.com/baton-scheduler/baton/batontest"
	"github.com/baton-scheduler/baton/internal/executor"
	"github.com/baton-scheduler/baton/internal/master"
	"github.com/baton-scheduler/baton/internal/store"
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

// Offered load of BenchmarkDispatchLatency: rate tasks/s for dur, in submit calls
// of batch tasks each. batch 1 is the realistic case (an application submits a
// task per request); batch > 1 is reported as its own row, never in place of it.
type latencyCase struct {
	rate, batch int
	dur         time.Duration
}

func (c latencyCase) name() string {
	if c.batch == 1 {
		return fmt.Sprintf("rate=%d", c.rate)
	}
	return fmt.Sprintf("rate=%d,batch=%d", c.rate, c.batch)
}

// latencySubmitters is how many callers submit concurrently, each on its own
// connection, as an application's request handlers would: enough that one slow
// commit does not hold back the schedule (2,000/s at a few ms per durable submit
// needs several in flight), few enough to fit max_connections=100 beside the
// workers' and master's pools. BATON_BENCH_SUBMITTERS overrides it.
func latencySubmitters() int {
	if v, err := strconv.Atoi(os.Getenv("BATON_BENCH_SUBMITTERS")); err == nil && v > 0 {
		return v
	}
	return 16
}

// BenchmarkDispatchLatency: tasks offered at a fixed rate (100/s for 20 s, 2,000/s
// for 5 s) by latencySubmitters() concurrent callers of baton.Client.SubmitMany
// (the public path) to 4 idle workers of 64 slots, on a database in steady state
// (steadyState); latency = started_at − submitted_at (both Postgres time). The schedule is
// open-loop: call i is due at start + i·batch/rate and a free submitter makes it
// then, or at once if late, so the offered rate does not depend on how fast
// submits return. Calls not made by 2×dur are dropped: the run is bounded in time.
// Metrics: submitted/s, the rate reached; late_p99_ms, how late calls were made
// against the schedule — a wait before submitted_at, so the latency cannot show
// it; well above a millisecond means the offered rate was not sustained;
// host_cpu_% and bench_cpu_%, the machine's busy CPU and this process's (master,
// workers, submitters) while submitting, in % of all cores.
func BenchmarkDispatchLatency(b *testing.B) {
	for _, c := range []latencyCase{{100, 1, 20 * time.Second}, {2000, 1, 5 * time.Second}, {2000, 10, 5 * time.Second}} {
		b.Run(c.name(), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				pool, dsn := srv.NewPool(b)
				n := latencySubmitters()
				sub, closeSub := newSubmitter(b, "client", dsn, n)
				stop := cluster(b, dsn, 4, 64)
				if os.Getenv("BATON_BENCH_COLD") == "" {
					steadyState(b, pool)
				}
				// Warm up: every submitter's connection opened and its statements
				// prepared, as in a running application; these tasks are not measured.
				var wg sync.WaitGroup
				for range n {
					wg.Add(1)
					go func() { defer wg.Done(); _ = sub(context.Background(), 1) }()
				}
				wg.Wait()
				batontest.WaitFor(b, time.Minute, func() (bool, string) { return unfinished(b, pool) == 0, "warm-up tasks left" })
				var warm int64
				if err := pool.QueryRow(context.Background(), "SELECT coalesce(max(id), 0) FROM tasks").Scan(&warm); err != nil {
					b.Fatal(err)
				}
				cpu0 := readCPU()
				b.StartTimer()
				res, err := offer(sub, c, n)
				cpu1 := readCPU()
				if err != nil {
					b.Fatal(err)
				}
				batontest.WaitFor(b, time.Minute, func() (bool, string) { return unfinished(b, pool) == 0, "tasks left" })
				b.StopTimer()
				closeSub()
				rows, err := pool.Query(context.Background(), "SELECT extract(epoch FROM started_at - submitted_at)::float8 FROM tasks WHERE kind = 'noop' AND id > $1", warm)
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
				if len(lat) != res.tasks {
					b.Fatalf("%d tasks submitted, %d in the table", res.tasks, len(lat))
				}
				sort.Float64s(lat)
				sort.Float64s(res.lateMs)
				b.ReportMetric(lat[len(lat)/2], "p50_ms")
				b.ReportMetric(lat[len(lat)*99/100], "p99_ms")
				b.ReportMetric(float64(res.tasks)/res.elapsed.Seconds(), "submitted/s")
				b.ReportMetric(res.lateMs[len(res.lateMs)*99/100], "late_p99_ms")
				sort.Float64s(res.callMs)
				b.ReportMetric(res.lateMs[len(res.lateMs)/2], "late_p50_ms")
				b.ReportMetric(res.callMs[len(res.callMs)/2], "call_p50_ms")
				b.ReportMetric(res.callMs[len(res.callMs)*99/100], "call_p99_ms")
				if cpu0.ok && cpu1.ok {
					host, self := cpu1.pcts(cpu0)
					b.ReportMetric(host, "host_cpu_%")
					b.ReportMetric(self, "bench_cpu_%")
				}
				stop()
			}
		})
	}
}

// BenchmarkSubmitOnly: the submit path alone — latencySubmitters() callers
// submitting single tasks back to back for 5 s with no worker or master running,
// through the public Client (path=client, what an application calls) and through
// the CLI's internal submit (path=internal: one statement on baton's own pool).
// Beside BenchmarkDispatchLatency it separates what the submits cost from what
// dispatching them costs on the same server.
func BenchmarkSubmitOnly(b *testing.B) {
	for _, path := range []string{"client", "internal"} {
		b.Run("path="+path, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				_, dsn := srv.NewPool(b)
				n := latencySubmitters()
				sub, closeSub := newSubmitter(b, path, dsn, n)
				if err := sub(context.Background(), 0); err != nil {
					b.Fatal(err)
				}
				const dur = 5 * time.Second
				cpu0 := readCPU()
				start := time.Now()
				b.StartTimer()
				end := start.Add(dur)
				var done atomic.Int64
				var wg sync.WaitGroup
				errs := make(chan error, n)
				for range n {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for time.Now().Before(end) {
							if err := sub(context.Background(), 1); err != nil {
								errs <- err
								return
							}
							done.Add(1)
						}
					}()
				}
				wg.Wait()
				b.StopTimer()
				cpu1 := readCPU()
				secs := time.Since(start).Seconds()
				closeSub()
				select {
				case err := <-errs:
					b.Fatal(err)
				default:
				}
				b.ReportMetric(float64(done.Load())/secs, "submits/s")
				if cpu0.ok && cpu1.ok {
					host, _ := cpu1.pcts(cpu0)
					b.ReportMetric(host, "host_cpu_%")
				}
			}
		})
	}
}

// submitFunc submits n no-op tasks of group "bench" in one call; n = 0 only
// creates the group.
type submitFunc func(ctx context.Context, n int) error

// newSubmitter returns a submitFunc on a pool of n connections: path "client" is
// baton.Client on an application's pool (no baton search_path), "internal" is
// submit.Many on baton's own pool.
func newSubmitter(b *testing.B, path, dsn string, n int) (submitFunc, func()) {
	switch path {
	case "client":
		cfg, err := pgxpool.ParseConfig(dsn)
		if err != nil {
			b.Fatal(err)
		}
		cfg.MaxConns = int32(n)
		pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
		if err != nil {
			b.Fatal(err)
		}
		c, err := baton.NewClient(pool, &baton.ClientConfig{Logger: zap.NewNop()})
		if err != nil {
			b.Fatal(err)
		}
		return func(ctx context.Context, n int) error {
			if n == 0 {
				_, err := c.CreateGroup(ctx, "bench", "")
				return err
			}
			ts := make([]baton.TaskSpec, n)
			for i := range ts {
				ts[i] = baton.TaskSpec{Group: "bench", Kind: "noop", Payload: json.RawMessage(`{}`)}
			}
			_, err := c.SubmitMany(ctx, ts)
			return err
		}, pool.Close
	case "internal":
		pool, err := store.Open(context.Background(), dsn, int32(n))
		if err != nil {
			b.Fatal(err)
		}
		return func(ctx context.Context, n int) error {
			if n == 0 {
				_, err := pool.Exec(ctx, "INSERT INTO worker_groups (name) VALUES ('bench') ON CONFLICT DO NOTHING")
				return err
			}
			_, err := submit.Many(ctx, pool, specs(n))
			return err
		}, pool.Close
	}
	b.Fatalf("unknown submit path %q", path)
	return nil, nil
}

// steadyState gives a fresh database what a running install has (skipped with
// BATON_BENCH_COLD=1, to measure a fresh install's first seconds): finished tasks
// (20,000, kind "history") and planner statistics on them, as autovacuum takes
// within its first minute. Without statistics Postgres plans from empty-table
// estimates, and a statement prepared early on a connection keeps that plan
// (e.g. a hash join over a sequential scan of tasks for each result) until
// the first ANALYZE: the masters' analyzer's, a second or two into a burst, or
// autovacuum's, within a minute.
func steadyState(b *testing.B, pool *pgxpool.Pool) {
	ctx := context.Background()
	if _, err := pool.Exec(ctx, `INSERT INTO tasks (group_name, kind, state, finished_at)
		SELECT 'bench', 'history', 'succeeded', now() FROM generate_series(1, 20000)`); err != nil {
		b.Fatal(err)
	}
	if _, err := pool.Exec(ctx, "ANALYZE"); err != nil {
		b.Fatal(err)
	}
}

type offered struct {
	tasks   int           // tasks stored
	elapsed time.Duration // from the schedule's start to the last submit's return
	lateMs  []float64     // per call: how long after its due time it was made
	callMs  []float64     // per call: how long the submit took
}

// offer runs c's schedule with n concurrent callers of sub.
func offer(sub submitFunc, c latencyCase, n int) (offered, error) {
	calls := int64(c.rate) * int64(c.dur) / int64(time.Second) / int64(c.batch)
	interval := time.Second * time.Duration(c.batch) / time.Duration(c.rate)
	start := time.Now()
	cutoff := start.Add(2 * c.dur)
	ctx, cancel := context.WithDeadline(context.Background(), cutoff.Add(30*time.Second))
	defer cancel()
	var (
		next atomic.Int64
		mu   sync.Mutex
		res  offered
		errs []error
		wg   sync.WaitGroup
	)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= calls {
					return
				}
				due := start.Add(time.Duration(i) * interval)
				time.Sleep(time.Until(due))
				made := time.Now()
				if made.After(cutoff) {
					return
				}
				err := sub(ctx, c.batch)
				end := time.Since(start)
				mu.Lock()
				if err != nil {
					errs = append(errs, err)
				} else {
					res.tasks += c.batch
					res.elapsed = max(res.elapsed, end)
					res.lateMs = append(res.lateMs, float64(made.Sub(due))/float64(time.Millisecond))
					res.callMs = append(res.callMs, float64(time.Since(made))/float64(time.Millisecond))
				}
				mu.Unlock()
				if err != nil {
					return
				}
			}
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		return res, errs[0]
	}
	return res, nil
}

// cpuSample is the CPU time, in clock ticks over all cores, the host has spent
// busy and in all (from /proc/stat) and this process has used (/proc/self/stat).
// Linux only: ok is false elsewhere.
type cpuSample struct {
	ok                bool
	busy, total, self uint64
}

func readCPU() cpuSample {
	var s cpuSample
	host, err := os.ReadFile("/proc/stat")
	if err != nil {
		return s
	}
	self, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return s
	}
	line, _, _ := strings.Cut(string(host), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return s
	}
	// user nice system idle iowait irq softirq steal (guest time, after these,
	// is already counted in user and nice).
	for i, v := range f[1:9] {
		x, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return s
		}
		s.total += x
		if i != 3 && i != 4 {
			s.busy += x
		}
	}
	// After "pid (comm) " (comm may hold ") " itself): state is field 3; utime and
	// stime are fields 14 and 15.
	i := strings.LastIndex(string(self), ") ")
	if i < 0 {
		return s
	}
	g := strings.Fields(string(self[i+2:]))
	if len(g) < 13 {
		return s
	}
	for _, v := range g[11:13] {
		x, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return s
		}
		s.self += x
	}
	s.ok = true
	return s
}

// pcts returns the host's busy CPU and this process's since before, in % of all
// cores.
func (s cpuSample) pcts(before cpuSample) (host, self float64) {
	total := float64(max(s.total-before.total, 1))
	return 100 * float64(s.busy-before.busy) / total, 100 * float64(s.self-before.self) / total
}

// BenchmarkSubmitThenWait: an application's simplest loop, one task at a time —
// Client.Submit, then Client.Wait until it ended, then the next — against one
// embedded worker with an embedded master (baton.NewWorker, default settings,
// Go no-op handler), after `gap` between tasks (0: back to back; 50ms: an idle
// worker between tasks). Per task: the round trip the application sees (Submit
// called → Wait returned) and submit → started (Postgres time). A lost wake-up
// shows as a task that waited for a poll (claim poll 500 ms): over_400ms counts
// the round trips that took that long. BATON_BENCH_SEQ_TASKS overrides the 200 tasks.
func BenchmarkSubmitThenWait(b *testing.B) {
	tasks := 200
	if v, err := strconv.Atoi(os.Getenv("BATON_BENCH_SEQ_TASKS")); err == nil && v > 0 {
		tasks = v
	}
	for _, gap := range []time.Duration{0, 50 * time.Millisecond} {
		b.Run("gap="+gap.String(), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				pool, dsn := srv.NewPool(b)
				ctx, cancel := context.WithCancel(context.Background())
				w, err := baton.NewWorker(ctx, baton.WorkerConfig{
					DatabaseURL: dsn, Group: "bench", Logger: zap.NewNop(), Master: &baton.MasterConfig{},
					Handlers: map[string]baton.Handler{"noop": func(context.Context, baton.Task) (string, error) { return "", nil }},
				})
				if err != nil {
					b.Fatal(err)
				}
				done := make(chan error, 1)
				go func() { done <- w.Run(ctx) }()
				<-w.Ready()
				client, err := baton.NewClient(pool, &baton.ClientConfig{Logger: zap.NewNop()})
				if err != nil {
					b.Fatal(err)
				}
				one := func() time.Duration {
					t0 := time.Now()
					id, err := client.Submit(ctx, baton.TaskSpec{Group: "bench", Kind: "noop"})
					if err != nil {
						b.Fatal(err)
					}
					info, err := client.Wait(ctx, id)
					if err != nil || info.State != baton.TaskSucceeded {
						b.Fatalf("task %d: %s, %v", id, info.State, err)
					}
					return time.Since(t0)
				}
				for range 10 { // warm up: connections opened, statements prepared
					one()
				}
				var warm int64
				if err := pool.QueryRow(ctx, "SELECT coalesce(max(id), 0) FROM baton.tasks").Scan(&warm); err != nil {
					b.Fatal(err)
				}
				rt := make([]float64, 0, tasks)
				b.StartTimer()
				for range tasks {
					time.Sleep(gap)
					rt = append(rt, float64(one().Microseconds())/1000)
				}
				b.StopTimer()
				rows, err := pool.Query(ctx, "SELECT extract(epoch FROM started_at - submitted_at)::float8 FROM baton.tasks WHERE id > $1", warm)
				if err != nil {
					b.Fatal(err)
				}
				var start []float64
				for rows.Next() {
					var v float64
					_ = rows.Scan(&v)
					start = append(start, v*1000)
				}
				rows.Close()
				cancel()
				if err := <-done; err != nil {
					b.Fatal(err)
				}
				sort.Float64s(rt)
				sort.Float64s(start)
				polls := 0
				for _, v := range rt {
					if v > 400 {
						polls++
					}
				}
				b.ReportMetric(rt[len(rt)/2], "p50_ms")
				b.ReportMetric(rt[len(rt)*99/100], "p99_ms")
				b.ReportMetric(rt[len(rt)-1], "max_ms")
				b.ReportMetric(start[len(start)/2], "start_p50_ms")
				b.ReportMetric(start[len(start)*99/100], "start_p99_ms")
				b.ReportMetric(float64(polls), "over_400ms")
			}
		})
	}
}
