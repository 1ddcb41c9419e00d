// Package master is a baton master: it heartbeats its own session, sweeps worker
// and master liveness (Postgres time only) and runs failover, dispatches queued
// tasks, records overdue attempts as timed out and prunes old rows. Any number run
// at once, all active; they coordinate only through Postgres locks.
//
// Each duty is its own service (internal/service shape) with its own goroutine, so
// one that is stuck (a group whose lock a hung session holds, a slow prune) never
// delays another: master-death detection and the timeout sweep do not wait behind
// worker failover.
package master

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/failover"
	"github.com/baton-scheduler/baton/internal/logfield"
	"github.com/baton-scheduler/baton/internal/metrics"
	"github.com/baton-scheduler/baton/internal/notify"
	"github.com/baton-scheduler/baton/internal/retention"
	"github.com/baton-scheduler/baton/internal/schedule"
	"github.com/baton-scheduler/baton/internal/service"
	"github.com/baton-scheduler/baton/internal/store"
)

// Defaults.
const (
	HeartbeatIntervalDefault = time.Second
	WorkerTimeoutDefault     = 5 * time.Second
	MasterTimeoutDefault     = 10 * time.Second
	SweepIntervalDefault     = time.Second
	DispatchIntervalDefault  = 250 * time.Millisecond
	DispatchMinWaitDefault   = 2 * time.Second
	TimeoutGraceDefault      = 5 * time.Second
	MaxFailoversDefault      = failover.MaxFailoversDefault
	RetentionDefault         = retention.RetentionDefault
	PruneIntervalDefault     = time.Minute
	// CrashDetectAfterDefault: a worker session whose liveness lock is free (its
	// connection is gone) is dead once its heartbeat is this old. With the 1 s
	// heartbeat a crash is declared 0.5–1.5 s after it happens, plus one crash
	// sweep (CrashDetectAfter/6).
	CrashDetectAfterDefault = 1500 * time.Millisecond
	// TxTimeoutDefault bounds each transaction of a sweep (one failover candidate,
	// one group's dispatch, one prune batch): a hung connection stalls one pass of
	// one candidate, never the loop.
	TxTimeoutDefault = 10 * time.Second
	// ScheduleIntervalDefault: the longest the scheduler sleeps between
	// passes (it wakes at the earliest due schedule sooner).
	ScheduleIntervalDefault = time.Second
	// ScheduleFirersDefault: fire passes run in parallel per master.
	ScheduleFirersDefault = 2
)

// RetentionForever as Config.Retention keeps every row (no pruning).
const RetentionForever time.Duration = -1

// CrashDetectOff as Config.CrashDetectAfter waits the heartbeat timeout for every worker.
const CrashDetectOff time.Duration = -1

