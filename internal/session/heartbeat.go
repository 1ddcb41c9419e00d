package session

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/logfield"
	"github.com/baton-scheduler/baton/internal/metrics"
	"github.com/baton-scheduler/baton/internal/service"
)

// Reasons a session is lost.
var (
	ErrDeclaredDead = errors.New("session declared dead by a master")
	ErrSelfFenced   = errors.New("self-fenced: no successful heartbeat in time")
)

// HeartbeatConfig of a Heartbeater.
type HeartbeatConfig struct {
	SessionID int64
	// SessionIDs, when set, replaces SessionID: the sessions of a worker serving
	// several groups (one per group), touched together by one statement. They
	// live and die together: if a master declared any of them dead (or it was
	// stopped, or its row is gone), all are lost.
	SessionIDs []int64
	Interval   time.Duration // how often the row is touched
	// FenceAfter: the fence fires this long after the last successful heartbeat
	// was sent (or Since, for the first), measured on the monotonic clock.
	FenceAfter time.Duration
	// Since is when the registration that created the session was sent.
	Since time.Time
	// CrashFenceAfter (0: off) replaces FenceAfter while the worker has promised
	// its liveness lock but does not hold it (SetLockHeld(false)): a master may then
	// declare the session dead once its heartbeat is older than its
	// --crash-detect-after, so the fence must fire before (see Liveness).
	CrashFenceAfter time.Duration
	// CallTimeout bounds one heartbeat statement; default FenceAfter/2. A hung
	// call never delays the fence, which is a timer of its own.
	CallTimeout time.Duration
	// OnLease, if set, is told the lease after Start and after each successful
	// heartbeat sent at S: long = S + FenceAfter, short = S + CrashFenceAfter (zero
	// when CrashFenceAfter is). The worker passes it to its shell tasks'
	// supervisors, which kill their trees at long, or at short once the liveness
	// lock connection hung up. Called from one goroutine at a time, in order.
	OnLease func(long, short time.Time)
	// LockHungUp, if set, reports whether the liveness lock connection has hung
	// up (a local poll, no round trip). While it has, the lease is short — last
	// successful send + CrashFenceAfter — even before the Liveness notices and
	// calls SetLockHeld(false): a worker resuming from a stall sees it at once.
	LockHungUp func() bool
	// FastBeat, if set, reports whether some task still enforces the short
	// deadline unconditionally (its supervisor holds a lost lock connection, or
	// none): the worker then heartbeats as often as while the lock is lost.
	FastBeat func() bool
	// OnLost is called once, from the goroutine that detected it, when the session
	// is lost (self-fenced or declared dead). It must not block: the worker kills
	// its tasks here, before anything else.
	OnLost func(error)
	// Metrics, if set, times heartbeats and counts self-fences.
	Metrics *metrics.Worker
}

// Fence describes a self-fence (for logs and test signals).
type Fence struct {
	SinceLastOK time.Duration // monotonic time since the last successful heartbeat was sent
	// HeartbeatInFlight: a heartbeat statement was still waiting for its answer
	// when the fence fired (the fence does not wait for it).
	HeartbeatInFlight bool
	// LockLost: the liveness lock was not held, so the shorter CrashFenceAfter applied.
	LockLost bool
}

// HeartbeatTestSignals are sent after meaningful steps (tests only).
type HeartbeatTestSignals struct {
	Beat       service.TestSignal[string] // a heartbeat succeeded; the row's state
	BeatFailed service.TestSignal[error]
	BeatSent   service.TestSignal[int64] // a heartbeat statement is about to be sent (session id)
	Fenced     service.TestSignal[Fence]
	Lost       service.TestSignal[error]
}

// Heartbeater touches the session row every Interval and fences the worker when no
// heartbeat has succeeded for FenceAfter. The fence is a timer armed at
// last-successful-send + FenceAfter: it fires whether or not a heartbeat statement
// (or anything else) is hung, and it runs on the monotonic clock, so a wall-clock
// jump moves it neither way. The Base clock is only used for log timestamps.
type Heartbeater struct {
	service.Base
	service.StartStop
	TestSignals HeartbeatTestSignals

	cfg  HeartbeatConfig
	pool *pgxpool.Pool

	lost     chan error
	nudge    chan struct{} // the lock was lost: heartbeat now
	lostOnce sync.Once
	inFlight atomic.Bool

	mu         sync.Mutex
	lastOKSent time.Time // monotonic reading
	fence      *time.Timer
	lockLost   bool // the liveness lock was promised and is not held: CrashFenceAfter applies
	done       bool // fenced, lost or stopped: the timer must not fire (again)
}

