// Package session owns a worker's session row: registration, the state changes of
// a drain and a clean stop, and the Heartbeater, which touches the row and fences
// the worker when it cannot.
package session

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/logfield"
	"github.com/baton-scheduler/baton/internal/service"
	"github.com/baton-scheduler/baton/internal/store"
)

// CallTimeoutDefault bounds each session-row write (register, drain, stop).
const CallTimeoutDefault = 5 * time.Second

// Spec is what a worker registers.
type Spec struct {
	Name    string
	Group   string
	Slots   int
	Version string
}

// Registered is a session just created.
type Registered struct {
	ID int64
	// Sent is when the registering statement was sent (monotonic clock): the row's
	// last_heartbeat_at is no earlier, so the self-fence may count from it.
	Sent time.Time
}

// Rows writes one worker's session rows.
type Rows struct {
	service.Base
	Pool        *pgxpool.Pool
	Spec        Spec
	CallTimeout time.Duration
}

func (r *Rows) timeout() time.Duration {
	if r.CallTimeout > 0 {
		return r.CallTimeout
	}
	return CallTimeoutDefault
}

// Register creates a session, retrying with backoff until it succeeds or ctx ends.
func (r *Rows) Register(ctx context.Context) (Registered, error) {
	regs, err := RegisterAll(ctx, []*Rows{r})
	if err != nil {
		return Registered{}, err
	}
	return regs[0], nil
}

// RegisterAll creates one session per Rows (a worker serving several groups) in
// one transaction — all or none, so a canceled start leaves no session behind —
// retrying with backoff until it succeeds or ctx ends. Every Rows must share one
// pool; the first's Base logs. The sessions' rows all start with one
// last_heartbeat_at, no earlier than the returned Sent.
func RegisterAll(ctx context.Context, all []*Rows) ([]Registered, error) {
	r := all[0]
	backoff := service.Backoff{Min: 100 * time.Millisecond, Max: 2 * time.Second}
	host, _ := os.Hostname()
	for {
		sent := time.Now()
		ids, err := service.WithTimeout(ctx, r.timeout(), func(ctx context.Context) ([]int64, error) {
			var ids []int64
			register := func(q *db.Queries) error {
				for _, rw := range all {
					if err := q.GroupEnsure(ctx, rw.Spec.Group); err != nil {
						return fmt.Errorf("ensure group %q: %w", rw.Spec.Group, err)
					}
					s, err := q.WorkerSessionRegister(ctx, db.WorkerSessionRegisterParams{
						Name: rw.Spec.Name, GroupName: rw.Spec.Group, Slots: int32(rw.Spec.Slots),
						Host: host, Pid: int32(os.Getpid()), Version: rw.Spec.Version,
					})
					if err != nil {
						return fmt.Errorf("register session of group %q: %w", rw.Spec.Group, err)
					}
					ids = append(ids, s.ID)
				}
				return nil
			}
			if len(all) == 1 {
				// One row: two statements, as ever (the row's heartbeat is the
				// INSERT's now(), not an earlier transaction start).
				return ids, register(db.New(r.Pool))
			}
			return ids, store.WithTx(ctx, r.Pool, func(q *db.Queries, _ pgx.Tx) error { return register(q) })
		})
		if err == nil {
			regs := make([]Registered, len(all))
			for i, rw := range all {
				regs[i] = Registered{ID: ids[i], Sent: sent}
				rw.Logger.Info("session registered", logfield.SessionID(ids[i]), logfield.Group(rw.Spec.Group), zap.Int("slots", rw.Spec.Slots))
			}
			return regs, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		wait := backoff.Next()
		r.Logger.Warn("register session failed; retrying", zap.Error(err), zap.Duration("retry_in", wait))
		if !service.Sleep(ctx, wait) {
			return nil, ctx.Err()
		}
	}
}

// MarkDraining sets the session draining (claims require alive). One try, bounded.
func (r *Rows) MarkDraining(ctx context.Context, id int64) error {
	_, err := service.WithTimeout(ctx, r.timeout(), func(ctx context.Context) (int64, error) {
		return r.updateLocked(ctx, func(q *db.Queries) (int64, error) { return q.WorkerSessionDrain(ctx, id) })
	})
	if err != nil {
		return fmt.Errorf("mark session %d draining: %w", id, err)
	}
	return nil
}

// MarkStopped marks the session stopped and wakes the masters' sweep, which hands
// back any task still on it at once. It retries within one CallTimeout; if Postgres
// stays unreachable the heartbeat timeout does the same later.
func (r *Rows) MarkStopped(ctx context.Context, id int64) error {
	ctx, cancel := context.WithTimeout(ctx, r.timeout())
	defer cancel()
	for {
		n, err := r.updateLocked(ctx, func(q *db.Queries) (int64, error) { return q.WorkerSessionStop(ctx, id) })
		if err == nil {
			if n > 0 {
				// Best effort: the sweep also runs on its own interval.
				_ = db.New(r.Pool).NotifySweep(ctx, strconv.FormatInt(id, 10))
			}
			return nil
		}
		if !service.Sleep(ctx, 200*time.Millisecond) {
			return fmt.Errorf("mark session %d stopped: %w", id, err)
		}
	}
}

// updateLocked changes the session's state under the group's dispatch lock, so no
// dispatch or failover that read the old state can commit after the change (no
// task is sent to a draining or stopped session).
func (r *Rows) updateLocked(ctx context.Context, fn func(q *db.Queries) (int64, error)) (int64, error) {
	var n int64
	err := store.WithTx(ctx, r.Pool, func(q *db.Queries, _ pgx.Tx) error {
		if err := q.LockDispatchGroup(ctx, r.Spec.Group); err != nil {
			return fmt.Errorf("lock group %q: %w", r.Spec.Group, err)
		}
		var err error
		n, err = fn(q)
		return err
	})
	return n, err
}