// Config of a master process.
type Config struct {
	DatabaseURL       string
	Name              string
	HeartbeatInterval time.Duration // own heartbeat
	WorkerTimeout     time.Duration // worker heartbeat age (Postgres time) that means dead
	MasterTimeout     time.Duration // the same for masters
	SweepInterval     time.Duration // liveness + timeout sweep period
	DispatchInterval  time.Duration // dispatch polling fallback when no NOTIFY arrives
	// DispatchMinWait: the dispatcher places only tasks no worker claimed for this
	// long (workers claim their group's tasks themselves; see dispatch.MinWait).
	// Default DispatchMinWaitDefault; negative means 0.
	DispatchMinWait time.Duration
	TimeoutGrace    time.Duration // extra time past a task's timeout before the master records it
	// CrashDetectAfter: a worker that holds a liveness lock (worker_sessions.
	// liveness_lock) is dead once that lock is free and its heartbeat is this old,
	// without waiting WorkerTimeout; never within WorkerTimeout of a Postgres
	// restart. Default 2 s; CrashDetectOff disables it (so does a value at or above
	// WorkerTimeout, which the heartbeat path already covers).
	CrashDetectAfter time.Duration
	// MaxFailovers: a task found running on a dead worker after it was failed over
	// this many times fails ("failed over N times") instead of killing the next
	// worker (a poison task). Default 3.
	MaxFailovers int
	// Retention: finished tasks (with their attempts), finished failover events and
	// unreferenced ended sessions older than this are pruned. Default 30 days;
	// RetentionForever keeps everything.
	Retention     time.Duration
	PruneInterval time.Duration // how often the pruner runs (default 1 minute)
	TxTimeout     time.Duration // deadline of each sweep transaction (default 10 s)
	// ScheduleInterval: the scheduler's longest sleep (default 1 s); it wakes
	// at the earliest due schedule (Postgres time) before that.
	ScheduleInterval time.Duration
	// ScheduleFirers: fire passes run in parallel (default 2).
	ScheduleFirers int
	// ScheduleBatch: schedules one fire transaction locks and fires (default
	// schedule.FireBatchDefault, 100; 1..10000).
	ScheduleBatch int
	// ScheduleMaxFires: ledger rows one schedule writes per fire transaction
	// after downtime; the rest follow in the next passes (default
	// schedule.FireMaxPerScheduleDefault, 1000; 1..100000).
	ScheduleMaxFires int
	// NoScheduler: this master fires no schedules and admits no backfill runs
	// (the other masters do).
	NoScheduler bool
	Logger      *zap.Logger
	Version     string
	// Metrics, if set, counts failovers and times heartbeats (served by the
	// caller's registry).
	Metrics *metrics.Master
}

