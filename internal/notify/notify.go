// Package notify turns Postgres LISTEN/NOTIFY into wake-up signals. A NOTIFY only
// shortens a wait: every loop that listens also polls, so correctness never
// depends on a notification arriving.
package notify

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/puddle/v2"
	"go.uber.org/zap"
)

// Channel names.
const (
	// ChannelDispatch wakes masters: a task is waiting to be dispatched.
	ChannelDispatch = "baton_dispatch" // also spelled in queries/tasks.sql (TaskFinish)
	// ChannelSweep wakes masters' liveness sweep: a worker stopped and left tasks.
	ChannelSweep = "baton_sweep"
	// ChannelClaim wakes workers; the payload lists target session ids ("*" = all).
	ChannelClaim = "baton_claim" // also spelled in queries/dispatch_queue.sql (DispatchAssign)
	// ChannelFinished tells waiters (Client.Wait) that tasks ended; the payload
	// lists their ids ("*" = any may have). Spelled in queries/tasks.sql
	// (TaskFinish, TaskCancel) and queries/failover_events.sql (FailoverMoveTasks).
	ChannelFinished = "baton_finished"
	// ChannelCancel tells workers that a task they run was canceled (or its run
	// stopped): the payload lists the session ids concerned, as ChannelClaim's
	// ("*" = all; ClaimFor reads it). Spelled in queries/tasks.sql (TaskCancel).
	// Only a shortcut: a worker also polls its running attempts
	// (TaskListSuperseded) and stops every one whose task row no longer names it,
	// however that came about; whatever else ends a running task's attempt need
	// only send this NOTIFY to have it stopped at once.
	ChannelCancel = "baton_cancel"
)

// ClaimPayloadMax is the longest list of session ids a claim NOTIFY carries; a
// longer one becomes "*" (everyone). Passed to DispatchAssign, which builds the
// payload in SQL, so the cap is spelled only here.
const ClaimPayloadMax = 7000

// PayloadMax is the same cap for the lists of task ids ChannelFinished carries.
const PayloadMax = ClaimPayloadMax

// Listener holds one connection that LISTENs and calls OnNotify per notification.
type Listener struct {
	Pool     *pgxpool.Pool
	Channels []string
	OnNotify func(channel, payload string)
	Logger   *zap.Logger
}

// Run listens until ctx is done, reconnecting with backoff when the connection drops.
func (l *Listener) Run(ctx context.Context) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := l.listenOnce(ctx)
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, puddle.ErrClosedPool) {
			// Its owner closed the pool (shutting down): nothing to listen
			// with any more, and nothing to warn about.
			return
		}
		l.Logger.Warn("listener connection lost; polling continues", zap.Error(err), zap.Duration("retry_in", backoff))
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

func (l *Listener) listenOnce(ctx context.Context) error {
	conn, err := l.Pool.Acquire(ctx)
	if err != nil {
		return err
	}
	// The connection carries LISTEN state; never hand it back to the pool.
	defer func() {
		c := conn.Hijack()
		_ = c.Close(context.Background())
	}()
	for _, ch := range l.Channels {
		if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{ch}.Sanitize()); err != nil {
			return err
		}
	}
	// Whatever was notified while we were not listening: wake everyone once.
	for _, ch := range l.Channels {
		l.OnNotify(ch, "*")
	}
	for {
		n, err := conn.Conn().WaitForNotification(ctx)
		if err != nil {
			if errors.Is(err, context.Canceled) {
				return nil
			}
			return err
		}
		l.OnNotify(n.Channel, n.Payload)
	}
}

// Signal is a non-blocking, coalescing wake-up.
type Signal chan struct{}

// NewSignal returns a signal with room for one pending wake-up.
func NewSignal() Signal { return make(Signal, 1) }

// Wake records a wake-up if none is pending.
func (s Signal) Wake() {
	select {
	case s <- struct{}{}:
	default:
	}
}

// ClaimPayload joins session ids for one claim NOTIFY, or "*" (everyone) when the
// list would not fit in a payload.
func ClaimPayload(ids []string) string {
	p := strings.Join(ids, ",")
	if len(p) > ClaimPayloadMax {
		return "*"
	}
	return p
}

// ClaimFor reports whether a claim payload concerns session id.
func ClaimFor(payload, id string) bool {
	if payload == "*" || payload == "" {
		return true
	}
	for _, p := range strings.Split(payload, ",") {
		if p == id {
			return true
		}
	}
	return false
}
