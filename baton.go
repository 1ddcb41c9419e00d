// Package baton is the Go API of the baton scheduler: run workers with your own
// Go task handlers inside your service, run a master beside them, and submit,
// inspect, wait for and cancel tasks from your code — in your own transactions.
// Postgres is the only thing baton needs; its tables live in their own schema
// ("baton" by default), so it shares a database with your application.
//
// # Quick start
//
//	// Once per deploy (safe from many processes at once).
//	if err := baton.Migrate(ctx, dsn); err != nil { ... }
//
//	// A worker for group "billing", with a master in the same process.
//	w, err := baton.NewWorker(ctx, baton.WorkerConfig{
//		DatabaseURL: dsn,
//		Group:       "billing",
//		Handlers: map[string]baton.Handler{
//			"invoice.send": func(ctx context.Context, t baton.Task) (string, error) { ... },
//		},
//		Master: &baton.MasterConfig{}, // omit when baton-master runs elsewhere
//	})
//	ran := make(chan error, 1)
//	go func() { ran <- w.Run(ctx) }() // until ctx is canceled (signal.NotifyContext), then drains
//	<-w.Ready()                       // session registered: the group exists
//
//	// Submit from your code, here inside your own transaction.
//	client, err := baton.NewClient(pool, nil)
//	id, err := client.SubmitTx(ctx, tx, baton.TaskSpec{Group: "billing", Kind: "invoice.send", Payload: payload})
//	// ... tx.Commit: the task exists only if your transaction commits.
//	info, err := client.Wait(ctx, id)
//	...
//	<-ctx.Done() // Ctrl-C
//	err = <-ran  // drained: running tasks finished or handed back
//
// # Beyond run-now
//
// TaskSpec.RunAt and Delay run a task later; TaskSpec.Unique submits it at most
// once per key (Client.Insert says whether it was a duplicate); AddHandler,
// HandlerFor and TaskSpecFor type payloads; WorkerConfig.DeclareKinds makes a
// submit of a kind the group does not run fail at once (ErrUnknownKind). The
// errors and when each is returned: docs/errors.md.
//
// # Safety
//
// Embedded workers run only the handlers they register: shell tasks need
// WorkerConfig.AllowShell. A nil Logger becomes a zap production logger on
// stderr. NewWorker and NewMaster refuse a database whose baton schema is
// missing, older or newer than this build (ErrSchemaOutdated, ErrSchemaNewer),
// like the binaries do.
package baton

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/logfield"
	"github.com/baton-scheduler/baton/internal/master"
	"github.com/baton-scheduler/baton/internal/metrics"
	"github.com/baton-scheduler/baton/internal/migrate"
	"github.com/baton-scheduler/baton/internal/store"
	"github.com/baton-scheduler/baton/internal/worker"
)

// Migrate creates baton's schema if needed and applies pending migrations. It is
// safe to run from several processes at once (a Postgres session lock). The
// schema is the URL's search_path, else "baton" (see WithSchema).
func Migrate(ctx context.Context, dsn string) error {
	return ctxErr(ctx, migrate.EnsureLatest(ctx, dsn))
}

// CheckSchema returns nil when baton's schema is at exactly this build's
// version, else ErrSchemaOutdated, ErrSchemaNewer or ErrLegacyPublicSchema with
// what to do. NewWorker and NewMaster call it.
func CheckSchema(ctx context.Context, dsn string) error {
	return ctxErr(ctx, migrate.CheckSchema(ctx, dsn))
}

// Worker is an embedded worker (and, with WorkerConfig.Master, a master).
type Worker struct {
	w             *worker.Worker
	m             *master.Master
	cfg           WorkerConfig
	pool          *pgxpool.Pool // the live-master check, Task.Retries, Permanent
	log           *zap.Logger
	ready         chan struct{}
	groups        []string
	masterTimeout time.Duration
	used          atomic.Bool // Run or Close was called
}

// NewWorker validates cfg, checks baton's schema version and connects (a wrong
// DSN, an unmigrated database or a bad config fails here, with the reason).
func NewWorker(ctx context.Context, cfg WorkerConfig) (*Worker, error) {
	w, err := newWorker(ctx, cfg)
	return w, ctxErr(ctx, err)
}