// WithDefaults returns a copy with every zero field set to its default.
func (c Config) WithDefaults() Config {
	if c.Name == "" {
		host, _ := os.Hostname()
		c.Name = fmt.Sprintf("%s-%d", host, os.Getpid())
	}
	if c.HeartbeatInterval == 0 {
		c.HeartbeatInterval = HeartbeatIntervalDefault
	}
	if c.WorkerTimeout == 0 {
		c.WorkerTimeout = WorkerTimeoutDefault
	}
	if c.MasterTimeout == 0 {
		c.MasterTimeout = MasterTimeoutDefault
	}
	if c.SweepInterval == 0 {
		c.SweepInterval = SweepIntervalDefault
	}
	if c.DispatchInterval == 0 {
		c.DispatchInterval = DispatchIntervalDefault
	}
	if c.DispatchMinWait == 0 {
		c.DispatchMinWait = DispatchMinWaitDefault
	}
	c.DispatchMinWait = max(c.DispatchMinWait, 0)
	if c.TimeoutGrace == 0 {
		c.TimeoutGrace = TimeoutGraceDefault
	}
	if c.MaxFailovers == 0 {
		c.MaxFailovers = MaxFailoversDefault
	}
	if c.CrashDetectAfter == 0 {
		c.CrashDetectAfter = CrashDetectAfterDefault
	}
	if c.Retention == 0 {
		c.Retention = RetentionDefault
	}
	if c.PruneInterval == 0 {
		c.PruneInterval = PruneIntervalDefault
	}
	if c.TxTimeout == 0 {
		c.TxTimeout = TxTimeoutDefault
	}
	if c.ScheduleInterval == 0 {
		c.ScheduleInterval = ScheduleIntervalDefault
	}
	if c.ScheduleFirers == 0 {
		c.ScheduleFirers = ScheduleFirersDefault
	}
	if c.ScheduleBatch == 0 {
		c.ScheduleBatch = schedule.FireBatchDefault
	}
	if c.ScheduleMaxFires == 0 {
		c.ScheduleMaxFires = schedule.FireMaxPerScheduleDefault
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	return c
}

// Validate checks ranges and cross-field rules.
func (c Config) Validate() error {
	var errs []error
	if c.DatabaseURL == "" {
		errs = append(errs, errors.New("database URL is empty: set BATON_DATABASE_URL or --database-url"))
	}
	if c.HeartbeatInterval <= 0 {
		errs = append(errs, fmt.Errorf("heartbeat interval %s must be positive", c.HeartbeatInterval))
	}
	if c.TimeoutGrace < 0 {
		errs = append(errs, fmt.Errorf("timeout grace %s is negative", c.TimeoutGrace))
	}
	if c.WorkerTimeout < 2*c.HeartbeatInterval {
		errs = append(errs, fmt.Errorf("worker timeout %s must be at least twice the heartbeat interval %s", c.WorkerTimeout, c.HeartbeatInterval))
	}
	if c.MasterTimeout < 2*c.HeartbeatInterval {
		errs = append(errs, fmt.Errorf("master timeout %s must be at least twice the heartbeat interval %s", c.MasterTimeout, c.HeartbeatInterval))
	}
	if c.SweepInterval <= 0 || c.DispatchInterval <= 0 {
		errs = append(errs, errors.New("sweep and dispatch intervals must be positive"))
	}
	if c.MaxFailovers < 1 || c.MaxFailovers > 1000 {
		errs = append(errs, fmt.Errorf("max failovers %d is outside 1..1000", c.MaxFailovers))
	}
	if c.CrashDetectAfter != CrashDetectOff && c.CrashDetectAfter < 0 {
		errs = append(errs, fmt.Errorf("crash detection age %s is negative (0 on the command line disables it)", c.CrashDetectAfter))
	}
	if c.Retention != RetentionForever && c.Retention < time.Minute {
		errs = append(errs, fmt.Errorf("retention %s is shorter than a minute (0 on the command line keeps everything)", c.Retention))
	}
	if c.PruneInterval < 0 || c.TxTimeout < 0 {
		errs = append(errs, errors.New("prune interval and transaction timeout must not be negative"))
	}
	if c.ScheduleInterval < 0 || c.ScheduleFirers < 0 || c.ScheduleFirers > 64 {
		errs = append(errs, fmt.Errorf("schedule interval %s must not be negative and schedule firers %d must be within 1..64", c.ScheduleInterval, c.ScheduleFirers))
	}
	if c.ScheduleBatch < 0 || c.ScheduleBatch > 10000 {
		errs = append(errs, fmt.Errorf("schedule batch %d is outside 1..10000", c.ScheduleBatch))
	}
	if c.ScheduleMaxFires < 0 || c.ScheduleMaxFires > 100000 {
		errs = append(errs, fmt.Errorf("schedule max fires %d is outside 1..100000", c.ScheduleMaxFires))
	}
	return errors.Join(errs...)
}

// Master is one master process: a set of services sharing a pool, a clock and
// the master's session id.
type Master struct {
	cfg       Config
	pool      *pgxpool.Pool
	log       *zap.Logger
	clock     *service.Clock
	sessionID atomic.Int64 // replaced when the master re-registers
	// postmasterStart replaces pg_postmaster_start_time() in crash detection (tests only).
	postmasterStart *time.Time
	// failoverBatch and failoverMaxBatches size failover transactions (tests only; 0 = defaults).
	failoverBatch, failoverMaxBatches int

	heartbeat     *heartbeater
	workerSweeper *workerSweeper
	masterSweeper *masterSweeper
	timeouts      *timeoutSweeper
	runRepair     *runRepairSweeper
	scheduler     *scheduler
	dispatcher    *dispatcher
	listener      *listener
	analyzer      *analyzer
	pruner        *pruner // nil with RetentionForever
}

// New validates cfg, connects and registers the master session.
func New(ctx context.Context, cfg Config) (*Master, error) {
	return newMaster(ctx, cfg, service.NewClock())
}

func newMaster(ctx context.Context, cfg Config, clock *service.Clock) (*Master, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("master config: %w", err)
	}
	pool, err := store.Open(ctx, cfg.DatabaseURL, 10)
	if err != nil {
		return nil, err
	}
	m := &Master{cfg: cfg, pool: pool, log: cfg.Logger.Named("master"), clock: clock}
	base := func(name string) service.Base { return service.NewBase(name, m.log, clock) }
	m.dispatcher = &dispatcher{Base: base("dispatcher"), m: m, wake: notify.NewSignal()}
	m.workerSweeper = &workerSweeper{Base: base("worker_sweeper"), m: m, wake: notify.NewSignal()}
	m.masterSweeper = &masterSweeper{Base: base("master_sweeper"), m: m}
	m.timeouts = &timeoutSweeper{Base: base("timeout_sweeper"), m: m}
	m.runRepair = &runRepairSweeper{Base: base("run_repair_sweeper"), m: m}
	m.scheduler = &scheduler{Base: base("scheduler"), m: m}
	m.heartbeat = &heartbeater{Base: base("heartbeat"), m: m}
	m.listener = &listener{Base: base("listener"), m: m}
	m.analyzer = &analyzer{Base: base("analyzer"), m: m}
	if cfg.Retention != RetentionForever {
		m.pruner = &pruner{Base: base("pruner"), m: m}
	}
	if err := m.register(ctx); err != nil {
		pool.Close()
		return nil, err
	}
	return m, nil
}

