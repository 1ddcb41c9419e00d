package master

import (
	"context"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/failover"
	"github.com/baton-scheduler/baton/internal/logfield"
	"github.com/baton-scheduler/baton/internal/notify"
	"github.com/baton-scheduler/baton/internal/service"
	"github.com/baton-scheduler/baton/internal/state"
	"github.com/baton-scheduler/baton/internal/store"
)

// workerSweeper finds worker sessions to fail over (stale heartbeat by Postgres
// time, or ended with tasks left) and runs one failover transaction per candidate,
// each with its own deadline. A candidate whose group's dispatch lock is held
// elsewhere is skipped until the next pass, so one hung session stalls only its
// own group.
type workerSweeper struct {
	service.Base
	service.StartStop
	m           *Master
	wake        notify.Signal // a worker stopped and may have left tasks
	TestSignals workerSweeperTestSignals
}

type workerSweeperTestSignals struct {
	Swept service.TestSignal[workerSweepResult]
}

// workerSweepResult counts one pass.
type workerSweepResult struct {
	Candidates int
	FailedOver int // candidates whose failover transaction ran
	Busy       int // skipped: their group's dispatch lock was held
	Errors     int
	Reassigned int
	Queued     int
	Failed     int // poison tasks failed
	Crashes    int // sessions declared dead by crash detection (liveness lock free)
}

func (s *workerSweeper) Start(ctx context.Context) error {
	s.StartLoop(ctx, func(ctx context.Context) {
		loop(ctx, s.interval(), s.wake, func(ctx context.Context) bool {
			res, err := s.runOnce(ctx)
			if err != nil && !quiet(ctx, err) {
				s.Logger.Warn("list failover candidates", zap.Error(err))
			}
			s.TestSignals.Swept.Signal(res)
			return false
		})
	})
	return nil
}

// interval is the sweep period: SweepInterval, or a sixth of the crash-detection
// age if that is shorter (250 ms at the defaults), so a crash is acted on soon
// after it becomes detectable. A pass is one index-backed query when nothing is
// to be done.
func (s *workerSweeper) interval() time.Duration {
	iv := s.m.cfg.SweepInterval
	if c := s.m.cfg.CrashDetectAfter; c > 0 {
		iv = min(iv, max(c/6, 10*time.Millisecond))
	}
	return iv
}

func (s *workerSweeper) runOnce(ctx context.Context) (workerSweepResult, error) {
	var res workerSweepResult
	m := s.m
	fcfg := m.failoverConfig()
	cands, err := service.WithTimeout(ctx, m.cfg.TxTimeout, func(ctx context.Context) ([]db.WorkerSessionListFailoverCandidatesRow, error) {
		return db.New(m.pool).WorkerSessionListFailoverCandidates(ctx, db.WorkerSessionListFailoverCandidatesParams{
			Now: fcfg.Now, TimeoutMs: float64(m.cfg.WorkerTimeout.Milliseconds()),
			CrashMs: float64(fcfg.CrashAfter.Milliseconds()), PostmasterStart: fcfg.PostmasterStart,
		})
	})
	if err != nil {
		return res, fmt.Errorf("list failover candidates: %w", err)
	}
	res.Candidates = len(cands)
	busy := map[string]bool{} // groups whose lock wait ran out in this pass
	for _, c := range cands {
		if ctx.Err() != nil {
			return res, ctx.Err()
		}
		if busy[c.GroupName] {
			res.Busy++ // one bounded wait per group and pass is enough
			continue
		}
		r, err := s.failover(ctx, fcfg, c.ID, c.GroupName)
		if err != nil {
			res.Errors++
			if !quiet(ctx, err) {
				lvl := s.Logger.Error
				if store.Retryable(err) || store.Code(err) == "55P03" { // lock_timeout
					lvl = s.Logger.Info // raced a concurrent writer or a held row; the next sweep retries
				}
				lvl("worker failover", logfield.DeadSessionID(c.ID), logfield.Group(c.GroupName), zap.Error(err))
			}
			continue
		}
		if r.Busy {
			res.Busy++
			busy[c.GroupName] = true
			s.Logger.Info("worker failover deferred: group dispatch lock held", logfield.DeadSessionID(c.ID), logfield.Group(c.GroupName))
			continue
		}
		if !r.Ran {
			continue
		}
		res.FailedOver++
		m.cfg.Metrics.TasksMoved(c.GroupName, r.Reassigned, r.Queued, r.Failed)
		if r.Completed {
			m.cfg.Metrics.Failover(state.KindWorker)
		}
		res.Reassigned += r.Reassigned
		res.Queued += r.Queued
		res.Failed += r.Failed
		if r.Crash {
			res.Crashes++
		}
		if len(r.Moved) > 0 || c.State != state.SessionDead {
			s.Logger.Info("worker failover", logfield.MasterID(m.SessionID()), logfield.DeadSessionID(c.ID), logfield.Group(c.GroupName),
				zap.Time("deadline", r.Deadline), logfield.Count("reassigned", r.Reassigned),
				logfield.Count("queued", r.Queued), logfield.Count("failed", r.Failed), zap.Bool("finished", r.Finished),
				zap.Bool("crash_detected", r.Crash))
			for _, mv := range r.Moved {
				to := int64(0)
				if mv.WorkerSessionID != nil {
					to = *mv.WorkerSessionID
				}
				s.Logger.Debug("task failed over", logfield.TaskID(mv.ID), logfield.Attempt(mv.Attempt), logfield.SessionID(to))
			}
		}
		if r.Queued > 0 {
			m.dispatcher.wake.Wake()
		}
	}
	return res, nil
}

// failover runs passes for one candidate, each its own transaction with its own
// deadline, while they make progress and leave tasks behind (a session with more
// tasks than one transaction moves); the results are summed.
func (s *workerSweeper) failover(ctx context.Context, fcfg failover.Config, id int64, group string) (failover.Result, error) {
	var total failover.Result
	for pass := 0; ; pass++ {
		r, err := service.WithTimeout(ctx, s.m.cfg.TxTimeout, func(ctx context.Context) (failover.Result, error) {
			return failover.Worker(ctx, s.m.pool, fcfg, id, group)
		})
		if err != nil {
			if pass > 0 {
				return total, nil // progress was made and committed; the next sweep resumes
			}
			return r, err
		}
		if pass == 0 {
			total = r
		} else {
			total.Reassigned += r.Reassigned
			total.Queued += r.Queued
			total.Failed += r.Failed
			total.Moved = append(total.Moved, r.Moved...)
			total.Finished = r.Finished
			total.Completed = r.Completed
		}
		if !r.Ran || r.Finished || len(r.Moved) == 0 || ctx.Err() != nil {
			return total, nil
		}
	}
}
