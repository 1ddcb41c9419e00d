// Package drain ends a worker session in order, on shutdown (Drain) or when the
// session is lost (Abandon): no new claims, tasks finish or are killed, every
// result is written, then the session is marked stopped so masters hand back what
// is left at once — a result is never fenced because its session ended first.
package drain

import (
	"context"
	"errors"
	"time"

	"go.uber.org/zap"

	"github.com/baton-scheduler/baton/internal/logfield"
	"github.com/baton-scheduler/baton/internal/service"
)

// ErrShutdown is the kill cause when the shutdown grace is over.
var ErrShutdown = errors.New("worker shutting down")

// Defaults.
const (
	ResultsWaitDefault = 10 * time.Second
	TasksWaitDefault   = 5 * time.Second
)

// Tasks is the session's claim loop and running attempts (the claimer).
type Tasks interface {
	Stop() // stop claiming
	Running() int
	Kill(cause error)
	WaitTasks(ctx context.Context) bool
}

// Results is the result writer (the completer).
type Results interface {
	WaitIdle(ctx context.Context) bool
	PendingCount() int
}

// Session writes the session row.
type Session interface {
	MarkDraining(ctx context.Context, id int64) error
	MarkStopped(ctx context.Context, id int64) error
}

// Config of a Drainer.
type Config struct {
	SessionID int64
	// SessionIDs, when set, replaces SessionID: the sessions of a worker serving
	// several groups, drained and stopped together (Tasks is then all of their
	// claim loops).
	SessionIDs    []int64
	Grace         time.Duration // how long running tasks may finish on shutdown
	TasksWait     time.Duration // how long killed tasks may take to return
	ResultsWait   time.Duration // how long to wait for the last results to be written
	Tasks         Tasks
	Results       Results
	Session       Session
	StopHeartbeat func()
}

// Drained is what a drain did.
type Drained struct {
	Running    int  // tasks running when it began
	Killed     bool // the grace ran out or the session was lost: the rest were killed
	TasksLeft  int  // tasks that had not returned when the wait ended
	Unwritten  int  // results that could not be written in time
	Stopped    bool // the session row was marked stopped
	LostDuring bool // the session was lost (self-fenced, declared dead) while draining
}

// TestSignals (tests only).
type TestSignals struct {
	Drained service.TestSignal[Drained]
}

// Drainer ends one session.
type Drainer struct {
	service.Base
	TestSignals TestSignals
	cfg         Config
}

// New returns a Drainer.
func New(base service.Base, cfg Config) *Drainer {
	if cfg.TasksWait <= 0 {
		cfg.TasksWait = TasksWaitDefault
	}
	if cfg.ResultsWait <= 0 {
		cfg.ResultsWait = ResultsWaitDefault
	}
	if len(cfg.SessionIDs) == 0 {
		cfg.SessionIDs = []int64{cfg.SessionID}
	}
	cfg.SessionID = cfg.SessionIDs[0]
	return &Drainer{Base: base, cfg: cfg}
}

// Drain is the SIGTERM path: mark the session draining (claims require alive), let
// running tasks finish within Grace — or kill them at once if the session is lost
// meanwhile (lost is closed or sent on) — kill the rest, wait for their results to
// be written, stop heartbeating and mark the session stopped.
func (d *Drainer) Drain(lost <-chan error) Drained {
	log := d.logger()
	d.cfg.Tasks.Stop()
	// Marking the session draining must not delay the watch for a lost session
	// below (Postgres may be unreachable right now), so it runs on its own.
	marked := make(chan struct{})
	go func() {
		defer close(marked)
		for _, id := range d.cfg.SessionIDs {
			if err := d.cfg.Session.MarkDraining(context.Background(), id); err != nil {
				log.Warn("mark session draining failed", d.idField(id), zap.Error(err))
			}
		}
	}()
	res := Drained{Running: d.cfg.Tasks.Running()}
	log.Info("draining", logfield.Count("running", res.Running), zap.Duration("grace", d.cfg.Grace))
	finished := make(chan struct{})
	waitCtx, cancelWait := context.WithCancel(context.Background())
	go func() { d.cfg.Tasks.WaitTasks(waitCtx); close(finished) }()
	grace := time.NewTimer(d.cfg.Grace)
	select {
	case <-finished:
	case err := <-lost:
		log.Warn("session lost while draining; killing running tasks", zap.Error(err))
		d.cfg.Tasks.Kill(err) // the heartbeater's OnLost already did; harmless
		res.Killed, res.LostDuring = true, true
	case <-grace.C:
		log.Warn("shutdown grace over; killing running tasks, masters hand them back")
		d.cfg.Tasks.Kill(ErrShutdown)
		res.Killed = true
	}
	grace.Stop()
	cancelWait()
	<-finished
	d.finish(log, &res)
	<-marked
	return res
}

// Abandon is the lost-session path: the tasks were already killed by the fence (or
// are killed here), the heartbeat stops, and what can still be written is.
func (d *Drainer) Abandon(cause error) Drained {
	log := d.logger()
	d.cfg.Tasks.Stop()
	d.cfg.StopHeartbeat()
	res := Drained{Running: d.cfg.Tasks.Running(), Killed: true, LostDuring: true}
	d.cfg.Tasks.Kill(cause)
	d.finish(log, &res)
	return res
}

func (d *Drainer) logger() *zap.Logger {
	if len(d.cfg.SessionIDs) == 1 {
		return d.Logger.With(logfield.SessionID(d.cfg.SessionID))
	}
	return d.Logger.With(logfield.SessionIDs(d.cfg.SessionIDs))
}

// idField names one of several sessions in a log line (the logger names a single one).
func (d *Drainer) idField(id int64) zap.Field {
	if len(d.cfg.SessionIDs) == 1 {
		return zap.Skip()
	}
	return logfield.SessionID(id)
}

func (d *Drainer) finish(log *zap.Logger, res *Drained) {
	ctx, cancel := context.WithTimeout(context.Background(), d.cfg.TasksWait)
	if !d.cfg.Tasks.WaitTasks(ctx) {
		res.TasksLeft = d.cfg.Tasks.Running()
		log.Warn("tasks did not return after being killed; abandoning them", logfield.Count("tasks", res.TasksLeft))
	}
	cancel()
	ctx, cancel = context.WithTimeout(context.Background(), d.cfg.ResultsWait)
	if !d.cfg.Results.WaitIdle(ctx) {
		res.Unwritten = d.cfg.Results.PendingCount()
		log.Warn("results still unwritten; their tasks will be handed back and may run again", logfield.Count("results", res.Unwritten))
	}
	cancel()
	d.cfg.StopHeartbeat()
	res.Stopped = true
	for _, id := range d.cfg.SessionIDs {
		if err := d.cfg.Session.MarkStopped(context.Background(), id); err != nil {
			res.Stopped = false
			log.Warn("could not mark session stopped; masters will declare it dead", d.idField(id), zap.Error(err))
		} else {
			log.Info("session stopped", d.idField(id))
		}
	}
	d.TestSignals.Drained.Signal(*res)
}
