package session

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"

	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/contain"
	"github.com/baton-scheduler/baton/internal/logfield"
	"github.com/baton-scheduler/baton/internal/service"
)

// Liveness defaults.
const (
	// LivenessPingIntervalDefault: how often the lock connection is pinged, so a
	// reset connection (the lock is gone) is noticed within about this long.
	LivenessPingIntervalDefault = 250 * time.Millisecond
	// LivenessConnectTimeoutDefault bounds one attempt to (re)connect and take the lock.
	LivenessConnectTimeoutDefault = time.Second
)

// LivenessConfig of a Liveness.
type LivenessConfig struct {
	SessionID int64
	// SessionIDs, when set, replaces SessionID: the sessions of a worker serving
	// several groups. Their locks are all held on the one connection, so they are
	// lost (and freed, for the masters) together, and promised in one statement.
	SessionIDs []int64
	// ConnConfig is the dedicated connection's: never a pooled one, and it must
	// reach Postgres directly (a transaction-mode pooler does not keep session
	// advisory locks).
	ConnConfig   *pgx.ConnConfig
	PingInterval time.Duration // default LivenessPingIntervalDefault
	// ConnectTimeout bounds one connect + lock attempt (default LivenessConnectTimeoutDefault).
	ConnectTimeout time.Duration
	// OnHeld is told whether the lock is held: true once taken (and again after
	// each re-take), false as soon as the connection fails. It must apply the crash
	// fence before returning: the connection is closed only after OnHeld(false)
	// returned (Heartbeater.SetLockHeld).
	OnHeld func(held bool)
	// OnConn, if set, is given the connection that holds the lock once it is
	// taken (before OnHeld(true)), and nil once it is lost (after OnHeld(false))
	// or let go; the worker shares its socket with its tasks' supervisors. An
	// error is logged: those tasks then enforce the short deadline at once.
	OnConn func(conn net.Conn) error
}

// LivenessTestSignals are sent after meaningful steps (tests only).
type LivenessTestSignals struct {
	Held     service.TestSignal[int64] // the lock was taken (and promised, the first time); backend pid
	Lost     service.TestSignal[error] // the lock connection failed
	Promised service.TestSignal[int64] // worker_sessions.liveness_lock was set (session id)
	Pinged   service.TestSignal[struct{}]
}

// Liveness holds a worker session's liveness advisory lock (LockWorkerLiveness) on
// one dedicated connection for the session's life and promises it to the masters
// (WorkerSessionSetLivenessLock), so a crashed process — whose connections
// Postgres sees close — is declared dead after the masters' --crash-detect-after
// instead of the heartbeat timeout.
//
// The worker's side of that contract: while the lock is not held (the connection
// failed, Postgres restarted), the Heartbeater's fence is last-successful-send +
// CrashFenceAfter, below the masters' crash-detection age; once the lock is taken
// again, the normal self-fence applies. A ping never has a deadline of its own: a
// ping that hangs (a silent partition) leaves the lock held server-side, and
// closing the connection ourselves would free it while the worker still runs; so
// the connection is closed only on Stop (after the fence or the drain) or after it
// failed. See docs/architecture.md "Crash detection".
type Liveness struct {
	service.Base
	service.StartStop
	TestSignals LivenessTestSignals

	cfg  LivenessConfig
	conn atomic.Pointer[net.Conn] // the socket of the connection that holds the lock
}

// HungUp reports whether the connection that holds the lock has hung up — the
// peer closed it, it was reset or failed — by a zero-timeout poll of its socket:
// no round trip, no read. Postgres may already have freed the lock. False while
// no connection holds the lock (the Heartbeater then knows from SetLockHeld).
func (l *Liveness) HungUp() bool {
	c := l.conn.Load()
	return c != nil && contain.HungUp(*c)
}

func (l *Liveness) setConn(conn *pgx.Conn) {
	var nc net.Conn
	if conn != nil {
		nc = conn.PgConn().Conn()
		l.conn.Store(&nc)
	} else {
		l.conn.Store(nil)
	}
	if l.cfg.OnConn != nil {
		if err := l.cfg.OnConn(nc); err != nil {
			l.Logger.Error("liveness lock socket not shared with task supervisors; they apply the crash fence",
				logfield.SessionID(l.cfg.SessionID), zap.Error(err))
		}
	}
}

// NewLiveness returns a Liveness for one session.
func NewLiveness(base service.Base, cfg LivenessConfig) *Liveness {
	if cfg.PingInterval <= 0 {
		cfg.PingInterval = LivenessPingIntervalDefault
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = LivenessConnectTimeoutDefault
	}
	if cfg.OnHeld == nil {
		cfg.OnHeld = func(bool) {}
	}
	if len(cfg.SessionIDs) == 0 {
		cfg.SessionIDs = []int64{cfg.SessionID}
	}
	cfg.SessionID = cfg.SessionIDs[0]
	return &Liveness{Base: base, cfg: cfg}
}

