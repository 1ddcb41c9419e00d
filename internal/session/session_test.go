package session_test

import (
	"context"
	"errors"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap/zaptest"

	"github.com/baton-scheduler/baton/batontest"
	"github.com/baton-scheduler/baton/internal/service"
	"github.com/baton-scheduler/baton/internal/session"
)

var srv *batontest.Server

func TestMain(m *testing.M) {
	os.Exit(batontest.MainNoLeaks(m, func(s *batontest.Server) { srv = s }))
}

func rows(t *testing.T, pool *pgxpool.Pool) *session.Rows {
	return &session.Rows{Base: service.NewBase("session", zaptest.NewLogger(t), nil), Pool: pool,
		Spec: session.Spec{Name: "w", Group: "g", Slots: 2, Version: "test"}}
}

func heartbeater(t *testing.T, pool *pgxpool.Pool, cfg session.HeartbeatConfig) (*session.Heartbeater, chan error) {
	lost := make(chan error, 10)
	cfg.OnLost = func(err error) { lost <- err }
	h := session.NewHeartbeater(service.NewBase("heartbeat", zaptest.NewLogger(t), nil), pool, cfg)
	h.TestSignals.Beat.Init(t)
	h.TestSignals.BeatFailed.Init(t)
	h.TestSignals.BeatSent.Init(t)
	h.TestSignals.Fenced.Init(t)
	h.TestSignals.Lost.Init(t)
	t.Cleanup(h.Stop)
	return h, lost
}

