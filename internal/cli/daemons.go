package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/baton-scheduler/baton/internal/executor"
	"github.com/baton-scheduler/baton/internal/master"
	"github.com/baton-scheduler/baton/internal/metrics"
	"github.com/baton-scheduler/baton/internal/migrate"
	"github.com/baton-scheduler/baton/internal/schedule"
	"github.com/baton-scheduler/baton/internal/sdnotify"
	"github.com/baton-scheduler/baton/internal/worker"
)

// Version is stamped at build time.
var Version = "dev"

// MasterMain is baton-master: flags and env -> master.Config -> Run.
func MasterMain(ctx context.Context, args []string, env Env, stderr io.Writer) int {
	fs := newFlagSet("baton-master", stderr)
	var cfg master.Config
	var migrateUp bool
	var logLevel, logFormat, httpAddr string
	err := func() error {
		var err error
		dsnVar(fs, &cfg.DatabaseURL, env)
		fs.StringVar(&httpAddr, "http-addr", env("BATON_HTTP_ADDR"), "serve the HTTP API, /livez, /readyz and /metrics on this address, e.g. :8080; empty: off (env BATON_HTTP_ADDR)")
		fs.StringVar(&cfg.Name, "name", env("BATON_MASTER_NAME"), "master name (default host-pid)")
		hb, err1 := envDuration(env, "BATON_HEARTBEAT_INTERVAL", master.HeartbeatIntervalDefault)
		wt, err2 := envDuration(env, "BATON_WORKER_TIMEOUT", master.WorkerTimeoutDefault)
		mt, err3 := envDuration(env, "BATON_MASTER_TIMEOUT", master.MasterTimeoutDefault)
		sw, err4 := envDuration(env, "BATON_SWEEP_INTERVAL", master.SweepIntervalDefault)
		mf, err5 := envInt(env, "BATON_MAX_FAILOVERS", master.MaxFailoversDefault)
		rt, err6 := envRetention(env)
		cd, err7 := envDuration(env, "BATON_CRASH_DETECT_AFTER", master.CrashDetectAfterDefault)
		if err = errors.Join(err1, err2, err3, err4, err5, err6, err7); err != nil {
			return err
		}
		fs.DurationVar(&cfg.CrashDetectAfter, "crash-detect-after", cd, "a worker whose liveness lock is free (its connection is gone) is dead once its heartbeat is this old; 0 waits the worker timeout (env BATON_CRASH_DETECT_AFTER)")
		cfg.Retention = rt
		fs.IntVar(&cfg.MaxFailovers, "max-failovers", mf, "times a task whose worker died while running it is failed over before it fails (env BATON_MAX_FAILOVERS)")
		fs.Var(&retentionValue{&cfg.Retention}, "retention", "prune finished tasks, failover events and ended sessions older than this, e.g. 30d; 0 keeps everything (env BATON_RETENTION)")
		fs.DurationVar(&cfg.HeartbeatInterval, "heartbeat-interval", hb, "own heartbeat period (env BATON_HEARTBEAT_INTERVAL)")
		fs.DurationVar(&cfg.WorkerTimeout, "worker-timeout", wt, "heartbeat age (Postgres time) after which a worker is dead (env BATON_WORKER_TIMEOUT)")
		fs.DurationVar(&cfg.MasterTimeout, "master-timeout", mt, "the same for masters (env BATON_MASTER_TIMEOUT)")
		fs.DurationVar(&cfg.SweepInterval, "sweep-interval", sw, "liveness/timeout sweep period (env BATON_SWEEP_INTERVAL)")
		fs.DurationVar(&cfg.DispatchInterval, "dispatch-interval", master.DispatchIntervalDefault, "dispatch polling fallback")
		fs.DurationVar(&cfg.TimeoutGrace, "timeout-grace", master.TimeoutGraceDefault, "time past a task timeout before the master records it")
		sched := true
		fs.BoolVar(&sched, "scheduler", env("BATON_SCHEDULER") != "false", "fire due schedules and admit backfill runs; --scheduler=false leaves them to the other masters (env BATON_SCHEDULER=false)")
		fs.IntVar(&cfg.ScheduleBatch, "schedule-batch", schedule.FireBatchDefault, "schedules one fire transaction locks and fires (1..10000)")
		fs.IntVar(&cfg.ScheduleFirers, "schedule-firers", master.ScheduleFirersDefault, "fire transactions run in parallel (1..64)")
		fs.IntVar(&cfg.ScheduleMaxFires, "schedule-max-fires", schedule.FireMaxPerScheduleDefault, "ledger rows one schedule writes per fire transaction after downtime; the rest follow in the next passes (1..100000)")
		fs.BoolVar(&migrateUp, "migrate", env("BATON_MIGRATE") == "true", "apply pending migrations at start (env BATON_MIGRATE=true)")
		fs.StringVar(&logLevel, "log-level", envDefault(env, "BATON_LOG_LEVEL", "info"), "debug|info|warn|error")
		fs.StringVar(&logFormat, "log-format", envDefault(env, "BATON_LOG_FORMAT", "json"), "json|console")
		if err := fs.Parse(args); err != nil {
			return err
		}
		if err := parsed(fs); err != nil {
			return err
		}
		if cfg.CrashDetectAfter == 0 {
			cfg.CrashDetectAfter = master.CrashDetectOff
		}
		cfg.NoScheduler = !sched
		if cfg.ScheduleBatch == 0 || cfg.ScheduleFirers == 0 || cfg.ScheduleMaxFires == 0 {
			return fmt.Errorf("--schedule-batch %d, --schedule-firers %d and --schedule-max-fires %d must be at least 1", cfg.ScheduleBatch, cfg.ScheduleFirers, cfg.ScheduleMaxFires)
		}
		log, err := newLogger(logLevel, logFormat)
		if err != nil {
			return err
		}
		defer log.Sync() //nolint:errcheck
		cfg.Logger, cfg.Version = log, Version
		// Validate what the flags gave before defaults fill zeros: an explicit 0 is an error.
		if err := cfg.Validate(); err != nil {
			return err
		}
		if err := schemaReady(ctx, cfg.DatabaseURL, migrateUp); err != nil {
			return err
		}
		sd, err := sdnotify.New(env)
		if err != nil {
			return err
		}
		if httpAddr != "" {
			cfg.Metrics = metrics.NewMaster()
		}
		m, err := master.New(ctx, cfg)
		if err != nil {
			return err
		}
		defer notifyService(ctx, sd, log)()
		ready := func() {
			if err := sd.Ready(fmt.Sprintf("master session %d", m.SessionID())); err != nil {
				log.Warn("systemd notify", zap.Error(err))
			}
		}
		if httpAddr == "" {
			ready()
			return m.Run(ctx)
		}
		return runWithHTTP(ctx, m.Run, ready, httpAddr, cfg.DatabaseURL, cfg.WorkerTimeout, log,
			cfg.Metrics, metrics.NewPoolCollector(m.Pool(), "master"))
	}()
	return exitCode(stderr, "baton-master", err)
}

