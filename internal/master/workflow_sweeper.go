package master

import (
	"context"

	"go.uber.org/zap"

	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/logfield"
	"github.com/baton-scheduler/baton/internal/service"
)

// runRepairSweeper looks for workflow runs that are not terminal yet have
// nothing live, or whose step count disagrees with their steps. Runs advance
// in the transaction that records each step's result (migration 00005), so it
// should never find one: whatever it finds is logged as an error and recorded
// once in workflow_run_findings for an operator. It changes no run. Any master
// may run it; the UNIQUE run_id makes a finding recorded once.
type runRepairSweeper struct {
	service.Base
	service.StartStop
	m           *Master
	TestSignals runRepairSweeperTestSignals
}

type runRepairSweeperTestSignals struct {
	Swept service.TestSignal[int]
}

func (s *runRepairSweeper) Start(ctx context.Context) error {
	s.StartLoop(ctx, func(ctx context.Context) {
		loop(ctx, s.m.cfg.SweepInterval, nil, func(ctx context.Context) bool {
			n, err := s.runOnce(ctx)
			if err != nil && !quiet(ctx, err) {
				s.Logger.Warn("workflow run repair sweep", zap.Error(err))
			}
			s.TestSignals.Swept.Signal(n)
			return false
		})
	})
	return nil
}

// runOnce records new findings; it returns how many.
func (s *runRepairSweeper) runOnce(ctx context.Context) (int, error) {
	m := s.m
	id := m.SessionID()
	rows, err := service.WithTimeout(ctx, m.cfg.TxTimeout, func(ctx context.Context) ([]db.WorkflowRunsRecordStuckRow, error) {
		return db.New(m.pool).WorkflowRunsRecordStuck(ctx, &id)
	})
	for _, r := range rows {
		s.Logger.Error("workflow run found stuck: recorded in workflow_run_findings", logfield.RunID(r.RunID),
			logfield.RunState(r.RunState), logfield.Count("steps_left", int(r.StepsLeft)),
			logfield.Count("live_steps", int(r.LiveSteps)), logfield.Count("open_steps", int(r.OpenSteps)))
	}
	return len(rows), err
}
