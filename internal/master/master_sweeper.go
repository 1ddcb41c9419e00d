package master

import (
	"context"
	"fmt"

	"go.uber.org/zap"

	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/failover"
	"github.com/baton-scheduler/baton/internal/logfield"
	"github.com/baton-scheduler/baton/internal/service"
	"github.com/baton-scheduler/baton/internal/state"
)

// masterSweeper records masters whose heartbeat is older than the master timeout
// (Postgres time) as dead, one marker each. It runs beside worker failover, never
// behind it.
type masterSweeper struct {
	service.Base
	service.StartStop
	m           *Master
	TestSignals masterSweeperTestSignals
}

type masterSweeperTestSignals struct {
	Swept service.TestSignal[masterSweepResult]
}

type masterSweepResult struct {
	Stale    int // stale masters found (other than this one)
	Recorded int // declared dead by this pass
}

func (s *masterSweeper) Start(ctx context.Context) error {
	s.StartLoop(ctx, func(ctx context.Context) {
		loop(ctx, s.m.cfg.SweepInterval, nil, func(ctx context.Context) bool {
			res, err := s.runOnce(ctx)
			if err != nil && !quiet(ctx, err) {
				s.Logger.Warn("master sweep", zap.Error(err))
			}
			s.TestSignals.Swept.Signal(res)
			return false
		})
	})
	return nil
}

func (s *masterSweeper) runOnce(ctx context.Context) (masterSweepResult, error) {
	var res masterSweepResult
	m := s.m
	fcfg := m.failoverConfig()
	stale, err := service.WithTimeout(ctx, m.cfg.TxTimeout, func(ctx context.Context) ([]int64, error) {
		return db.New(m.pool).MasterSessionListStale(ctx, db.MasterSessionListStaleParams{
			Now: fcfg.Now, TimeoutMs: float64(m.cfg.MasterTimeout.Milliseconds()),
		})
	})
	if err != nil {
		return res, fmt.Errorf("list stale masters: %w", err)
	}
	var errs []error
	for _, id := range stale {
		if id == m.SessionID() {
			continue
		}
		res.Stale++
		ran, err := service.WithTimeout(ctx, m.cfg.TxTimeout, func(ctx context.Context) (bool, error) {
			return failover.Master(ctx, m.pool, fcfg, id)
		})
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("master %d: %w", id, err))
		case ran:
			res.Recorded++
			m.cfg.Metrics.Failover(state.KindMaster)
			s.Logger.Info("master declared dead", logfield.Kind(state.KindMaster), logfield.DeadSessionID(id), logfield.MasterID(m.SessionID()))
		}
	}
	if len(errs) > 0 {
		return res, fmt.Errorf("master failover: %w", errs[0])
	}
	return res, nil
}
