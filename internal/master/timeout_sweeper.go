package master

import (
	"context"

	"go.uber.org/zap"

	"github.com/baton-scheduler/baton/internal/logfield"
	"github.com/baton-scheduler/baton/internal/report"
	"github.com/baton-scheduler/baton/internal/service"
)

// timeoutSweeper records running attempts past their timeout plus grace as
// timed_out (retrying them if allowed): the worker normally does this itself; this
// catches handlers that ignore cancellation and workers that hang. It runs beside
// worker failover, never behind it; rows another transaction holds are skipped.
type timeoutSweeper struct {
	service.Base
	service.StartStop
	m           *Master
	TestSignals timeoutSweeperTestSignals
}

type timeoutSweeperTestSignals struct {
	Swept service.TestSignal[int]
}

func (s *timeoutSweeper) Start(ctx context.Context) error {
	s.StartLoop(ctx, func(ctx context.Context) {
		loop(ctx, s.m.cfg.SweepInterval, nil, func(ctx context.Context) bool {
			n, err := s.runOnce(ctx)
			if err != nil && !quiet(ctx, err) {
				s.Logger.Warn("timeout sweep", zap.Error(err))
			}
			s.TestSignals.Swept.Signal(n)
			return n == report.TimeOutBatchSize // a full batch: more may be overdue
		})
	})
	return nil
}

// runOnce records one batch; it returns how many attempts it timed out.
func (s *timeoutSweeper) runOnce(ctx context.Context) (int, error) {
	m := s.m
	n, err := service.WithTimeout(ctx, m.cfg.TxTimeout, func(ctx context.Context) (int, error) {
		return report.TimeOutOverdue(ctx, m.pool, m.cfg.TimeoutGrace, s.Clock.NowOrNil())
	})
	if n > 0 && err == nil {
		s.Logger.Info("recorded overdue attempts as timed out", logfield.Count("tasks", n))
		m.dispatcher.wake.Wake()
	}
	return n, err
}
