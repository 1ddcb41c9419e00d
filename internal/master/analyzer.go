package master

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"

	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/service"
	"github.com/baton-scheduler/baton/internal/store"
)

// analyzer keeps the planner's statistics of the tasks table from falling far
// behind its size. Workers' claims and results are prepared statements whose
// generic plan is made once per connection; made while tasks was nearly empty
// (a fresh install, a bulk prune) it joins by scanning the whole table, and it is
// kept until the table's statistics change. Autovacuum's first ANALYZE comes up
// to a minute later (its naptime), and a burst in that minute makes every claim
// and every result scan every task. So every analyzeInterval one master checks
// whether tasks changed by at least its own size since the last ANALYZE (or was
// never analyzed and holds analyzeMinRows rows) and, if so, analyzes it; the new
// statistics invalidate every connection's cached plans. As the table grows this
// runs at each doubling, so a handful of times; once it is large, autovacuum's
// 10 % threshold comes first and this never fires.
type analyzer struct {
	service.Base
	service.StartStop
	m           *Master
	TestSignals analyzerTestSignals
}

type analyzerTestSignals struct {
	Analyzed service.TestSignal[struct{}]
}

const (
	analyzeInterval = time.Second
	analyzeMinRows  = 1000
)

func (a *analyzer) Start(ctx context.Context) error {
	a.StartLoop(ctx, func(ctx context.Context) {
		loop(ctx, analyzeInterval, nil, func(ctx context.Context) bool {
			analyzed, err := a.runOnce(ctx)
			if err != nil && !quiet(ctx, err) {
				a.Logger.Warn("analyze tasks", zap.Error(err))
			}
			if analyzed {
				a.TestSignals.Analyzed.Signal(struct{}{})
			}
			return false
		})
	})
	return nil
}

// runOnce analyzes tasks if its statistics are stale and no other master is
// analyzing it; it reports whether it did.
func (a *analyzer) runOnce(ctx context.Context) (bool, error) {
	m := a.m
	stale, err := db.New(m.pool).StatsTasksStale(ctx, analyzeMinRows)
	if err != nil || !stale {
		return false, err
	}
	analyzed := false
	start := time.Now()
	_, err = service.WithTimeout(ctx, m.cfg.TxTimeout, func(ctx context.Context) (struct{}, error) {
		return struct{}{}, store.WithTx(ctx, m.pool, func(q *db.Queries, _ pgx.Tx) error {
			locked, err := q.LockTryAnalyze(ctx)
			if err != nil || !locked {
				return err
			}
			analyzed = true
			return q.StatsAnalyzeTasks(ctx)
		})
	})
	if analyzed && err == nil {
		a.Logger.Info("analyzed tasks: its size changed by 2x or more since the last statistics", zap.Duration("took", time.Since(start)))
	}
	return analyzed && err == nil, err
}