// WorkerMain is baton-worker: flags and env -> worker.Config -> Run.
func WorkerMain(ctx context.Context, args []string, env Env, handlers map[string]executor.Handler, stderr io.Writer) int {
	fs := newFlagSet("baton-worker", stderr)
	var cfg worker.Config
	var logLevel, logFormat, metricsAddr string
	err := func() error {
		hb, err1 := envDuration(env, "BATON_HEARTBEAT_INTERVAL", worker.HeartbeatIntervalDefault)
		sf, err2 := envDuration(env, "BATON_SELF_FENCE_AFTER", worker.SelfFenceAfterDefault)
		gr, err3 := envDuration(env, "BATON_SHUTDOWN_GRACE", worker.ShutdownGraceDefault)
		slots, err4 := envInt(env, "BATON_SLOTS", worker.SlotsDefault)
		wt, err5 := envDuration(env, "BATON_WORKER_TIMEOUT", master.WorkerTimeoutDefault)
		cd, err6 := envDuration(env, "BATON_CRASH_DETECT_AFTER", worker.CrashDetectAfterDefault)
		cf, err7 := envDuration(env, "BATON_CRASH_FENCE_AFTER", 0)
		if err := errors.Join(err1, err2, err3, err4, err5, err6, err7); err != nil {
			return err
		}
		var workerTimeout time.Duration
		var groups string
		dsnVar(fs, &cfg.DatabaseURL, env)
		fs.StringVar(&cfg.Group, "group", envDefault(env, "BATON_GROUP", worker.GroupDefault), "worker group (env BATON_GROUP)")
		fs.StringVar(&cfg.Name, "name", env("BATON_WORKER_NAME"), "worker name (default host-pid)")
		fs.StringVar(&metricsAddr, "metrics-addr", env("BATON_METRICS_ADDR"), "serve /metrics and /livez on this address, e.g. :9101; empty: off (env BATON_METRICS_ADDR)")
		fs.IntVar(&cfg.Slots, "slots", slots, "tasks run at once (env BATON_SLOTS)")
		fs.StringVar(&groups, "groups", env("BATON_GROUPS"), "several groups served by this one worker, each with its slots, e.g. billing=4,email=2; instead of --group and --slots (env BATON_GROUPS)")
		fs.DurationVar(&cfg.HeartbeatInterval, "heartbeat-interval", hb, "heartbeat period (env BATON_HEARTBEAT_INTERVAL)")
		fs.DurationVar(&cfg.SelfFenceAfter, "self-fence-after", sf, "stop and kill tasks after this long without a heartbeat; keep below the masters' worker timeout (env BATON_SELF_FENCE_AFTER)")
		fs.DurationVar(&cfg.PollInterval, "poll-interval", worker.PollIntervalDefault, "claim polling fallback")
		fs.DurationVar(&cfg.ShutdownGrace, "shutdown-grace", gr, "on SIGTERM, how long running tasks may finish (env BATON_SHUTDOWN_GRACE)")
		fs.IntVar(&cfg.MaxOutput, "max-output", executor.DefaultMaxOutput, "bytes of task output kept per attempt")
		fs.DurationVar(&cfg.CrashDetectAfter, "crash-detect-after", cd, "the masters' --crash-detect-after: hold a liveness lock on a dedicated connection so a crash is detected after this long; 0 turns it off (needed behind a transaction-mode pooler) (env BATON_CRASH_DETECT_AFTER)")
		fs.DurationVar(&cfg.CrashFenceAfter, "crash-fence-after", cf, "while the liveness lock is lost, self-fence this long after the last heartbeat; below --crash-detect-after (default 5/6 of it) (env BATON_CRASH_FENCE_AFTER)")
		fs.DurationVar(&workerTimeout, "worker-timeout", wt, "the masters' --worker-timeout, which --self-fence-after must stay below (env BATON_WORKER_TIMEOUT)")
		fs.StringVar(&logLevel, "log-level", envDefault(env, "BATON_LOG_LEVEL", "info"), "debug|info|warn|error")
		fs.StringVar(&logFormat, "log-format", envDefault(env, "BATON_LOG_FORMAT", "json"), "json|console")
		if err := fs.Parse(args); err != nil {
			return err
		}
		if err := parsed(fs); err != nil {
			return err
		}
		if groups != "" {
			set := map[string]bool{}
			fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
			if set["group"] || set["slots"] || env("BATON_GROUP") != "" || env("BATON_SLOTS") != "" {
				return errors.New("--groups (BATON_GROUPS) names every group with its slots: drop --group and --slots (BATON_GROUP, BATON_SLOTS)")
			}
			var err error
			if cfg.Groups, err = parseGroups(groups); err != nil {
				return err
			}
			cfg.Group, cfg.Slots = "", 0
		}
		// groupLabel names the groups served (metrics label, systemd status).
		groupLabel := cfg.Group
		if len(cfg.Groups) > 0 {
			names := make([]string, len(cfg.Groups))
			for i, g := range cfg.Groups {
				names[i] = g.Name
			}
			groupLabel = strings.Join(names, ",")
		}
		if cfg.CrashDetectAfter == 0 {
			cfg.CrashDetectAfter = worker.CrashDetectOff
		}
		if cfg.CrashFenceAfter == 0 && cfg.CrashDetectAfter > 0 {
			cfg.CrashFenceAfter = worker.CrashFenceDefault(cfg.CrashDetectAfter)
		}
		log, err := newLogger(logLevel, logFormat)
		if err != nil {
			return err
		}
		defer log.Sync() //nolint:errcheck
		cfg.Logger, cfg.Version, cfg.Handlers = log, Version, handlers
		cfg.AllowShell = true // the binary runs shell tasks; embedded Go workers opt in
		if err := cfg.Validate(); err != nil {
			return err
		}
		// A worker that fences itself only after the masters have declared it dead
		// runs its tasks alongside their failed-over attempts.
		if cfg.SelfFenceAfter >= workerTimeout {
			return fmt.Errorf("self-fence after %s is not below the masters' worker timeout %s: the worker would keep running tasks the masters have moved (lower --self-fence-after, or give --worker-timeout / BATON_WORKER_TIMEOUT the masters' value)",
				cfg.SelfFenceAfter, workerTimeout)
		}
		if err := schemaReady(ctx, cfg.DatabaseURL, false); err != nil {
			return err
		}
		sd, err := sdnotify.New(env)
		if err != nil {
			return err
		}
		registered := false
		cfg.OnRegistered = func(id int64) { // on Run's goroutine, one at a time
			status := fmt.Sprintf("worker session %d of group %s", id, groupLabel)
			var err error
			if !registered {
				registered, err = true, sd.Ready(status)
			} else {
				err = sd.Send("STATUS=" + status + " (re-registered after a lost session)")
			}
			if err != nil {
				log.Warn("systemd notify", zap.Error(err))
			}
		}
		var ln net.Listener
		if metricsAddr != "" {
			// Opened first: a taken port fails the start.
			if ln, err = net.Listen("tcp", metricsAddr); err != nil {
				return fmt.Errorf("--metrics-addr %s: %w", metricsAddr, err)
			}
			cfg.Metrics = metrics.NewWorker(groupLabel)
		}
		w, err := worker.New(ctx, cfg)
		if err != nil {
			if ln != nil {
				ln.Close()
			}
			return err
		}
		if ln != nil {
			reg := metrics.NewRegistry(Version)
			reg.MustRegister(cfg.Metrics, metrics.NewPoolCollector(w.Pool(), "worker"))
			stop := metrics.Serve(ln, reg, log.Named("metrics"))
			defer stop() // after the drain: the last counts stay scrapeable until exit
			log.Info("metrics listening", zap.String("addr", ln.Addr().String()))
		}
		defer notifyService(ctx, sd, log)()
		return w.Run(ctx)
	}()
	return exitCode(stderr, "baton-worker", err)
}

