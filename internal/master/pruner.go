package master

import (
	"context"

	"go.uber.org/zap"

	"github.com/baton-scheduler/baton/internal/logfield"
	"github.com/baton-scheduler/baton/internal/retention"
	"github.com/baton-scheduler/baton/internal/service"
)

// pruner deletes finished tasks (with their attempts), finished failover events and
// unreferenced ended sessions older than the retention, in batches. Every master
// runs one; concurrent pruners skip each other's rows (SKIP LOCKED).
type pruner struct {
	service.Base
	service.StartStop
	m           *Master
	TestSignals prunerTestSignals
}

type prunerTestSignals struct {
	Pruned service.TestSignal[retention.Result]
}

func (p *pruner) Start(ctx context.Context) error {
	p.StartLoop(ctx, func(ctx context.Context) {
		loop(ctx, p.m.cfg.PruneInterval, nil, func(ctx context.Context) bool {
			res, err := p.runOnce(ctx)
			if err != nil && !quiet(ctx, err) {
				p.Logger.Warn("prune", zap.Error(err))
			}
			p.TestSignals.Pruned.Signal(res)
			return err == nil && !res.Done // a long history: keep going
		})
	})
	return nil
}

// runOnce prunes up to retention.MaxBatchesDefault batches per table.
func (p *pruner) runOnce(ctx context.Context) (retention.Result, error) {
	res, err := retention.Prune(ctx, p.m.pool, retention.Config{
		Retention: p.m.cfg.Retention, Now: p.Clock.NowOrNil(), MaxBatches: 10,
		TxTimeout: p.m.cfg.TxTimeout,
	})
	if res.Total() > 0 {
		p.Logger.Info("pruned", logfield.Count("tasks", int(res.Tasks)), logfield.Count("failover_events", int(res.FailoverEvents)),
			logfield.Count("worker_sessions", int(res.WorkerSessions)), logfield.Count("master_sessions", int(res.MasterSessions)),
			logfield.Count("schedule_fires", int(res.ScheduleFires)))
	}
	return res, err
}
