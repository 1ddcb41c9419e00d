package metrics

import (
	"errors"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
)

// DurationBuckets are the task duration buckets: 10 ms to 6 hours.
var DurationBuckets = []float64{.01, .05, .1, .5, 1, 5, 10, 30, 60, 300, 600, 1800, 3600, 3 * 3600, 6 * 3600}

// LatencyBuckets are the buckets of one database round trip (heartbeat, claim):
// 1 ms to 10 s, the self-fence's order of magnitude.
var LatencyBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

// Worker holds one worker process's counters and histograms. Its methods are
// safe on a nil *Worker (no metrics), so the services call them unconditionally.
// Every series carries the worker's group as a constant label.
type Worker struct {
	started, fenced, selfFences, sessionsLost prometheus.Counter
	finished                                  *prometheus.CounterVec
	duration                                  *prometheus.HistogramVec
	heartbeat, claim                          prometheus.Histogram
}

// NewWorker returns the metrics of a worker of group; register it (it is a
// prometheus.Collector).
func NewWorker(group string) *Worker {
	l := prometheus.Labels{"group": group}
	c := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: "baton_worker_" + name, Help: help, ConstLabels: l})
	}
	h := func(name, help string) prometheus.Histogram {
		return prometheus.NewHistogram(prometheus.HistogramOpts{Name: "baton_worker_" + name, Help: help, ConstLabels: l, Buckets: LatencyBuckets})
	}
	return &Worker{
		started:      c("attempts_started_total", "Attempts this process claimed and started."),
		fenced:       c("results_fenced_total", "Results refused by the database because their attempt was superseded (fenced writes)."),
		selfFences:   c("self_fences_total", "Times the worker fenced itself: no successful heartbeat within the self-fence time; its tasks were killed."),
		sessionsLost: c("sessions_lost_total", "Sessions lost (self-fenced, declared dead by a master, or orphaned claims); the worker registered a new one."),
		finished: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "baton_worker_attempts_finished_total",
			Help: "Attempts this process ran to an end, by outcome (succeeded, failed, timed_out, snoozed, killed).", ConstLabels: l}, []string{"outcome"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "baton_worker_attempt_duration_seconds",
			Help: "Run time of an attempt in this process, by outcome.", ConstLabels: l, Buckets: DurationBuckets}, []string{"outcome"}),
		heartbeat: h("heartbeat_duration_seconds", "Round trip of one session heartbeat statement (successful ones)."),
		claim:     h("claim_duration_seconds", "Round trip of one claim statement (successful ones)."),
	}
}

// Describe implements prometheus.Collector.
func (m *Worker) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range m.collectors() {
		c.Describe(ch)
	}
}

// Collect implements prometheus.Collector.
func (m *Worker) Collect(ch chan<- prometheus.Metric) {
	for _, c := range m.collectors() {
		c.Collect(ch)
	}
}

func (m *Worker) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.started, m.fenced, m.selfFences, m.sessionsLost, m.finished, m.duration, m.heartbeat, m.claim}
}

// Outcomes of an attempt seen by the worker, beyond the reported ones: killed
// (self-fence, lost session, shutdown; handed back by failover) and stopped
// (canceled or superseded while it ran).
const (
	OutcomeKilled  = "killed"
	OutcomeStopped = "stopped"
)

// AttemptStarted counts a claimed attempt.
func (m *Worker) AttemptStarted() {
	if m != nil {
		m.started.Inc()
	}
}

// AttemptFinished counts an attempt's end and observes its run time.
func (m *Worker) AttemptFinished(outcome string, ran time.Duration) {
	if m != nil {
		m.finished.WithLabelValues(outcome).Inc()
		m.duration.WithLabelValues(outcome).Observe(ran.Seconds())
	}
}

// ResultsFenced counts n refused results.
func (m *Worker) ResultsFenced(n int) {
	if m != nil && n > 0 {
		m.fenced.Add(float64(n))
	}
}

// SelfFenced counts a self-fence.
func (m *Worker) SelfFenced() {
	if m != nil {
		m.selfFences.Inc()
	}
}

// SessionLost counts a lost session.
func (m *Worker) SessionLost() {
	if m != nil {
		m.sessionsLost.Inc()
	}
}

// Heartbeat observes a successful heartbeat's round trip.
func (m *Worker) Heartbeat(d time.Duration) {
	if m != nil {
		m.heartbeat.Observe(d.Seconds())
	}
}

// Claim observes a successful claim's round trip.
func (m *Worker) Claim(d time.Duration) {
	if m != nil {
		m.claim.Observe(d.Seconds())
	}
}

// Master holds one master process's counters and histograms; nil-safe like Worker.
type Master struct {
	failovers  *prometheus.CounterVec
	moved      *prometheus.CounterVec
	heartbeat  prometheus.Histogram
	reregister prometheus.Counter
}

// NewMaster returns a master's metrics; register it.
func NewMaster() *Master {
	return &Master{
		failovers: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "baton_master_failovers_total",
			Help: "Failover events this master recorded, by kind of the dead session (worker, master)."}, []string{"kind"}),
		moved: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "baton_master_failover_tasks_total",
			Help: "Tasks of dead workers this master's failovers handled, by group and outcome (reassigned, queued, failed)."}, []string{"group", "outcome"}),
		heartbeat: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "baton_master_heartbeat_duration_seconds",
			Help: "Round trip of one master session heartbeat statement (successful ones).", Buckets: LatencyBuckets}),
		reregister: prometheus.NewCounter(prometheus.CounterOpts{Name: "baton_master_sessions_lost_total",
			Help: "Times this master found its session declared dead and registered a new one."}),
	}
}

// Describe implements prometheus.Collector.
func (m *Master) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range m.collectors() {
		c.Describe(ch)
	}
}

// Collect implements prometheus.Collector.
func (m *Master) Collect(ch chan<- prometheus.Metric) {
	for _, c := range m.collectors() {
		c.Collect(ch)
	}
}

func (m *Master) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.failovers, m.moved, m.heartbeat, m.reregister}
}

// Failover counts a failover event of kind ("worker" or "master").
func (m *Master) Failover(kind string) {
	if m != nil {
		m.failovers.WithLabelValues(kind).Inc()
	}
}

// TasksMoved counts a worker failover's tasks.
func (m *Master) TasksMoved(group string, reassigned, queued, failed int) {
	if m == nil {
		return
	}
	for outcome, n := range map[string]int{"reassigned": reassigned, "queued": queued, "failed": failed} {
		if n > 0 {
			m.moved.WithLabelValues(group, outcome).Add(float64(n))
		}
	}
}

// Heartbeat observes a successful heartbeat's round trip.
func (m *Master) Heartbeat(d time.Duration) {
	if m != nil {
		m.heartbeat.Observe(d.Seconds())
	}
}

// SessionLost counts a re-registration.
func (m *Master) SessionLost() {
	if m != nil {
		m.reregister.Inc()
	}
}

// Handler serves reg in the Prometheus text format, logging its errors.
func Handler(reg *prometheus.Registry, log *zap.Logger) http.Handler {
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: zap.NewStdLog(log)})
}

// Serve serves reg at /metrics (and /livez, which never touches the database)
// on ln until Close; the worker's --metrics-addr.
func Serve(ln net.Listener, reg *prometheus.Registry, log *zap.Logger) (stop func()) {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", Handler(reg, log))
	mux.HandleFunc("GET /livez", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"status":"ok"}` + "\n"))
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, WriteTimeout: time.Minute}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server", zap.Error(err))
		}
	}()
	return func() {
		_ = srv.Close()
		<-done
	}
}