// NewHeartbeater returns a Heartbeater for one session.
func NewHeartbeater(base service.Base, pool *pgxpool.Pool, cfg HeartbeatConfig) *Heartbeater {
	if cfg.Interval <= 0 || cfg.FenceAfter <= 0 {
		panic("session: heartbeat interval and fence must be positive")
	}
	if cfg.CallTimeout <= 0 {
		cfg.CallTimeout = max(cfg.FenceAfter/2, cfg.Interval)
	}
	if cfg.Since.IsZero() {
		cfg.Since = time.Now()
	}
	if len(cfg.SessionIDs) == 0 {
		cfg.SessionIDs = []int64{cfg.SessionID}
	}
	cfg.SessionID = cfg.SessionIDs[0]
	return &Heartbeater{Base: base, cfg: cfg, pool: pool, lost: make(chan error, 1), nudge: make(chan struct{}, 1)}
}

// ErrLeaseExpired: the session may no longer act for its attempts.
var ErrLeaseExpired = errors.New("lease expired: this worker may have been declared dead and the task moved")

// LeaseErr is nil while the session still owns its attempts: it was not lost and
// its last successful heartbeat was sent less than the (current) fence time ago,
// the deadline before which no master can declare it dead — the crash fence if
// the liveness lock connection hung up (LockHungUp, checked by this call). It reads the
// monotonic clock itself, so a process that was frozen (SIGSTOP, a stall) and
// wakes up past the deadline sees the expiry at once — before the fence timer's
// goroutine has had a chance to run and cancel anything.
func (h *Heartbeater) LeaseErr() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.done {
		return ErrLeaseExpired
	}
	if since := time.Since(h.lastOKSent); since >= h.fenceAfterLocked() {
		return fmt.Errorf("%w (last successful heartbeat sent %s ago)", ErrLeaseExpired, since.Round(time.Millisecond))
	}
	return nil
}

// Lost receives the reason once the session is lost.
func (h *Heartbeater) Lost() <-chan error { return h.lost }

// Start arms the fence and starts heartbeating.
func (h *Heartbeater) Start(ctx context.Context) error {
	h.mu.Lock()
	h.lastOKSent = h.cfg.Since
	h.done = false
	h.fence = time.AfterFunc(h.fenceAfterLocked()-time.Since(h.cfg.Since), h.fire)
	h.mu.Unlock()
	h.tellLease(h.cfg.Since)
	h.StartLoop(ctx, h.loop)
	return nil
}

// Stop stops heartbeating and disarms the fence.
func (h *Heartbeater) Stop() {
	h.mu.Lock()
	h.done = true
	if h.fence != nil {
		h.fence.Stop()
	}
	h.mu.Unlock()
	h.StartStop.Stop()
}

func (h *Heartbeater) loop(ctx context.Context) {
	t := time.NewTimer(h.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-h.nudge:
		}
		t.Reset(h.interval())
		state, err := h.runOnce(ctx)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			h.Logger.Warn("heartbeat failed", logfield.SessionID(h.cfg.SessionID), zap.Error(err))
			h.TestSignals.BeatFailed.Signal(err)
			continue
		}
		h.TestSignals.Beat.Signal(state)
		if state == "dead" || state == "stopped" {
			h.lose(ErrDeclaredDead)
			return
		}
	}
}

// runOnce sends one heartbeat and, on success, re-arms the fence from the moment it
// was sent. It returns the row's state.
func (h *Heartbeater) runOnce(ctx context.Context) (string, error) {
	sent := time.Now()
	h.inFlight.Store(true)
	h.TestSignals.BeatSent.Signal(h.cfg.SessionID)
	state, err := service.WithTimeout(ctx, h.cfg.CallTimeout, h.beat)
	h.inFlight.Store(false)
	if err != nil {
		return "", err
	}
	h.cfg.Metrics.Heartbeat(time.Since(sent))
	h.mu.Lock()
	renewed := false
	if !h.done && sent.After(h.lastOKSent) {
		h.lastOKSent = sent
		// A success that arrives after the deadline changes nothing: done is set.
		h.fence.Reset(h.fenceAfterLocked() - time.Since(sent))
		renewed = true
	}
	h.mu.Unlock()
	if renewed {
		h.tellLease(sent)
	}
	return state, nil
}

// beat sends the heartbeat statement and returns the sessions' state: "dead" or
// "stopped" if any of them is (the worker then loses them all), else the first's.
func (h *Heartbeater) beat(ctx context.Context) (string, error) {
	if len(h.cfg.SessionIDs) == 1 {
		state, err := db.New(h.pool).WorkerSessionHeartbeat(ctx, h.cfg.SessionID)
		if err != nil {
			return "", fmt.Errorf("heartbeat session %d: %w", h.cfg.SessionID, err)
		}
		return state, nil
	}
	rows, err := db.New(h.pool).WorkerSessionHeartbeatMany(ctx, h.cfg.SessionIDs)
	if err != nil {
		return "", fmt.Errorf("heartbeat sessions %v: %w", h.cfg.SessionIDs, err)
	}
	states := make(map[int64]string, len(rows))
	for _, r := range rows {
		states[r.ID] = r.State
	}
	for _, id := range h.cfg.SessionIDs {
		switch st, ok := states[id]; {
		case !ok:
			// Pruned only long after it ended: it cannot be working.
			return "", fmt.Errorf("heartbeat sessions %v: session %d not found", h.cfg.SessionIDs, id)
		case st == "dead" || st == "stopped":
			return st, nil
		}
	}
	return states[h.cfg.SessionID], nil
}