func newWorker(ctx context.Context, cfg WorkerConfig) (*Worker, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	env := &handlerEnv{}
	wc, err := cfg.internalWith(env)
	if err != nil {
		return nil, err
	}
	if err := migrate.CheckSchema(ctx, wc.DatabaseURL); err != nil {
		return nil, err
	}
	// A small pool of the wrapper's own: the live-master check, and handlers
	// reading their retries or recording a permanent failure.
	pool, err := store.Open(ctx, wc.DatabaseURL, 2)
	if err != nil {
		return nil, err
	}
	env.pool, env.log = pool, wc.Logger.Named("worker")
	var groups []string
	for _, g := range wc.Served() {
		groups = append(groups, g.Name)
	}
	if cfg.DeclareKinds {
		for _, g := range groups {
			if err := declareKinds(ctx, pool, g, cfg); err != nil {
				pool.Close()
				return nil, err
			}
		}
	}
	if cfg.Metrics != nil {
		wc.Metrics = metrics.NewWorker(strings.Join(groups, ","))
	}
	w, err := worker.New(ctx, wc)
	if err != nil {
		pool.Close()
		return nil, err
	}
	var m *master.Master
	masterTimeout := MasterMasterTimeoutDefault
	var unregister func()
	if cfg.Metrics != nil {
		unregister, err = registerAll(cfg.Metrics, wc.Metrics, metrics.NewPoolCollector(w.Pool(), "worker-"+wc.Group))
	}
	if err == nil && cfg.Master != nil {
		emc := cfg.embeddedMaster(wc.Logger)
		var mc master.Config
		mc, err = emc.internal()
		if err == nil {
			masterTimeout = mc.MasterTimeout
			m, err = startMaster(ctx, mc, emc.Metrics)
		}
		if err != nil {
			err = fmt.Errorf("start embedded master: %w", err)
		}
	}
	if err != nil {
		if unregister != nil {
			unregister()
		}
		pool.Close()
		canceled, cancel := context.WithCancel(ctx)
		cancel()
		_ = w.Run(canceled) // registers nothing; closes the worker's pool
		return nil, err
	}
	if cfg.MasterCheckInterval == 0 {
		cfg.MasterCheckInterval = MasterCheckIntervalDefault
	}
	return &Worker{
		w: w, m: m, cfg: cfg, pool: pool, log: wc.Logger.Named("worker"), ready: make(chan struct{}),
		groups: groups, masterTimeout: masterTimeout,
	}, nil
}

// Ready is closed once the worker's session is registered — with
// WorkerConfig.Groups, its session of every group — so its groups exist and
// tasks submitted to them will be claimed.
func (w *Worker) Ready() <-chan struct{} { return w.ready }

// SessionID is the worker's current session id (0 before it registers); with
// WorkerConfig.Groups, the first group's.
func (w *Worker) SessionID() int64 { return w.w.SessionID() }

// SessionIDs maps each group the worker serves to its current session id (nil
// before it registers). A worker serving several groups has one session per
// group; they are registered, heartbeated, fenced and replaced together.
func (w *Worker) SessionIDs() map[string]int64 { return w.w.SessionIDs() }

// Run works until ctx is canceled, then drains: no new claims, running tasks get
// ShutdownGrace to finish, the rest are handed back. With an embedded master,
// the master runs until the worker has drained. Run may be called once.
func (w *Worker) Run(ctx context.Context) error {
	if !w.used.CompareAndSwap(false, true) {
		return errors.New("baton: Worker.Run called twice, or after Close")
	}
	defer w.pool.Close()
	bg, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var masterErr error
	if w.m != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			masterErr = w.m.Run(bg)
		}()
	}
	watchCtx, stopWatch := context.WithCancel(ctx)
	wg.Add(1)
	go func() {
		defer wg.Done()
		w.watch(watchCtx)
	}()
	err := w.w.Run(ctx)
	stopWatch()
	stop()
	wg.Wait()
	return errors.Join(err, masterErr)
}

// Close releases a worker that was never run (its connections, and its embedded
// master's session): NewWorker connects, so a Worker dropped without Run holds
// them. After Run has started, Close does nothing: Run ends when its context
// does, and releases everything itself. Close may be called more than once.
func (w *Worker) Close() error {
	if !w.used.CompareAndSwap(false, true) {
		return nil
	}
	defer w.pool.Close()
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	err := w.w.Run(canceled) // registers nothing; closes the worker's pool
	if w.m != nil {
		err = errors.Join(err, w.m.Run(canceled))
	}
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	return err
}

func (w *Worker) groupsField() zap.Field {
	if len(w.groups) == 1 {
		return logfield.Group(w.groups[0])
	}
	return logfield.Groups(w.groups)
}

