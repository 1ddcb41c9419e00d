package baton

import (
	"cmp"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/baton-scheduler/baton/internal/executor"
	"github.com/baton-scheduler/baton/internal/master"
	"github.com/baton-scheduler/baton/internal/migrate"
	"github.com/baton-scheduler/baton/internal/store"
	"github.com/baton-scheduler/baton/internal/worker"
)

// Defaults of the configuration fields (a zero field takes its default). The
// design's timing: heartbeat every second, a worker dead after 5 s without one,
// self-fencing at 4 s, so a cut-off worker stops before its tasks move.
const (
	SchemaDefault                  = "baton" // baton's Postgres schema
	WorkerGroupDefault             = "default"
	WorkerSlotsDefault             = 4
	WorkerHeartbeatIntervalDefault = time.Second
	WorkerSelfFenceAfterDefault    = 4 * time.Second
	WorkerPollIntervalDefault      = 500 * time.Millisecond
	WorkerShutdownGraceDefault     = 10 * time.Second
	MasterHeartbeatIntervalDefault = time.Second
	MasterWorkerTimeoutDefault     = 5 * time.Second
	MasterMasterTimeoutDefault     = 10 * time.Second
	MasterCheckIntervalDefault     = 10 * time.Second
)

// WorkerConfig configures an embedded worker. Zero fields take the defaults above.
type WorkerConfig struct {
	// DatabaseURL is a Postgres URL or key=value DSN.
	DatabaseURL string
	// Schema is baton's Postgres schema: default the URL's baton_schema
	// parameter, else "baton".
	Schema string
	// Group is the worker group served (created when the worker registers).
	Group string
	// Name is the operator-facing name; default host-pid.
	Name string
	// Slots is how many tasks run at once.
	Slots int
	// Groups, instead of Group and Slots: several groups served by this one
	// worker, each with its own slots, on one connection pool and one liveness
	// connection (one worker session per group; see docs/architecture.md "Many
	// groups per worker"). Every group runs the same Handlers. Setting Group or
	// Slots as well, naming a group twice or giving one no slots is an error.
	Groups []WorkerGroup
	// Handlers maps task kinds to Go handlers (AddHandler adds typed ones).
	Handlers map[string]Handler
	// DeclareKinds makes the worker declare, when it starts, the kinds of its
	// Handlers (and "shell" with AllowShell) as kinds of its group, with the
	// payload type of each typed handler (AddHandler): from then on a submit
	// to the group of another kind fails at once with ErrUnknownKind, and one
	// whose payload has another JSON type with ErrInvalidTask. Declarations
	// are only added, never removed, so old and new workers of a rolling
	// deploy can run side by side (see Client.DeclareKinds).
	DeclareKinds bool
	// payloadTypes holds the JSON type of each typed handler's payload (AddHandler).
	payloadTypes map[string]string
	// AllowShell lets this worker run KindShell tasks (shell commands inside the
	// application's process tree). Off by default: anyone who can submit to the
	// group could otherwise run commands here. Shell tasks reaching a worker
	// without it fail with an error saying so.
	AllowShell bool
	// HeartbeatInterval is how often the session row is touched.
	HeartbeatInterval time.Duration
	// SelfFenceAfter: without a successful heartbeat for this long the worker
	// stops claiming and kills its tasks. It must stay below WorkerTimeout so it
	// acts before failover.
	SelfFenceAfter time.Duration
	// WorkerTimeout is the masters' worker timeout, which SelfFenceAfter must
	// stay below (as baton-worker's --worker-timeout). Default: the embedded
	// master's when Master is set, else MasterWorkerTimeoutDefault.
	WorkerTimeout time.Duration
	// PollInterval is the claim polling fallback when no NOTIFY arrives.
	PollInterval time.Duration
	// ShutdownGrace is how long Run, once its context ends, lets running tasks
	// finish before killing them and handing them back.
	ShutdownGrace time.Duration
	// KillGrace is how long a timed-out or killed attempt may take to return
	// before its slot is freed without it (a handler ignoring cancellation).
	KillGrace time.Duration
	// MaxOutput is the bytes of output kept per attempt.
	MaxOutput int
	// Logger receives the worker's logs; nil means a zap production logger
	// (JSON lines on stderr), never silence.
	Logger *zap.Logger
	// Master, when set, runs a master in the same process (Run starts and stops
	// it with the worker): the simplest setup, one process that does everything.
	// Its zero fields take DatabaseURL, Schema and Logger from this config.
	Master *MasterConfig
	// MasterCheckInterval is how often the worker checks that some master is
	// alive, and logs a warning when none is (a dead worker's tasks would not be
	// failed over).
	MasterCheckInterval time.Duration
	// Metrics, if set, gets the worker's Prometheus metrics when NewWorker
	// succeeds: baton_worker_* (attempts by outcome, run times, fenced results,
	// self-fences, heartbeat and claim round trips; labelled with the group)
	// and its pool's baton_db_pool_* (pool="worker-<group>"); an embedded
	// Master's baton_master_* too, unless its own Metrics is set. Serve the
	// registry with promhttp. Two workers of one group need two registries.
	Metrics prometheus.Registerer
	// Test holds hooks for tests.
	Test WorkerTestConfig
}

