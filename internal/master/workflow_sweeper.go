package master

import (
	"context"
	"errors"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"

	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/logfield"
	"github.com/baton-scheduler/baton/internal/service"
	"github.com/baton-scheduler/baton/internal/store"
	"github.com/baton-scheduler/baton/internal/workflow"
)

// runRepairSweeper ends runs past their run timeout (each in its own
// transaction, failed, their live tasks canceled), and looks for workflow runs that are not terminal yet have
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
			if _, err := s.timeOutRuns(ctx); err != nil && !quiet(ctx, err) {
				s.Logger.Warn("workflow run timeouts", zap.Error(err))
			}
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

// runTimeoutBatch bounds the runs one sweep times out.
const runTimeoutBatch = 100

// timeOutRuns ends the runs past their deadline; it returns how many it ended.
func (s *runRepairSweeper) timeOutRuns(ctx context.Context) (int, error) {
	m := s.m
	ids, err := service.WithTimeout(ctx, m.cfg.TxTimeout, func(ctx context.Context) ([]int64, error) {
		return db.New(m.pool).WorkflowRunsOverdue(ctx, db.WorkflowRunsOverdueParams{Now: s.Clock.NowOrNil(), MaxRuns: runTimeoutBatch})
	})
	if err != nil {
		return 0, err
	}
	n := 0
	for _, id := range ids {
		_, err := service.WithTimeout(ctx, m.cfg.TxTimeout, func(ctx context.Context) (struct{}, error) {
			return struct{}{}, store.WithTx(ctx, m.pool, func(q *db.Queries, _ pgx.Tx) error { return workflow.TimeOut(ctx, q, id) })
		})
		switch {
		case errors.Is(err, workflow.ErrRunState):
			continue // ended meanwhile
		case err != nil:
			return n, err
		}
		n++
		s.Logger.Info("workflow run timed out", logfield.RunID(id))
	}
	return n, nil
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