// Start takes the lock and keeps it in the background.
func (l *Liveness) Start(ctx context.Context) error {
	l.StartLoop(ctx, l.loop)
	return nil
}

func (l *Liveness) loop(ctx context.Context) {
	backoff := service.Backoff{Min: 50 * time.Millisecond, Max: l.cfg.PingInterval}
	promised := false
	for ctx.Err() == nil {
		conn, err := l.acquire(ctx, !promised)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if errors.Is(err, errSessionEnded) {
				l.Logger.Info("session ended before its liveness lock was promised", logfield.SessionID(l.cfg.SessionID), zap.Error(err))
				if len(l.cfg.SessionIDs) > 1 {
					// The others may have been promised and are not held: the
					// crash fence applies until the heartbeat reports the end.
					l.cfg.OnHeld(false)
				}
				return
			}
			wait := backoff.Next()
			msg := "liveness lock not taken; retrying"
			if !promised {
				msg = "liveness lock not taken yet (the worker claims no task until it is); retrying"
			}
			l.Logger.Warn(msg, logfield.SessionID(l.cfg.SessionID), zap.Error(err), zap.Duration("retry_in", wait))
			if !service.Sleep(ctx, wait) {
				return
			}
			continue
		}
		backoff.Reset()
		promised = true
		l.setConn(conn)
		l.cfg.OnHeld(true)
		l.TestSignals.Held.Signal(int64(conn.PgConn().PID()))
		err = l.keep(ctx, conn)
		if ctx.Err() != nil {
			// Stop: the caller has fenced or drained; the lock may go (closing
			// sends Terminate: Postgres ends the session whoever else holds the socket).
			l.setConn(nil)
			closeConn(conn)
			return
		}
		// The connection failed: the fence moves first, then the connection goes.
		l.cfg.OnHeld(false)
		l.setConn(nil)
		closeConn(conn)
		l.Logger.Warn("liveness lock connection lost; crash fence applies until it is taken again",
			logfield.SessionID(l.cfg.SessionID), zap.Error(err))
		l.TestSignals.Lost.Signal(err)
	}
}

var errSessionEnded = errors.New("session no longer alive or draining")

// acquire connects, takes the lock and, the first time, promises it.
func (l *Liveness) acquire(ctx context.Context, promise bool) (*pgx.Conn, error) {
	actx, cancel := context.WithTimeout(ctx, l.cfg.ConnectTimeout)
	defer cancel()
	conn, err := pgx.ConnectConfig(actx, l.cfg.ConnConfig)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	q := db.New(conn)
	// Every session's lock on this one connection: closing it (or a crash) frees
	// them all at once.
	for _, id := range l.cfg.SessionIDs {
		locked, err := q.LockWorkerLiveness(actx, id)
		if err != nil {
			closeConn(conn)
			return nil, fmt.Errorf("take liveness lock of session %d: %w", id, err)
		}
		if !locked {
			// A master's probe holds it for the length of its failover transaction.
			closeConn(conn)
			return nil, fmt.Errorf("liveness lock of session %d held elsewhere (a master's probe)", id)
		}
	}
	if promise {
		var n int64
		if len(l.cfg.SessionIDs) == 1 {
			n, err = q.WorkerSessionSetLivenessLock(actx, l.cfg.SessionID)
		} else {
			n, err = q.WorkerSessionSetLivenessLockMany(actx, l.cfg.SessionIDs)
		}
		if err != nil {
			closeConn(conn)
			return nil, fmt.Errorf("promise liveness lock: %w", err)
		}
		if n < int64(len(l.cfg.SessionIDs)) {
			closeConn(conn)
			return nil, fmt.Errorf("%w (%d of %d sessions promised)", errSessionEnded, n, len(l.cfg.SessionIDs))
		}
		for _, id := range l.cfg.SessionIDs {
			l.TestSignals.Promised.Signal(id)
		}
	}
	return conn, nil
}

// keep pings conn every PingInterval until a ping fails or ctx ends. A ping waits
// as long as it takes: only an error (reset, closed, Postgres gone) means the lock
// is lost.
func (l *Liveness) keep(ctx context.Context, conn *pgx.Conn) error {
	t := time.NewTicker(l.cfg.PingInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		if err := conn.Ping(ctx); err != nil {
			return fmt.Errorf("ping liveness connection: %w", err)
		}
		l.TestSignals.Pinged.Signal(struct{}{})
	}
}

func closeConn(conn *pgx.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = conn.Close(ctx)
}
