// Package metrics is baton's Prometheus surface (/metrics): build info, the
// database pool, and cluster gauges read from SQL on an interval and cached, so
// a scrape never queries the database. Label sets are bounded: group, state and
// outcome only (never task ids, attempts or error text).
package metrics

import (
	"context"
	"runtime"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.uber.org/zap"

	"github.com/baton-scheduler/baton/db"
)

// NewRegistry returns a registry with the Go runtime, process and build-info
// collectors.
func NewRegistry(version string) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "baton_build_info",
			Help:        "Always 1; the labels name the build.",
			ConstLabels: prometheus.Labels{"version": version, "goversion": runtime.Version()},
		}, func() float64 { return 1 }),
	)
	return reg
}

// poolCollector reports pgxpool statistics.
type poolCollector struct {
	pool                                                  *pgxpool.Pool
	acquired, idle, total, max, acquires, waits, waitTime *prometheus.Desc
}

// NewPoolCollector reports a pool's statistics under baton_db_pool_*; name
// labels the pool (e.g. "http").
func NewPoolCollector(pool *pgxpool.Pool, name string) prometheus.Collector {
	l := prometheus.Labels{"pool": name}
	d := func(n, help string) *prometheus.Desc { return prometheus.NewDesc("baton_db_pool_"+n, help, nil, l) }
	return &poolCollector{pool: pool,
		acquired: d("acquired_connections", "Connections in use."),
		idle:     d("idle_connections", "Idle connections."),
		total:    d("connections", "Open connections."),
		max:      d("max_connections", "The pool's size limit."),
		acquires: d("acquires_total", "Connections acquired from the pool."),
		waits:    d("empty_acquires_total", "Acquires that had to wait for a connection."),
		waitTime: d("acquire_wait_seconds_total", "Time spent waiting for a connection."),
	}
}

func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.acquired, c.idle, c.total, c.max, c.acquires, c.waits, c.waitTime} {
		ch <- d
	}
}

func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.pool.Stat()
	ch <- prometheus.MustNewConstMetric(c.acquired, prometheus.GaugeValue, float64(s.AcquiredConns()))
	ch <- prometheus.MustNewConstMetric(c.idle, prometheus.GaugeValue, float64(s.IdleConns()))
	ch <- prometheus.MustNewConstMetric(c.total, prometheus.GaugeValue, float64(s.TotalConns()))
	ch <- prometheus.MustNewConstMetric(c.max, prometheus.GaugeValue, float64(s.MaxConns()))
	ch <- prometheus.MustNewConstMetric(c.acquires, prometheus.CounterValue, float64(s.AcquireCount()))
	ch <- prometheus.MustNewConstMetric(c.waits, prometheus.CounterValue, float64(s.EmptyAcquireCount()))
	ch <- prometheus.MustNewConstMetric(c.waitTime, prometheus.CounterValue, s.AcquireDuration().Seconds())
}

// Cluster reads the cluster gauges from SQL every Interval and serves the
// cached snapshot to scrapes.
type Cluster struct {
	pool     *pgxpool.Pool
	schema   string
	interval time.Duration
	log      *zap.Logger

	mu       sync.Mutex
	snap     snapshot
	errors   float64
	refreshN chan struct{} // tests: a refresh ended

	tasks, oldest, workers, heartbeat, masters, failovers, paused, refreshed, refreshErrors *prometheus.Desc
}

type snapshot struct {
	at        time.Time
	tasks     []db.MetricsTasksUnfinishedRow
	oldest    []db.MetricsOldestRunnableRow
	workers   []db.MetricsWorkersRow
	cluster   db.MetricsClusterRow
	refreshed bool
}

// RefreshIntervalDefault is how often the cluster gauges are re-read.
const RefreshIntervalDefault = 15 * time.Second