// proxiedSession registers a session and returns the direct pool, a proxy in front
// of the database, a pool through it (for the heartbeats a test stalls) and the
// registration.
func proxiedSession(t *testing.T) (*pgxpool.Pool, *batontest.Proxy, *pgxpool.Pool, session.Registered) {
	t.Helper()
	pool, dsn := srv.NewPool(t)
	proxy, viaProxy := batontest.NewProxy(t, dsn)
	proxied, err := pgxpool.New(context.Background(), viaProxy)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(proxied.Close)
	t.Cleanup(proxy.Restore)
	reg, err := rows(t, pool).Register(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return pool, proxy, proxied, reg
}

func TestRegisterDrainStop(t *testing.T) {
	t.Parallel()
	pool, _ := srv.NewPool(t)
	ctx := context.Background()
	r := rows(t, pool)
	reg, err := r.Register(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n := batontest.Int64(t, pool, "SELECT count(*) FROM worker_sessions WHERE id = $1 AND state = 'alive' AND group_name = 'g' AND slots = 2", reg.ID); n != 1 {
		t.Fatal("session not registered alive")
	}
	if err := r.MarkDraining(ctx, reg.ID); err != nil {
		t.Fatal(err)
	}
	if n := batontest.Int64(t, pool, "SELECT count(*) FROM worker_sessions WHERE id = $1 AND state = 'draining'", reg.ID); n != 1 {
		t.Fatal("session not draining")
	}
	conn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, "LISTEN baton_sweep"); err != nil {
		t.Fatal(err)
	}
	if err := r.MarkStopped(ctx, reg.ID); err != nil {
		t.Fatal(err)
	}
	if n := batontest.Int64(t, pool, "SELECT count(*) FROM worker_sessions WHERE id = $1 AND state = 'stopped' AND ended_at IS NOT NULL", reg.ID); n != 1 {
		t.Fatal("session not stopped")
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	n, err := conn.Conn().WaitForNotification(wctx)
	if err != nil {
		t.Fatal(err)
	}
	if n.Payload != strconv.FormatInt(reg.ID, 10) {
		t.Fatalf("sweep payload %q", n.Payload)
	}
}

// Successful heartbeats keep re-arming the fence: for several fence periods it
// never fires.
func TestHeartbeatRearmsFence(t *testing.T) {
	t.Parallel()
	pool, _ := srv.NewPool(t)
	reg, err := rows(t, pool).Register(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	// Heartbeats every 20 ms against a 1 s fence, for three fence periods: only a
	// success re-arming the fence keeps it from firing. The fence is long next to
	// the interval so that a loaded machine (one slow round trip) cannot fire it;
	// without the re-arm it fires after the first second whatever the load.
	const fence = time.Second
	h, lost := heartbeater(t, pool, session.HeartbeatConfig{SessionID: reg.ID, Interval: 20 * time.Millisecond,
		FenceAfter: fence, Since: reg.Sent})
	_ = h.Start(context.Background())
	start, beats := time.Now(), 0
	for time.Since(start) < 3*fence {
		if st := h.TestSignals.Beat.WaitOrTimeout(t); st != "alive" {
			t.Fatalf("state %q", st)
		}
		beats++
	}
	h.Stop()
	select {
	case f := <-h.TestSignals.Fenced.C():
		t.Fatalf("fenced after %d heartbeats in %s: %+v", beats, time.Since(start), f)
	default:
	}
	if len(lost) != 0 {
		t.Fatal("session lost while heartbeating")
	}
}

// The fence is a timer: with the heartbeat statement hung (a silent partition), it
// fires on time, and the worker hears of it at once through OnLost.
func TestFenceFiresWhileHeartbeatHangs(t *testing.T) {
	t.Parallel()
	_, proxy, proxied, reg := proxiedSession(t)
	h, lost := heartbeater(t, proxied, session.HeartbeatConfig{SessionID: reg.ID, Interval: 20 * time.Millisecond,
		FenceAfter: time.Second, Since: reg.Sent, CallTimeout: time.Minute})
	_ = h.Start(context.Background())
	h.TestSignals.Beat.WaitOrTimeout(t)
	proxy.Stall()
	// Heartbeats are sent every 20 ms: within the 1 s fence one is surely hung in
	// the stalled proxy when the fence fires.
	f := h.TestSignals.Fenced.WaitOrTimeout(t)
	if !f.HeartbeatInFlight || f.SinceLastOK < time.Second {
		t.Fatalf("fence %+v: want it to fire while the heartbeat hangs, after the fence period", f)
	}
	if err := <-lost; !errors.Is(err, session.ErrSelfFenced) {
		t.Fatalf("lost: %v", err)
	}
	if err := <-h.Lost(); !errors.Is(err, session.ErrSelfFenced) {
		t.Fatalf("Lost(): %v", err)
	}
	h.Stop() // returns although the heartbeat statement is still hung
}

// A heartbeat that finds the session dead (a master failed it over) loses it.
func TestHeartbeatLearnsDeclaredDead(t *testing.T) {
	t.Parallel()
	pool, _ := srv.NewPool(t)
	reg, err := rows(t, pool).Register(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	h, lost := heartbeater(t, pool, session.HeartbeatConfig{SessionID: reg.ID, Interval: 20 * time.Millisecond,
		FenceAfter: time.Minute, Since: reg.Sent})
	_ = h.Start(context.Background())
	h.TestSignals.Beat.WaitOrTimeout(t)
	if _, err := pool.Exec(context.Background(), "UPDATE worker_sessions SET state = 'dead', ended_at = now() WHERE id = $1", reg.ID); err != nil {
		t.Fatal(err)
	}
	if err := <-lost; !errors.Is(err, session.ErrDeclaredDead) {
		t.Fatalf("lost: %v", err)
	}
	h.TestSignals.Fenced.RequireEmpty(t)
}

func TestHeartbeatStartStopStress(t *testing.T) {
	t.Parallel()
	pool, _ := srv.NewPool(t)
	reg, err := rows(t, pool).Register(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	h, lost := heartbeater(t, pool, session.HeartbeatConfig{SessionID: reg.ID, Interval: time.Millisecond, FenceAfter: time.Minute, Since: reg.Sent})
	batontest.StartStopStress(t, h, nil)
	// Still heartbeats after all that, and nothing fenced or lost the session.
	if err := h.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	h.TestSignals.Beat.WaitOrTimeout(t)
	h.Stop()
	h.TestSignals.Fenced.RequireEmpty(t)
	select {
	case err := <-lost:
		t.Fatalf("session lost during starts and stops: %v", err)
	default:
	}
}

// While the promised liveness lock is not held, the fence is last-success +
// CrashFenceAfter instead of FenceAfter. With every heartbeat hung: losing the lock
// arms the crash fence, which fires although the normal one is a minute away; and
// when the crash fence is already past, SetLockHeld(false) fences before it
// returns (so the caller may then let the connection go).
func TestLockLostMovesFenceForward(t *testing.T) {
	t.Parallel()
	_, proxy, proxied, reg := proxiedSession(t)
	cfg := session.HeartbeatConfig{SessionID: reg.ID, Interval: 20 * time.Millisecond,
		FenceAfter: time.Minute, CrashFenceAfter: 100 * time.Millisecond, Since: reg.Sent, CallTimeout: time.Minute}

	t.Run("armed", func(t *testing.T) {
		h, lost := heartbeater(t, proxied, cfg)
		_ = h.Start(context.Background())
		h.TestSignals.Beat.WaitOrTimeout(t)
		proxy.Stall()
		defer proxy.Restore()
		h.TestSignals.BeatSent.WaitOrTimeout(t) // this heartbeat hangs
		h.SetLockHeld(false)
		f := h.TestSignals.Fenced.WaitOrTimeout(t)
		if !f.LockLost || f.SinceLastOK < 100*time.Millisecond || f.SinceLastOK >= time.Minute {
			t.Fatalf("fence %+v: want the crash fence", f)
		}
		if err := <-lost; !errors.Is(err, session.ErrSelfFenced) {
			t.Fatalf("lost: %v", err)
		}
	})
	t.Run("past", func(t *testing.T) {
		proxy.Stall()
		defer proxy.Restore()
		past := cfg
		past.Since = reg.Sent.Add(-time.Second) // no heartbeat has succeeded for a second
		h, lost := heartbeater(t, proxied, past)
		_ = h.Start(context.Background())
		h.SetLockHeld(false)
		select {
		case f := <-h.TestSignals.Fenced.C():
			if !f.LockLost || f.SinceLastOK < time.Second {
				t.Fatalf("fence %+v", f)
			}
		default:
			t.Fatal("SetLockHeld(false) past the crash fence returned without fencing")
		}
		if err := <-lost; !errors.Is(err, session.ErrSelfFenced) {
			t.Fatalf("lost: %v", err)
		}
	})
}

// Losing the lock while heartbeats succeed changes nothing (each success re-arms
// the crash fence); taking it again restores the normal fence.
func TestLockLostWhileHeartbeating(t *testing.T) {
	t.Parallel()
	pool, _ := srv.NewPool(t)
	reg, err := rows(t, pool).Register(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	h, lost := heartbeater(t, pool, session.HeartbeatConfig{SessionID: reg.ID, Interval: 20 * time.Millisecond,
		FenceAfter: time.Minute, CrashFenceAfter: 2 * time.Second, Since: reg.Sent})
	_ = h.Start(context.Background())
	h.TestSignals.Beat.WaitOrTimeout(t)
	h.SetLockHeld(false)
	for range 20 {
		h.TestSignals.Beat.WaitOrTimeout(t)
	}
	h.SetLockHeld(true)
	h.TestSignals.Beat.WaitOrTimeout(t)
	h.Stop()
	h.TestSignals.Fenced.RequireEmpty(t)
	if len(lost) != 0 {
		t.Fatal("session lost")
	}
	h.SetLockHeld(false) // after Stop: no effect
	h.TestSignals.Fenced.RequireEmpty(t)
}

// The lease is read from the monotonic clock, not from the fence timer: a process
// that wakes up past its deadline (frozen by SIGSTOP, a stall) sees the expiry at
// once, even while the timer's goroutine has not run yet (here: its OnLost blocks,
// as a fence firing concurrently would be, and the heartbeats cannot succeed).
func TestLeaseExpiresByTheClockNotTheTimer(t *testing.T) {
	t.Parallel()
	pool, proxy, proxied, reg := proxiedSession(t)
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	cfg := session.HeartbeatConfig{SessionID: reg.ID, Interval: 20 * time.Millisecond,
		FenceAfter: time.Hour, Since: reg.Sent, CallTimeout: time.Minute}
	cfg.OnLost = func(error) { <-release }
	h := session.NewHeartbeater(service.NewBase("heartbeat", zaptest.NewLogger(t), nil), proxied, cfg)
	h.TestSignals.Beat.Init(t)
	t.Cleanup(h.Stop)
	_ = h.Start(context.Background())
	h.TestSignals.Beat.WaitOrTimeout(t)
	if err := h.LeaseErr(); err != nil {
		t.Fatalf("fresh session: lease %v", err)
	}

	// A session whose last successful heartbeat is older than its fence time: the
	// lease is gone at once, whatever the timer has (not) done yet.
	proxy.Stall()
	old, _ := rows(t, pool).Register(context.Background())
	cfg2 := session.HeartbeatConfig{SessionID: old.ID, Interval: time.Hour, FenceAfter: 100 * time.Millisecond,
		Since: time.Now().Add(-time.Second), CallTimeout: time.Minute, OnLost: func(error) { <-release }}
	h2 := session.NewHeartbeater(service.NewBase("heartbeat", zaptest.NewLogger(t), nil), proxied, cfg2)
	t.Cleanup(h2.Stop)
	_ = h2.Start(context.Background())
	if err := h2.LeaseErr(); !errors.Is(err, session.ErrLeaseExpired) {
		t.Fatalf("lease of a session past its fence: %v, want ErrLeaseExpired", err)
	}
}