// Pool is the master's connection pool (for its pool metrics).
func (m *Master) Pool() *pgxpool.Pool { return m.pool }

// SessionID is this master's session.
func (m *Master) SessionID() int64 { return m.sessionID.Load() }

func (m *Master) register(ctx context.Context) error {
	host, _ := os.Hostname()
	s, err := db.New(m.pool).MasterSessionRegister(ctx, db.MasterSessionRegisterParams{
		Name: m.cfg.Name, Host: host, Pid: int32(os.Getpid()), Version: m.cfg.Version,
	})
	if err != nil {
		return fmt.Errorf("register master session: %w", err)
	}
	m.sessionID.Store(s.ID)
	m.log.Info("master session registered", logfield.MasterID(s.ID))
	return nil
}

// startStopper is what Run starts and stops.
type startStopper interface {
	Start(ctx context.Context) error
	Stop()
}

func (m *Master) services() []startStopper {
	s := []startStopper{m.heartbeat, m.listener, m.dispatcher, m.workerSweeper, m.masterSweeper, m.timeouts, m.runRepair, m.analyzer}
	if !m.cfg.NoScheduler {
		s = append(s, m.scheduler)
	}
	if m.pruner != nil {
		s = append(s, m.pruner)
	}
	return s
}

// Run works until ctx is canceled, then stops every service and marks the
// session stopped.
func (m *Master) Run(ctx context.Context) error {
	defer m.pool.Close()
	started := []startStopper{}
	var startErr error
	for _, s := range m.services() {
		if err := s.Start(ctx); err != nil {
			startErr = err
			break
		}
		started = append(started, s)
	}
	if startErr == nil {
		<-ctx.Done()
	}
	for i := len(started) - 1; i >= 0; i-- {
		started[i].Stop()
	}
	stopCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := db.New(m.pool).MasterSessionStop(stopCtx, m.SessionID()); err != nil {
		m.log.Warn("mark master stopped failed", zap.Error(err))
	}
	m.log.Info("master stopped")
	return startErr
}

// failoverConfig is the failover package's view of the master's settings.
func (m *Master) failoverConfig() failover.Config {
	return failover.Config{
		WorkerTimeout: m.cfg.WorkerTimeout, MasterTimeout: m.cfg.MasterTimeout, MasterID: m.SessionID(),
		MaxFailovers: m.cfg.MaxFailovers, Now: m.clock.NowOrNil(), CrashAfter: max(m.cfg.CrashDetectAfter, 0),
		PostmasterStart: m.postmasterStart, BatchSize: m.failoverBatch, MaxBatches: m.failoverMaxBatches,
	}
}

// loop runs once at start, then at every tick or wake-up, until ctx ends. once
// returns true when more work is waiting (run again at once).
func loop(ctx context.Context, interval time.Duration, wake <-chan struct{}, once func(ctx context.Context) bool) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if once(ctx) && ctx.Err() == nil {
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-wake:
		}
	}
}

// quiet reports whether err is only the loop's own shutdown.
func quiet(ctx context.Context, err error) bool {
	return ctx.Err() != nil || errors.Is(err, context.Canceled)
}
