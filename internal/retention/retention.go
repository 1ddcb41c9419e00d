// Package retention prunes what baton no longer needs, in small batches so no
// transaction holds many locks or writes much WAL at once: finished tasks (their
// attempts go with them), finished failover events, and ended worker and master
// sessions nothing references any more, and fire-ledger rows of old logical
// times (schedule_fires; never a row exactly-once or a policy still needs).
// Ages are judged by Postgres time.
//
// Unfinished tasks, unfinished failover events and sessions still named by an
// active task (dispatched or running), a logged attempt (task_attempt_log) or a
// dispatch row are never pruned, whatever their age. A finished task's own last
// attempt (tasks.attempt_session_id) does not keep its session: like
// failover_events.detected_by, history keeps the id of a session that may have
// been pruned (sessions end after their tasks, so both age out together).
package retention

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/service"
)

// Defaults.
const (
	// RetentionDefault is how long finished rows are kept.
	RetentionDefault = 30 * 24 * time.Hour
	// BatchSizeDefault is how many rows one DELETE removes.
	BatchSizeDefault = 1000
	// MaxBatchesDefault bounds the batches of one table in one Prune call, so a
	// first run over a large history is spread over several passes.
	MaxBatchesDefault = 100
)

// Config of a prune.
type Config struct {
	Retention  time.Duration // rows finished/ended longer ago than this go; must be positive
	BatchSize  int           // rows per DELETE (default BatchSizeDefault)
	MaxBatches int           // batches per table per call (default MaxBatchesDefault)
	TxTimeout  time.Duration // deadline of each DELETE (default 10 s)
	Now        *time.Time    // replaces Postgres now() (tests only; nil in production)
}

// Result counts what one Prune call deleted.
type Result struct {
	Tasks          int64 // finished tasks (with their attempts)
	FailoverEvents int64
	WorkerSessions int64
	MasterSessions int64
	// ScheduleFires: fire-ledger rows of old logical times (see
	// queries/schedule_fires.sql ScheduleFirePrune for what is kept).
	ScheduleFires int64
	Done          bool // every table had fewer candidates than the batch bound
}

// Total is the number of rows deleted (attempts not counted).
func (r Result) Total() int64 {
	return r.Tasks + r.FailoverEvents + r.WorkerSessions + r.MasterSessions + r.ScheduleFires
}

// Prune deletes, in batches of their own (each DELETE is its own transaction),
// finished tasks, then finished failover events, then the ended worker and master
// sessions that are left unreferenced.
func Prune(ctx context.Context, pool *pgxpool.Pool, cfg Config) (Result, error) {
	if cfg.Retention <= 0 {
		return Result{}, errors.New("retention must be positive")
	}
	if cfg.BatchSize <= 0 {
		cfg.BatchSize = BatchSizeDefault
	}
	if cfg.MaxBatches <= 0 {
		cfg.MaxBatches = MaxBatchesDefault
	}
	if cfg.TxTimeout <= 0 {
		cfg.TxTimeout = 10 * time.Second
	}
	q := db.New(pool)
	secs := cfg.Retention.Seconds()
	limit := int32(cfg.BatchSize)
	var res Result
	done := true
	steps := []struct {
		what  string
		count *int64
		del   func(ctx context.Context) (int64, error)
	}{
		{"finished tasks", &res.Tasks, func(ctx context.Context) (int64, error) {
			return q.TaskPruneFinished(ctx, db.TaskPruneFinishedParams{Now: cfg.Now, RetentionS: secs, MaxRows: limit})
		}},
		{"failover events", &res.FailoverEvents, func(ctx context.Context) (int64, error) {
			return q.FailoverEventPrune(ctx, db.FailoverEventPruneParams{Now: cfg.Now, RetentionS: secs, MaxRows: limit})
		}},
		{"worker sessions", &res.WorkerSessions, func(ctx context.Context) (int64, error) {
			return q.WorkerSessionPruneEnded(ctx, db.WorkerSessionPruneEndedParams{Now: cfg.Now, RetentionS: secs, MaxRows: limit})
		}},
		{"master sessions", &res.MasterSessions, func(ctx context.Context) (int64, error) {
			return q.MasterSessionPruneEnded(ctx, db.MasterSessionPruneEndedParams{Now: cfg.Now, RetentionS: secs, MaxRows: limit})
		}},
		{"schedule fire ledger", &res.ScheduleFires, func(ctx context.Context) (int64, error) {
			return q.ScheduleFirePrune(ctx, db.ScheduleFirePruneParams{Now: cfg.Now, RetentionS: secs, MaxRows: limit})
		}},
	}
	for _, s := range steps {
		for i := 0; ; i++ {
			if i == cfg.MaxBatches {
				done = false
				break
			}
			n, err := service.WithTimeout(ctx, cfg.TxTimeout, s.del)
			if err != nil {
				return res, fmt.Errorf("prune %s: %w", s.what, err)
			}
			*s.count += n
			if n < int64(limit) {
				break
			}
		}
	}
	res.Done = done
	return res, nil
}
