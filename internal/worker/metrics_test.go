package worker_test

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	"go.uber.org/zap/zaptest"

	"github.com/baton-scheduler/baton/batontest"
	"github.com/baton-scheduler/baton/internal/metrics"
	"github.com/baton-scheduler/baton/internal/worker"
)

// serveMetrics serves m on a real /metrics endpoint and returns its URL.
func serveMetrics(t *testing.T, m *metrics.Worker) string {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(m)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(metrics.Serve(ln, reg, zaptest.NewLogger(t)))
	return "http://" + ln.Addr().String() + "/metrics"
}

// A worker's counters move when the events happen, read through /metrics: two
// attempts started and finished (succeeded, with their run times), claims and
// heartbeats timed, and a result the database refuses (its attempt superseded
// while the result sat in the writer's buffer) counted as a fenced write.
func TestWorkerMetricsCountEvents(t *testing.T) {
	t.Parallel()
	b := setup(t)
	m := metrics.NewWorker("g")
	url := serveMetrics(t, m)
	w, stop := b.workerWith(worker.Config{DatabaseURL: b.dsn, Name: "counted", Metrics: m,
		// Results stay buffered until the drain flushes them.
		Test: worker.TestConfig{ResultFlushInterval: time.Hour}})
	ids := b.submit("echo", map[string]string{"x": "y"}, 2)
	for range ids {
		w.TestSignals.Completer.Added.WaitOrTimeout(t)
	}
	before, _ := batontest.Scrape(t, url)
	if n := before[`baton_worker_results_fenced_total{group="g"}`]; n != 0 {
		t.Fatalf("fenced before any = %v", n)
	}
	// A master moved the first task meanwhile: its attempt is superseded.
	if _, err := b.pool.Exec(b.ctx, "UPDATE tasks SET attempt = attempt + 1 WHERE id = $1", ids[0]); err != nil {
		t.Fatal(err)
	}
	w.TestSignals.Heartbeat.Beat.WaitOrTimeout(t) // one heartbeat timed at least
	stop()                                        // the drain flushes: one result written, one refused
	if n := b.int64("SELECT count(*) FROM tasks WHERE state = 'succeeded'"); n != 1 {
		t.Fatalf("succeeded = %d, want 1 (the other was fenced)", n)
	}
	got, text := batontest.Scrape(t, url)
	for series, want := range map[string]float64{
		`baton_worker_attempts_started_total{group="g"}`:                                         2,
		`baton_worker_attempts_finished_total{group="g",outcome="succeeded"}`:                    2,
		`baton_worker_attempt_duration_seconds_count{group="g",outcome="succeeded"}`:             2,
		`baton_worker_results_fenced_total{group="g"}`:                                           1,
		`baton_worker_self_fences_total{group="g"}`:                                              0,
		`baton_worker_attempt_duration_seconds_bucket{group="g",outcome="succeeded",le="21600"}`: 2,
	} {
		if got[series] != want {
			t.Errorf("%s = %v, want %v", series, got[series], want)
		}
	}
	for _, h := range []string{"baton_worker_claim_duration_seconds_count", "baton_worker_heartbeat_duration_seconds_count"} {
		if got[h+`{group="g"}`] < 1 {
			t.Errorf("%s = %v, want at least 1", h, got[h+`{group="g"}`])
		}
	}
	problems, err := promlint.New(strings.NewReader(text)).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
}