// NewCluster returns the collector; Run refreshes it.
func NewCluster(pool *pgxpool.Pool, schema string, interval time.Duration, log *zap.Logger) *Cluster {
	if interval <= 0 {
		interval = RefreshIntervalDefault
	}
	if log == nil {
		log = zap.NewNop()
	}
	g := func(n, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("baton_"+n, help, labels, nil)
	}
	return &Cluster{pool: pool, schema: schema, interval: interval, log: log, refreshN: make(chan struct{}, 1),
		tasks:         g("tasks", "Unfinished tasks by group and state (scheduled, queued, dispatched, running), from SQL.", "group", "state"),
		oldest:        g("queue_oldest_runnable_age_seconds", "Seconds since the group's oldest due queued task became runnable; 0 when none waits.", "group"),
		workers:       g("workers", "Live worker sessions by group and state (alive, draining).", "group", "state"),
		heartbeat:     g("group_last_heartbeat_timestamp_seconds", "Unix time of the newest heartbeat of any worker session of the group (Postgres clock).", "group"),
		masters:       g("masters_alive", "Master sessions in state alive."),
		failovers:     g("failovers_unfinished", "Failover events not yet finished (tasks still to move)."),
		paused:        g("groups_paused", "Groups whose claims are paused."),
		refreshed:     g("cluster_refresh_timestamp_seconds", "Unix time the cluster gauges were last read from SQL."),
		refreshErrors: g("cluster_refresh_errors_total", "Failed reads of the cluster gauges."),
	}
}

// Run refreshes the snapshot every interval until ctx ends.
func (c *Cluster) Run(ctx context.Context) {
	t := time.NewTicker(c.interval)
	defer t.Stop()
	for {
		c.Refresh(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Refresh reads the gauges once, in one read-only transaction.
func (c *Cluster) Refresh(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var s snapshot
	err := pgx.BeginTxFunc(ctx, c.pool, pgx.TxOptions{AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		q := db.New(tx)
		if err := q.SchemaSetLocalSearchPath(ctx, c.schema); err != nil {
			return err
		}
		var err error
		if s.tasks, err = q.MetricsTasksUnfinished(ctx); err != nil {
			return err
		}
		if s.oldest, err = q.MetricsOldestRunnable(ctx); err != nil {
			return err
		}
		if s.workers, err = q.MetricsWorkers(ctx); err != nil {
			return err
		}
		s.cluster, err = q.MetricsCluster(ctx)
		return err
	})
	c.mu.Lock()
	if err != nil {
		c.errors++
		if ctx.Err() == nil {
			c.log.Warn("metrics: read cluster gauges", zap.Error(err))
		}
	} else {
		s.at, s.refreshed = time.Now(), true
		c.snap = s
	}
	c.mu.Unlock()
	select {
	case c.refreshN <- struct{}{}:
	default:
	}
}

// Describe implements prometheus.Collector.
func (c *Cluster) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.tasks, c.oldest, c.workers, c.heartbeat, c.masters, c.failovers, c.paused, c.refreshed, c.refreshErrors} {
		ch <- d
	}
}

// Collect serves the cached snapshot.
func (c *Cluster) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	s, errs := c.snap, c.errors
	c.mu.Unlock()
	ch <- prometheus.MustNewConstMetric(c.refreshErrors, prometheus.CounterValue, errs)
	if !s.refreshed {
		return
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	gauge(c.refreshed, float64(s.at.UnixMilli())/1000)
	gauge(c.masters, float64(s.cluster.MastersAlive))
	gauge(c.failovers, float64(s.cluster.FailoversUnfinished))
	gauge(c.paused, float64(s.cluster.GroupsPaused))
	// Every group gets every unfinished state, 0 included, so a series does not
	// vanish when its count drops to 0.
	counts := map[[2]string]int64{}
	for _, r := range s.tasks {
		counts[[2]string{r.GroupName, r.State}] += r.Tasks
	}
	for _, w := range s.workers {
		for _, st := range []string{"scheduled", "queued", "dispatched", "running"} {
			gauge(c.tasks, float64(counts[[2]string{w.GroupName, st}]), w.GroupName, st)
		}
		gauge(c.workers, float64(w.Alive), w.GroupName, "alive")
		gauge(c.workers, float64(w.Draining), w.GroupName, "draining")
		if w.LastHeartbeat > 0 {
			gauge(c.heartbeat, w.LastHeartbeat, w.GroupName)
		}
	}
	for _, o := range s.oldest {
		gauge(c.oldest, o.AgeSeconds, o.GroupName)
	}
}