// tellLease passes the lease renewed by a heartbeat sent at sent to OnLease.
func (h *Heartbeater) tellLease(sent time.Time) {
	if h.cfg.OnLease == nil {
		return
	}
	var short time.Time
	if h.cfg.CrashFenceAfter > 0 {
		short = sent.Add(min(h.cfg.CrashFenceAfter, h.cfg.FenceAfter))
	}
	h.cfg.OnLease(sent.Add(h.cfg.FenceAfter), short)
}

// fire is the fence timer: it runs on its own goroutine, never waiting for a
// heartbeat statement or for the claim loop.
func (h *Heartbeater) fire() {
	h.mu.Lock()
	if h.done {
		h.mu.Unlock()
		return
	}
	since := time.Since(h.lastOKSent)
	fenceAfter := h.fenceAfterLocked()
	if since < fenceAfter {
		// Re-armed concurrently by a success that raced the timer.
		h.fence.Reset(fenceAfter - since)
		h.mu.Unlock()
		return
	}
	h.done = true
	h.mu.Unlock()
	f := Fence{SinceLastOK: since, HeartbeatInFlight: h.inFlight.Load(), LockLost: fenceAfter != h.cfg.FenceAfter}
	h.Logger.Error("self-fencing: stop claiming and kill running tasks", logfield.SessionID(h.cfg.SessionID),
		zap.Duration("since_last_heartbeat", since), zap.Bool("heartbeat_in_flight", f.HeartbeatInFlight),
		zap.Bool("liveness_lock_lost", f.LockLost),
		zap.Time("at", h.Clock.Now()))
	h.cfg.Metrics.SelfFenced()
	h.TestSignals.Fenced.Signal(f)
	h.lose(fmt.Errorf("%w (last success sent %s ago)", ErrSelfFenced, since.Round(time.Millisecond)))
}

// interval is the time to the next heartbeat: Interval, or, while the promised
// lock is not held, a quarter of the crash fence if shorter — each success then
// pushes the nearer fence out, so a worker that heartbeats fine is not fenced
// because its lock connection alone failed.
func (h *Heartbeater) interval() time.Duration {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.cfg.CrashFenceAfter > 0 && (h.lockLost || (h.cfg.FastBeat != nil && h.cfg.FastBeat())) {
		return min(h.cfg.Interval, max(h.cfg.CrashFenceAfter/4, time.Millisecond))
	}
	return h.cfg.Interval
}

// fenceAfterLocked is the fence's current distance from the last successful send:
// the crash fence while the promised lock is not held or its connection hung up.
func (h *Heartbeater) fenceAfterLocked() time.Duration {
	if h.cfg.CrashFenceAfter > 0 && (h.lockLost || (h.cfg.LockHungUp != nil && h.cfg.LockHungUp())) {
		return min(h.cfg.CrashFenceAfter, h.cfg.FenceAfter)
	}
	return h.cfg.FenceAfter
}

// SetLockHeld tells the fence whether the promised liveness lock is held. When it
// is not, the fence moves to last-successful-send + CrashFenceAfter at once (firing
// now if that is past) — this call returns only after such a fence has fired, so
// the caller may then let the lock go. Safe to call after Stop (no effect).
func (h *Heartbeater) SetLockHeld(held bool) {
	h.mu.Lock()
	if h.lockLost == !held {
		h.mu.Unlock()
		return
	}
	h.lockLost = !held
	if h.done || h.fence == nil {
		h.mu.Unlock()
		return
	}
	left := h.fenceAfterLocked() - time.Since(h.lastOKSent)
	if left > 0 {
		h.fence.Reset(left)
		h.mu.Unlock()
		if !held {
			select {
			case h.nudge <- struct{}{}:
			default:
			}
		}
		return
	}
	h.fence.Stop()
	h.mu.Unlock()
	h.fire() // the deadline is past: fence now, on this goroutine
}

func (h *Heartbeater) lose(err error) {
	h.lostOnce.Do(func() {
		h.mu.Lock()
		h.done = true
		h.fence.Stop()
		h.mu.Unlock()
		if h.cfg.OnLost != nil {
			h.cfg.OnLost(err)
		}
		h.TestSignals.Lost.Signal(err)
		h.lost <- err
	})
}
