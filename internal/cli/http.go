package cli

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/baton-scheduler/baton/internal/httpapi"
	"github.com/baton-scheduler/baton/internal/metrics"
	"github.com/baton-scheduler/baton/internal/store"
)

// runWithHTTP runs the master (run) and the HTTP API on addr beside it (ready
// is called once it serves), on a
// pool of its own (4 connections: API calls never take the master's), with
// /metrics (the cluster gauges re-read every 15 s on that pool, plus the
// given collectors: the master's counters and its own pool). The
// listener is opened first, so a taken port fails the start; the server shuts
// down (5 s grace) when the master returns.
func runWithHTTP(ctx context.Context, run func(context.Context) error, ready func(), addr, dsn string, workerTimeout time.Duration, log *zap.Logger, collectors ...prometheus.Collector) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("--http-addr %s: %w", addr, err)
	}
	pool, err := store.Open(ctx, dsn, 4)
	if err != nil {
		ln.Close()
		return err
	}
	defer pool.Close()
	schema := store.Schema(pool.Config())
	reg := metrics.NewRegistry(Version)
	cluster := metrics.NewCluster(pool, schema, metrics.RefreshIntervalDefault, log.Named("metrics"))
	reg.MustRegister(cluster, metrics.NewPoolCollector(pool, "http"))
	reg.MustRegister(collectors...) // the master's own counters and pool
	mctx, stopMetrics := context.WithCancel(ctx)
	defer stopMetrics()
	go cluster.Run(mctx)
	h, err := httpapi.New(httpapi.Config{Pool: pool, Schema: schema, WorkerTimeout: workerTimeout, Logger: log.Named("http"),
		Metrics: metrics.Handler(reg, log.Named("metrics"))})
	if err != nil {
		ln.Close()
		return err
	}
	defer h.Close()
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: time.Minute, WriteTimeout: time.Minute, IdleTimeout: 2 * time.Minute}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	log.Info("http api listening", zap.String("addr", ln.Addr().String()))
	ready()
	runErr := run(ctx)
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	if err := <-served; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return errors.Join(runErr, fmt.Errorf("http api: %w", err))
	}
	return runErr
}
