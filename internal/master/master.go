// Package master is a baton master: it heartbeats its own session, sweeps worker
// and master liveness (Postgres time only) and runs failover, dispatches queued
// tasks and records overdue attempts as timed out. Any number run at once, all
// active; they coordinate only through Postgres locks.
package master

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/dispatch"
	"github.com/baton-scheduler/baton/internal/executor"
	"github.com/baton-scheduler/baton/internal/failover"
	"github.com/baton-scheduler/baton/internal/logfield"
	"github.com/baton-scheduler/baton/internal/notify"
	"github.com/baton-scheduler/baton/internal/report"
	"github.com/baton-scheduler/baton/internal/retrypolicy"
	"github.com/baton-scheduler/baton/internal/store"
)

// Defaults.
const (
	HeartbeatIntervalDefault = time.Second
	WorkerTimeoutDefault     = 5 * time.Second
	MasterTimeoutDefault     = 10 * time.Second
	SweepIntervalDefault     = time.Second
	DispatchIntervalDefault  = 250 * time.Millisecond
	TimeoutGraceDefault      = 5 * time.Second
)

// Config of a master process.
type Config struct {
	DatabaseURL       string
	Name              string
	HeartbeatInterval time.Duration // own heartbeat
	WorkerTimeout     time.Duration // worker heartbeat age (Postgres time) that means dead
	MasterTimeout     time.Duration // the same for masters
	SweepInterval     time.Duration // liveness + timeout sweep period
	DispatchInterval  time.Duration // dispatch polling fallback when no NOTIFY arrives
	TimeoutGrace      time.Duration // extra time past a task's timeout before the master records it
	Retry             retrypolicy.Policy
	Logger            *zap.Logger
	Version           string
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
	if c.TimeoutGrace == 0 {
		c.TimeoutGrace = TimeoutGraceDefault
	}
	if c.Retry == (retrypolicy.Policy{}) {
		c.Retry = retrypolicy.Default
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
	return errors.Join(errs...)
}

// Master is one master process.
type Master struct {
	cfg       Config
	pool      *pgxpool.Pool
	log       *zap.Logger
	sessionID atomic.Int64 // replaced when the master re-registers
	dispatch  notify.Signal
	sweep     notify.Signal
	disp      *dispatch.Dispatcher
}

// New validates cfg, connects and registers the master session.
func New(ctx context.Context, cfg Config) (*Master, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("master config: %w", err)
	}
	pool, err := store.Open(ctx, cfg.DatabaseURL, 10)
	if err != nil {
		return nil, err
	}
	m := &Master{cfg: cfg, pool: pool, log: cfg.Logger.Named("master"), dispatch: notify.NewSignal(), sweep: notify.NewSignal(),
		disp: &dispatch.Dispatcher{Pool: pool, WorkerTimeout: cfg.WorkerTimeout}}
	if err := m.register(ctx); err != nil {
		pool.Close()
		return nil, err
	}
	return m, nil
}

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

// Run works until ctx is canceled, then marks the session stopped.
func (m *Master) Run(ctx context.Context) error {
	defer m.pool.Close()
	var wg sync.WaitGroup
	loops := []func(context.Context){m.heartbeatLoop, m.sweepLoop, m.dispatchLoop, func(ctx context.Context) {
		(&notify.Listener{Pool: m.pool, Channels: []string{notify.ChannelDispatch, notify.ChannelSweep}, Logger: m.log,
			OnNotify: func(ch, _ string) {
				if ch == notify.ChannelSweep {
					m.sweep.Wake()
				} else {
					m.dispatch.Wake()
				}
			}}).Run(ctx)
	}}
	for _, loop := range loops {
		wg.Add(1)
		go func() {
			defer wg.Done()
			loop(ctx)
		}()
	}
	wg.Wait()
	stopCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := db.New(m.pool).MasterSessionStop(stopCtx, m.SessionID()); err != nil {
		m.log.Warn("mark master stopped failed", zap.Error(err))
	}
	m.log.Info("master stopped")
	return nil
}