// parseGroups reads --groups: name=slots pairs separated by commas. The names
// and ranges are checked by worker.Config.Validate.
func parseGroups(v string) ([]worker.GroupSlots, error) {
	var gs []worker.GroupSlots
	for _, item := range strings.Split(v, ",") {
		name, slots, ok := strings.Cut(strings.TrimSpace(item), "=")
		if !ok {
			return nil, fmt.Errorf("--groups entry %q is not name=slots (e.g. --groups billing=4,email=2)", item)
		}
		n, err := strconv.Atoi(slots)
		if err != nil {
			return nil, fmt.Errorf("--groups entry %q: slots %q is not an integer", item, slots)
		}
		gs = append(gs, worker.GroupSlots{Name: name, Slots: n})
	}
	return gs, nil
}

// parsed checks what a daemon's flag set holds after parsing: no stray
// arguments (flags after one are silently ignored by the flag package) and no
// duration beyond MaxDuration.
func parsed(fs *flag.FlagSet) error {
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q: %s takes only flags (see -h)", fs.Arg(0), fs.Name())
	}
	return checkDurations(fs)
}

func schemaReady(ctx context.Context, dsn string, migrateUp bool) error {
	if migrateUp {
		return migrate.EnsureLatest(ctx, dsn)
	}
	return migrate.CheckSchema(ctx, dsn)
}

// notifyService feeds systemd's watchdog (when the unit has WatchdogSec=) and
// sends STOPPING=1 once ctx ends (SIGTERM: the drain begins), until the
// returned stop is called, when the daemon's Run has returned. The watchdog
// keeps running through a drain, which TimeoutStopSec= bounds.
func notifyService(ctx context.Context, sd *sdnotify.Notifier, log *zap.Logger) (stop func()) {
	wctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); sd.Watchdog(wctx) }()
	sent := make(chan struct{})
	stopping := context.AfterFunc(ctx, func() {
		defer close(sent)
		if err := sd.Stopping("stopping: draining"); err != nil {
			log.Warn("systemd notify", zap.Error(err))
		}
	})
	return func() {
		if !stopping() {
			<-sent
		}
		cancel()
		<-done
	}
}
