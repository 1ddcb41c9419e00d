package metrics

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
)

// The /metrics of a master at the scale: 100 groups, 1,000 live
// workers, 20,000 unfinished tasks (queued and running) and 500,000 finished
// ones. Reports the refresh (the four cluster statements, one read-only
// transaction), the scrape from the cache (gather and encode, no SQL) and
// the series a scrape returns.
//
//	go test ./internal/metrics -run '^$' -bench BenchmarkMasterMetrics -benchtime 20x
func BenchmarkMasterMetrics(b *testing.B) {
	pool, _ := srv.NewPool(b)
	ctx := context.Background()
	for _, q := range []string{
		`INSERT INTO worker_groups (name) SELECT 'g' || i FROM generate_series(1, 100) i`,
		`INSERT INTO worker_sessions (name, group_name, slots, last_heartbeat_at)
		 SELECT 'w' || i, 'g' || (i % 100 + 1), 4, now() FROM generate_series(1, 1000) i`,
		`INSERT INTO tasks (group_name, kind, state, finished_at)
		 SELECT 'g' || (i % 100 + 1), 'k', 'succeeded', now() FROM generate_series(1, 500000) i`,
		`INSERT INTO tasks (group_name, kind) SELECT 'g' || (i % 100 + 1), 'k' FROM generate_series(1, 18000) i`,
		`INSERT INTO tasks (group_name, kind, state, attempt, worker_session_id, attempt_session_id, dispatched_at, started_at)
		 SELECT s.group_name, 'k', 'running', 1, s.id, s.id, now(), now() FROM worker_sessions s CROSS JOIN generate_series(1, 2)`,
		`ANALYZE`,
	} {
		if _, err := pool.Exec(ctx, q); err != nil {
			b.Fatalf("%s: %v", q, err)
		}
	}
	c := NewCluster(pool, "baton", time.Hour, nil)
	reg := NewRegistry("bench")
	reg.MustRegister(c, NewPoolCollector(pool, "http"), NewMaster())
	h := httptest.NewServer(Handler(reg, zap.NewNop()))
	defer h.Close()
	var refresh, scrape time.Duration
	series := 0
	b.ResetTimer()
	for b.Loop() {
		t0 := time.Now()
		c.Refresh(ctx)
		t1 := time.Now()
		resp, err := http.Get(h.URL)
		if err != nil {
			b.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		scrape += time.Since(t1)
		refresh += t1.Sub(t0)
		series = 0
		for _, line := range strings.Split(string(body), "\n") {
			if line != "" && !strings.HasPrefix(line, "#") {
				series++
			}
		}
		if !strings.Contains(string(body), `baton_tasks{group="g1",state="queued"} 180`) {
			b.Fatalf("scrape lacks the queued count of g1:\n%.2000s", body)
		}
	}
	b.ReportMetric(float64(refresh.Microseconds())/float64(b.N)/1000, "refresh-ms")
	b.ReportMetric(float64(scrape.Microseconds())/float64(b.N)/1000, "scrape-ms")
	b.ReportMetric(float64(series), "series")
}