// watch closes Ready when the session registers, then checks now and then that
// a master is alive and warns when none is: the group's tasks would wait.
func (w *Worker) watch(ctx context.Context) {
	// The worker publishes its session id atomically; a short poll of it is the
	// ready signal (no database round trip).
	tick := time.NewTicker(5 * time.Millisecond)
	for w.w.SessionID() == 0 {
		select {
		case <-ctx.Done():
			tick.Stop()
			return
		case <-tick.C:
		}
	}
	tick.Stop()
	close(w.ready)
	if w.m != nil {
		return // this process runs a master
	}
	check := time.NewTicker(w.cfg.MasterCheckInterval)
	defer check.Stop()
	warned := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-check.C:
		}
		n, err := db.New(w.pool).MasterSessionCountLive(ctx, db.MasterSessionCountLiveParams{MasterTimeoutMs: w.masterTimeout.Milliseconds()})
		switch {
		case err != nil:
			if ctx.Err() == nil {
				w.log.Warn("live master check failed", zap.Error(err))
			}
		case n == 0 && !warned:
			warned = true
			w.log.Warn("no live master: tasks still run, but a dead worker's tasks are not failed over and overdue attempts are not swept until a master runs (WorkerConfig.Master, baton.NewMaster or baton-master)",
				w.groupsField())
		case n > 0 && warned:
			warned = false
			w.log.Info("a master is alive again", w.groupsField(), logfield.Count("masters", int(n)))
		}
	}
}

// Master is an in-process master (see WorkerConfig.Master for the simplest way to
// run one beside workers).
type Master struct {
	m    *master.Master
	used atomic.Bool
}

// NewMaster validates cfg, checks baton's schema version, connects and
// registers the master session.
func NewMaster(ctx context.Context, cfg MasterConfig) (*Master, error) {
	m, err := newMaster(ctx, cfg)
	return m, ctxErr(ctx, err)
}

func newMaster(ctx context.Context, cfg MasterConfig) (*Master, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	mc, err := cfg.internal()
	if err != nil {
		return nil, err
	}
	if err := migrate.CheckSchema(ctx, mc.DatabaseURL); err != nil {
		return nil, err
	}
	m, err := startMaster(ctx, mc, cfg.Metrics)
	if err != nil {
		return nil, fmt.Errorf("start master: %w", err)
	}
	return &Master{m: m}, nil
}

// startMaster starts a master, its metrics registered with reg if set.
func startMaster(ctx context.Context, mc master.Config, reg prometheus.Registerer) (*master.Master, error) {
	if reg != nil {
		mc.Metrics = metrics.NewMaster()
	}
	m, err := master.New(ctx, mc)
	if err != nil || reg == nil {
		return m, err
	}
	if _, err := registerAll(reg, mc.Metrics, metrics.NewPoolCollector(m.Pool(), "master")); err != nil {
		canceled, cancel := context.WithCancel(ctx)
		cancel()
		_ = m.Run(canceled) // stops its session, closes its pool
		return nil, err
	}
	return m, nil
}

// registerAll registers every collector or none (a failure unregisters the
// ones already registered); unregister undoes it.
func registerAll(reg prometheus.Registerer, cs ...prometheus.Collector) (unregister func(), err error) {
	var done []prometheus.Collector
	unregister = func() {
		for _, c := range done {
			reg.Unregister(c)
		}
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			unregister()
			return nil, fmt.Errorf("%w: register metrics: %w", ErrInvalidConfig, err)
		}
		done = append(done, c)
	}
	return unregister, nil
}

// Run works until ctx is canceled. Run may be called once.
func (m *Master) Run(ctx context.Context) error {
	if !m.used.CompareAndSwap(false, true) {
		return errors.New("baton: Master.Run called twice, or after Close")
	}
	return m.m.Run(ctx)
}

// Close releases a master that was never run (its connections; its session is
// marked stopped). After Run has started it does nothing.
func (m *Master) Close() error {
	if !m.used.CompareAndSwap(false, true) {
		return nil
	}
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	if err := m.m.Run(canceled); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// declareKinds records the worker's kinds as its group's (WorkerConfig.DeclareKinds).
func declareKinds(ctx context.Context, pool *pgxpool.Pool, group string, cfg WorkerConfig) error {
	p := db.GroupDeclareKindsParams{GroupName: group}
	for kind := range cfg.Handlers {
		p.Kinds = append(p.Kinds, kind)
		p.PayloadTypes = append(p.PayloadTypes, cfg.payloadTypes[kind])
	}
	if cfg.AllowShell {
		p.Kinds = append(p.Kinds, KindShell)
		p.PayloadTypes = append(p.PayloadTypes, "object")
	}
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		q := db.New(tx)
		if err := q.GroupEnsure(ctx, group); err != nil {
			return err
		}
		return q.GroupDeclareKinds(ctx, p)
	})
	if err != nil {
		return fmt.Errorf("declare the kinds of group %q: %w", group, err)
	}
	return nil
}
