package failover_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/baton-scheduler/baton/internal/failover"
)

// BenchmarkWorkerFailover times the failover of one dead session with N running
// tasks, healthy sessions with room for all of them: the failover
// transactions alone (a large session takes several, as the sweeper runs them, until
// it is finished).
func BenchmarkWorkerFailover(b *testing.B) {
	for _, n := range []int{1000, 10000, 100000} {
		b.Run(fmt.Sprintf("tasks=%d", n), func(b *testing.B) {
			pool, _ := srv.NewPool(b)
			ctx := context.Background()
			exec := func(sql string, args ...any) {
				if _, err := pool.Exec(ctx, sql, args...); err != nil {
					b.Fatalf("%s: %v", sql, err)
				}
			}
			exec("INSERT INTO worker_groups (name) VALUES ('g')")
			for range max(4, n/10000) { // room for every task (10,000 slots at most per session)
				exec("INSERT INTO worker_sessions (name, group_name, slots) VALUES ('healthy', 'g', 10000)")
			}
			var total time.Duration
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				exec("DELETE FROM dispatch_queue; DELETE FROM task_attempt_log; DELETE FROM tasks")
				var dead int64
				if err := pool.QueryRow(ctx, `INSERT INTO worker_sessions (name, group_name, slots, last_heartbeat_at)
					VALUES ('dead', 'g', $1, now() - interval '1 hour') RETURNING id`, min(n, 10000)).Scan(&dead); err != nil {
					b.Fatal(err)
				}
				exec(`INSERT INTO tasks (group_name, kind, state, attempt, worker_session_id, attempt_session_id, dispatched_at, started_at)
					SELECT 'g', 'shell', 'running', 1, $1, $1, now(), now() FROM generate_series(1, $2)`, dead, n)
				exec("ANALYZE tasks")
				b.StartTimer()
				start := time.Now()
				moved := 0
				for pass := 0; ; pass++ {
					res, err := failover.Worker(ctx, pool, failover.Config{WorkerTimeout: 5 * time.Second}, dead, "g")
					if err != nil || !res.Ran || pass > n {
						b.Fatalf("failover pass %d: %+v, %v", pass, res, err)
					}
					moved += res.Reassigned + res.Queued
					if res.Finished {
						break
					}
				}
				total += time.Since(start)
				if moved != n {
					b.Fatalf("failover moved %d tasks, want %d", moved, n)
				}
			}
			b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms/failover")
			b.ReportMetric(float64(n)*float64(b.N)/total.Seconds(), "tasks/s")
		})
	}
}