// WorkerGroup is one group a worker serves and how many of its tasks run at
// once (WorkerConfig.Groups).
type WorkerGroup struct {
	Name  string
	Slots int
}

// WorkerTestConfig holds test hooks; zero values mean production behaviour.
type WorkerTestConfig struct {
	// HeartbeatCallTimeout bounds one heartbeat statement (default SelfFenceAfter/2).
	HeartbeatCallTimeout time.Duration
	// ResultFlushInterval is how long the first buffered result waits for others
	// before a batch is written (default: as soon as the writer is free).
	ResultFlushInterval time.Duration
}

// MasterConfig configures a master. Zero fields take the defaults above.
type MasterConfig struct {
	DatabaseURL string
	Schema      string // as WorkerConfig.Schema
	Name        string // default host-pid
	// HeartbeatInterval is the master's own heartbeat period.
	HeartbeatInterval time.Duration
	// WorkerTimeout is the heartbeat age (Postgres time) after which a worker is
	// dead and its tasks fail over.
	WorkerTimeout time.Duration
	// MasterTimeout is the same for masters.
	MasterTimeout time.Duration
	// SweepInterval is the liveness and timeout sweep period.
	SweepInterval time.Duration
	// DispatchInterval is the dispatch polling fallback when no NOTIFY arrives.
	DispatchInterval time.Duration
	// TimeoutGrace is the time past a task's timeout before the master records it.
	TimeoutGrace time.Duration
	Logger       *zap.Logger // nil: zap production logger on stderr
	// Metrics, if set, gets the master's Prometheus metrics when it starts:
	// baton_master_* (failovers, tasks moved, heartbeat round trips) and its
	// pool's baton_db_pool_* (pool="master"). The cluster gauges (tasks per
	// group, queue age, ...) are baton-master --http-addr's.
	Metrics prometheus.Registerer
}

// WithSchema returns dsn naming baton's schema in its baton_schema parameter,
// for the APIs that take only a URL (Migrate, CheckSchema) and for the
// binaries (BATON_DATABASE_URL). baton reads and removes that parameter; the
// URL's own search_path, if any, is the application's and baton ignores it.
func WithSchema(dsn, schema string) (string, error) {
	if err := migrate.ValidSchema(schema); err != nil {
		return "", fmt.Errorf("%w: %v", ErrInvalidConfig, err)
	}
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err != nil {
			// Never echo the URL: it may carry a password.
			return "", fmt.Errorf("%w: database URL is not a valid URL", ErrInvalidConfig)
		}
		q := u.Query()
		q.Set(store.SchemaParam, schema)
		u.RawQuery = q.Encode()
		return u.String(), nil
	}
	// key=value DSN: the last occurrence of a keyword wins.
	return strings.TrimSpace(dsn) + " " + store.SchemaParam + "=" + schema, nil
}

func dsnFor(dsn, schema string) (string, error) {
	if schema == "" {
		return dsn, nil
	}
	return WithSchema(dsn, schema)
}

// defaultLogger is what a nil Logger becomes: failures are never silent.
func defaultLogger() *zap.Logger {
	l, err := zap.NewProduction()
	if err != nil {
		return zap.NewExample()
	}
	return l.Named("baton")
}

func (c WorkerConfig) internal() (worker.Config, error) { return c.internalWith(nil) }

// internalWith converts c; env (nil when only validating) is what the
// handlers' Tasks reach back to.
func (c WorkerConfig) internalWith(env *handlerEnv) (worker.Config, error) {
	dsn, err := dsnFor(c.DatabaseURL, c.Schema)
	if err != nil {
		return worker.Config{}, err
	}
	handlers := make(map[string]executor.Handler, len(c.Handlers))
	for kind, h := range c.Handlers {
		if h == nil {
			return worker.Config{}, fmt.Errorf("%w: handler for kind %q is nil", ErrInvalidConfig, kind)
		}
		handlers[kind] = h.internal(env)
	}
	logger := c.Logger
	if logger == nil {
		logger = defaultLogger()
	}
	var groups []worker.GroupSlots
	for _, g := range c.Groups {
		groups = append(groups, worker.GroupSlots{Name: g.Name, Slots: g.Slots})
	}
	wc := worker.Config{
		DatabaseURL: dsn, Group: c.Group, Name: c.Name, Slots: c.Slots, Groups: groups,
		HeartbeatInterval: c.HeartbeatInterval, SelfFenceAfter: c.SelfFenceAfter,
		PollInterval: c.PollInterval, ShutdownGrace: c.ShutdownGrace, KillGrace: c.KillGrace, MaxOutput: c.MaxOutput,
		Handlers: handlers, AllowShell: c.AllowShell,
		Logger: logger, Version: "embedded",
		Test: worker.TestConfig{HeartbeatCallTimeout: c.Test.HeartbeatCallTimeout, ResultFlushInterval: c.Test.ResultFlushInterval},
	}.WithDefaults()
	if wc.DatabaseURL == "" {
		return worker.Config{}, fmt.Errorf("%w: worker: DatabaseURL is empty", ErrInvalidConfig)
	}
	if err := wc.Validate(); err != nil {
		return worker.Config{}, fmt.Errorf("%w: worker: %w", ErrInvalidConfig, err)
	}
	if c.MasterCheckInterval < 0 {
		return worker.Config{}, fmt.Errorf("%w: master check interval %s is negative", ErrInvalidConfig, c.MasterCheckInterval)
	}
	return wc, nil
}