func (m *Master) heartbeatLoop(ctx context.Context) {
	t := time.NewTicker(m.cfg.HeartbeatInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		hbCtx, cancel := context.WithTimeout(ctx, m.cfg.HeartbeatInterval)
		state, err := db.New(m.pool).MasterSessionHeartbeat(hbCtx, m.SessionID())
		cancel()
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			m.log.Warn("master heartbeat failed", zap.Error(err))
		case state != "alive":
			// Another master declared us dead (we were cut off). Masters own no
			// tasks, so a new session is all it takes to carry on.
			m.log.Warn("master session was declared dead; registering a new one")
			if err := m.register(ctx); err != nil {
				m.log.Error("re-register master", zap.Error(err))
			}
		}
	}
}

func (m *Master) sweepLoop(ctx context.Context) {
	t := time.NewTicker(m.cfg.SweepInterval)
	defer t.Stop()
	for {
		m.SweepOnce(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-m.sweep:
		}
	}
}

// SweepOnce runs worker failover for every stale or stopped-with-tasks session,
// records dead masters and times out overdue attempts.
func (m *Master) SweepOnce(ctx context.Context) {
	q := db.New(m.pool)
	fcfg := failover.Config{WorkerTimeout: m.cfg.WorkerTimeout, MasterTimeout: m.cfg.MasterTimeout, MasterID: m.SessionID()}
	cands, err := q.WorkerSessionListFailoverCandidates(ctx, float64(m.cfg.WorkerTimeout.Milliseconds()))
	if err != nil {
		if ctx.Err() == nil {
			m.log.Warn("list failover candidates", zap.Error(err))
		}
		return
	}
	for _, c := range cands {
		res, err := failover.Worker(ctx, m.pool, fcfg, c.ID, c.GroupName)
		if err != nil {
			if ctx.Err() == nil {
				lvl := m.log.Error
				if store.Retryable(err) {
					lvl = m.log.Info // raced a concurrent writer; the next sweep retries
				}
				lvl("worker failover", logfield.DeadSessionID(c.ID), zap.Error(err))
			}
			continue
		}
		if res.Ran && (len(res.Moved) > 0 || c.State != "dead") {
			m.log.Info("worker failover", logfield.MasterID(m.SessionID()), logfield.DeadSessionID(c.ID), logfield.Group(c.GroupName),
				zap.Time("deadline", res.Deadline), logfield.Count("reassigned", res.Reassigned),
				logfield.Count("queued", res.Queued), zap.Bool("finished", res.Finished))
			for _, mv := range res.Moved {
				to := int64(0)
				if mv.WorkerSessionID != nil {
					to = *mv.WorkerSessionID
				}
				m.log.Debug("task failed over", logfield.TaskID(mv.ID), logfield.Attempt(mv.Attempt), logfield.SessionID(to))
			}
		}
		if res.Queued > 0 {
			m.dispatch.Wake()
		}
	}
	stale, err := q.MasterSessionListStale(ctx, float64(m.cfg.MasterTimeout.Milliseconds()))
	if err == nil {
		for _, id := range stale {
			if id == m.SessionID() {
				continue
			}
			if ran, err := failover.Master(ctx, m.pool, fcfg, id); err != nil {
				m.log.Warn("master failover", zap.Int64("dead_master_id", id), zap.Error(err))
			} else if ran {
				m.log.Info("master declared dead", zap.Int64("dead_master_id", id))
			}
		}
	}
	n, err := report.TimeOutOverdue(ctx, m.pool, m.cfg.TimeoutGrace, m.cfg.Retry, executor.NoExitCode)
	if err != nil && ctx.Err() == nil {
		m.log.Warn("timeout sweep", zap.Error(err))
	} else if n > 0 {
		m.log.Info("recorded overdue attempts as timed out", logfield.Count("tasks", n))
		m.dispatch.Wake()
	}
}

func (m *Master) dispatchLoop(ctx context.Context) {
	t := time.NewTicker(m.cfg.DispatchInterval)
	defer t.Stop()
	for {
		n, err := m.disp.RunOnce(ctx)
		if err != nil && ctx.Err() == nil {
			m.log.Warn("dispatch", zap.Error(err))
		}
		if n > 0 {
			m.log.Debug("dispatched", logfield.Count("tasks", n))
			continue // more may be waiting
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-m.dispatch:
		}
	}
}
