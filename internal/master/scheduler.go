package master

import (
	"context"
	"sync"

	"go.uber.org/zap"

	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/logfield"
	"github.com/baton-scheduler/baton/internal/schedule"
	"github.com/baton-scheduler/baton/internal/service"
)

// scheduler fires due schedules and admits backfill runs. Every master runs
// one; they share the work through row locks (SKIP LOCKED) and the ledger's
// key, so any number may fire and none fires a time twice. Between passes it
// sleeps until the earliest next_fire_at (measured by Postgres), at most
// ScheduleInterval, so a fire starts within milliseconds of its due time
// without polling faster.
type scheduler struct {
	service.Base
	service.StartStop
	m           *Master
	TestSignals schedulerTestSignals
}

type schedulerTestSignals struct {
	Fired    service.TestSignal[schedule.FireResult]
	Admitted service.TestSignal[schedule.AdmitResult]
}

func (s *scheduler) Start(ctx context.Context) error {
	s.StartLoop(ctx, func(ctx context.Context) {
		firers := s.m.cfg.ScheduleFirers
		for {
			more := s.runOnce(ctx, firers)
			if ctx.Err() != nil {
				return
			}
			wait := s.m.cfg.ScheduleInterval
			if !more {
				ctx, cancel := context.WithTimeout(ctx, s.m.cfg.TxTimeout)
				due, ok, err := schedule.NextDueIn(ctx, db.New(s.m.pool), s.Clock.NowOrNil())
				cancel()
				if err == nil && ok {
					wait = min(wait, max(due, 0))
				}
			} else {
				wait = 0
			}
			if wait > 0 && !service.Sleep(ctx, wait) {
				return
			}
		}
	})
	return nil
}

// runOnce runs one fire pass per firer (in parallel: SKIP LOCKED splits the
// due schedules between them) and one backfill admission pass; it reports
// whether work is left.
func (s *scheduler) runOnce(ctx context.Context, firers int) bool {
	now := s.Clock.NowOrNil()
	var mu sync.Mutex
	var total schedule.FireResult
	var wg sync.WaitGroup
	for range firers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := service.WithTimeout(ctx, s.m.cfg.TxTimeout, func(ctx context.Context) (schedule.FireResult, error) {
				return schedule.FirePass(ctx, s.m.pool, schedule.FireConfig{Now: now, Batch: s.m.cfg.ScheduleBatch, MaxPerSchedule: s.m.cfg.ScheduleMaxFires, Logger: s.Logger})
			})
			if err != nil && !quiet(ctx, err) {
				s.Logger.Warn("fire schedules", zap.Error(err))
			}
			mu.Lock()
			total.Schedules += res.Schedules
			total.Started += res.Started
			total.Skipped += res.Skipped
			total.Buffered += res.Buffered
			total.Canceled += res.Canceled
			total.Paused += res.Paused
			total.More = total.More || res.More
			mu.Unlock()
		}()
	}
	wg.Wait()
	if total.Schedules > 0 || total.Paused > 0 {
		s.Logger.Info("fired schedules", logfield.Count("schedules", total.Schedules), logfield.Count("started", total.Started),
			logfield.Count("skipped", total.Skipped), logfield.Count("buffered", total.Buffered))
	}
	s.TestSignals.Fired.Signal(total)
	adm, err := service.WithTimeout(ctx, s.m.cfg.TxTimeout, func(ctx context.Context) (schedule.AdmitResult, error) {
		return schedule.AdmitBackfills(ctx, s.m.pool, now, 0)
	})
	if err != nil && !quiet(ctx, err) {
		s.Logger.Warn("admit backfills", zap.Error(err))
	}
	if adm.Started > 0 || adm.Finished > 0 {
		s.Logger.Info("admitted backfill runs", logfield.Count("started", adm.Started), logfield.Count("finished", adm.Finished))
	}
	s.TestSignals.Admitted.Signal(adm)
	return total.More || adm.More
}