// embeddedMaster fills the embedded master's zero fields from the worker's.
func (c WorkerConfig) embeddedMaster(logger *zap.Logger) MasterConfig {
	m := *c.Master
	m.DatabaseURL = cmp.Or(m.DatabaseURL, c.DatabaseURL)
	m.Schema = cmp.Or(m.Schema, c.Schema)
	if m.Logger == nil {
		m.Logger = logger
	}
	if m.Metrics == nil {
		m.Metrics = c.Metrics
	}
	return m
}

// Validate checks c the way NewWorker does, and as baton-worker checks its
// flags: ranges, cross-field rules, durations of at most 24 h, and self-fencing
// below the masters' worker timeout. It does not connect.
func (c WorkerConfig) Validate() error {
	wc, err := c.internal()
	if err != nil {
		return err
	}
	if err := maxDurations(map[string]time.Duration{
		"heartbeat interval": c.HeartbeatInterval, "self-fence after": c.SelfFenceAfter, "worker timeout": c.WorkerTimeout,
		"poll interval": c.PollInterval, "shutdown grace": c.ShutdownGrace, "kill grace": c.KillGrace,
		"master check interval": c.MasterCheckInterval,
	}); err != nil {
		return err
	}
	workerTimeout := cmp.Or(c.WorkerTimeout, MasterWorkerTimeoutDefault)
	if c.Master != nil {
		mc, err := c.embeddedMaster(wc.Logger).internal()
		if err != nil {
			return err
		}
		if err := c.Master.checkDurations(); err != nil {
			return err
		}
		workerTimeout = cmp.Or(c.WorkerTimeout, mc.WorkerTimeout)
		if mc.WorkerTimeout != workerTimeout {
			return fmt.Errorf("%w: worker timeout %s differs from the embedded master's %s", ErrInvalidConfig, workerTimeout, mc.WorkerTimeout)
		}
	}
	// A worker that fences itself only after the masters declared it dead runs
	// its tasks alongside their failed-over attempts.
	if wc.SelfFenceAfter >= workerTimeout {
		return fmt.Errorf("%w: self-fence after %s must be below the masters' worker timeout %s, so a cut-off worker kills its tasks before they fail over",
			ErrInvalidConfig, wc.SelfFenceAfter, workerTimeout)
	}
	if len(c.Handlers) == 0 && !c.AllowShell {
		return fmt.Errorf("%w: the worker can run nothing: register Handlers (or set AllowShell for shell tasks)", ErrInvalidConfig)
	}
	return nil
}

// maxDuration bounds every duration setting, as the binaries do.
const maxDuration = 24 * time.Hour

func maxDurations(ds map[string]time.Duration) error {
	for name, d := range ds {
		if d > maxDuration {
			return fmt.Errorf("%w: %s %s is longer than %s, the limit of any duration setting", ErrInvalidConfig, name, d, maxDuration)
		}
	}
	return nil
}

func (c MasterConfig) checkDurations() error {
	return maxDurations(map[string]time.Duration{
		"heartbeat interval": c.HeartbeatInterval, "worker timeout": c.WorkerTimeout, "master timeout": c.MasterTimeout,
		"sweep interval": c.SweepInterval, "dispatch interval": c.DispatchInterval, "timeout grace": c.TimeoutGrace,
	})
}

func (c MasterConfig) internal() (master.Config, error) {
	dsn, err := dsnFor(c.DatabaseURL, c.Schema)
	if err != nil {
		return master.Config{}, err
	}
	logger := c.Logger
	if logger == nil {
		logger = defaultLogger()
	}
	mc := master.Config{
		DatabaseURL: dsn, Name: c.Name, HeartbeatInterval: c.HeartbeatInterval,
		WorkerTimeout: c.WorkerTimeout, MasterTimeout: c.MasterTimeout, SweepInterval: c.SweepInterval,
		DispatchInterval: c.DispatchInterval, TimeoutGrace: c.TimeoutGrace,
		Logger: logger, Version: "embedded",
	}.WithDefaults()
	if mc.DatabaseURL == "" {
		return master.Config{}, fmt.Errorf("%w: master: DatabaseURL is empty", ErrInvalidConfig)
	}
	if err := mc.Validate(); err != nil {
		return master.Config{}, fmt.Errorf("%w: master: %w", ErrInvalidConfig, err)
	}
	return mc, nil
}

// Validate checks c the way NewMaster does (and baton-master its flags),
// without connecting.
func (c MasterConfig) Validate() error {
	if _, err := c.internal(); err != nil {
		return err
	}
	return c.checkDurations()
}
