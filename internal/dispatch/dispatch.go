// Package dispatch points queued tasks at healthy workers of their group with free
// slots, least loaded first, through the dispatch queue table.
package dispatch

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/notify"
	"github.com/baton-scheduler/baton/internal/service"
	"github.com/baton-scheduler/baton/internal/slots"
	"github.com/baton-scheduler/baton/internal/store"
)

// Defaults.
const (
	// DefaultBatchSize bounds the tasks one dispatch transaction assigns per group.
	DefaultBatchSize = 2000
	// DefaultGroupTimeout bounds one group's dispatch transaction.
	DefaultGroupTimeout = 10 * time.Second
)

// Dispatcher places queued tasks on chosen sessions (targeted dispatch rows).
type Dispatcher struct {
	Pool          *pgxpool.Pool
	WorkerTimeout time.Duration
	BatchSize     int
	GroupTimeout  time.Duration // deadline of one group's transaction (default DefaultGroupTimeout)
	// Now replaces Postgres now() in liveness checks (tests only; nil in production).
	Now *time.Time
	// MinWait: only tasks that have been claimable this long are dispatched.
	// Workers claim queued tasks of their group themselves within milliseconds;
	// a master placing the same tasks races those claims and counts slots a
	// claim is filling, so it would put tasks on a worker that is already full.
	// The dispatcher is the fallback for tasks no worker took.
	MinWait time.Duration
}

// RunOnce dispatches what it can in every group with waiting tasks and returns
// how many tasks it dispatched. A group another master is dispatching is skipped;
// each group gets its own transaction with its own deadline (GroupTimeout), and an
// error in one group does not keep the others from being dispatched.
func (d *Dispatcher) RunOnce(ctx context.Context) (int, error) {
	groups, err := service.WithTimeout(ctx, d.groupTimeout(), func(ctx context.Context) ([]string, error) {
		return db.New(d.Pool).DispatchListWaitingGroups(ctx, d.MinWait.Seconds())
	})
	if err != nil {
		return 0, fmt.Errorf("list waiting groups: %w", err)
	}
	total := 0
	var errs []error
	for _, g := range groups {
		if ctx.Err() != nil {
			return total, ctx.Err()
		}
		n, err := service.WithTimeout(ctx, d.groupTimeout(), func(ctx context.Context) (int, error) {
			return d.Group(ctx, g)
		})
		if err != nil {
			errs = append(errs, err)
		}
		total += n
	}
	return total, errors.Join(errs...)
}

func (d *Dispatcher) groupTimeout() time.Duration {
	if d.GroupTimeout > 0 {
		return d.GroupTimeout
	}
	return DefaultGroupTimeout
}

// Group dispatches one group's waiting tasks in one transaction.
func (d *Dispatcher) Group(ctx context.Context, group string) (int, error) {
	batch := d.BatchSize
	if batch <= 0 {
		batch = DefaultBatchSize
	}
	n := 0
	err := store.WithTx(ctx, d.Pool, func(q *db.Queries, _ pgx.Tx) error {
		n = 0
		// One dispatcher per group at a time, so two masters never count the same
		// free slot; a group whose lock is held (another master, a failover, a
		// stopping worker) is skipped until the next pass.
		got, err := q.LockTryDispatchGroup(ctx, group)
		if err != nil || !got {
			return err
		}
		healthy, err := q.WorkerSessionListHealthy(ctx, db.WorkerSessionListHealthyParams{
			GroupName: group, Now: d.Now, TimeoutMs: float64(d.WorkerTimeout.Milliseconds()),
		})
		if err != nil {
			return fmt.Errorf("list healthy sessions of %s: %w", group, err)
		}
		picker := slots.NewPicker(healthy, 0)
		free := min(picker.Free(), batch)
		if free == 0 {
			return nil
		}
		ids, err := q.DispatchLockWaiting(ctx, db.DispatchLockWaitingParams{GroupName: group, MinWaitS: d.MinWait.Seconds(), MaxTasks: int32(free)})
		if err != nil {
			return fmt.Errorf("lock waiting tasks of %s: %w", group, err)
		}
		if len(ids) == 0 {
			return nil
		}
		targets := make([]int64, len(ids))
		for i := range ids {
			targets[i] = picker.Next()
		}
		rows, err := q.DispatchAssign(ctx, db.DispatchAssignParams{TaskIds: ids, SessionIds: targets, ClaimPayloadMax: notify.ClaimPayloadMax})
		if err != nil {
			return fmt.Errorf("assign tasks of %s: %w", group, err)
		}
		n = len(rows)
		return nil
	})
	return n, err
}
