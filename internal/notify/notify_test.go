package notify_test

import (
	"context"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/baton-scheduler/baton/batontest"
	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/notify"
)

var srv *batontest.Server

func TestMain(m *testing.M) {
	os.Exit(batontest.MainNoLeaks(m, func(s *batontest.Server) { srv = s }))
}

type got struct {
	mu   sync.Mutex
	list []string
}

func (g *got) add(ch, payload string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.list = append(g.list, ch+":"+payload)
}

func (g *got) has(s string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, v := range g.list {
		if v == s {
			return true
		}
	}
	return false
}

// The listener delivers NOTIFYs of its channels only, wakes everyone once when it
// (re)connects, and comes back by itself after its connection is killed.
func TestListenerDeliversAndReconnects(t *testing.T) {
	t.Parallel()
	pool, _ := srv.NewPool(t)
	ctx, cancel := context.WithCancel(context.Background())
	var g got
	l := &notify.Listener{Pool: pool, Channels: []string{notify.ChannelClaim, notify.ChannelSweep},
		Logger: zaptest.NewLogger(t), OnNotify: g.add}
	done := make(chan struct{})
	go func() { defer close(done); l.Run(ctx) }()
	defer func() { cancel(); <-done }()

	// The wake-up on connect tells us the LISTENs are in place.
	batontest.WaitFor(t, 10*time.Second, func() (bool, string) { return g.has("baton_sweep:*"), "no wake-up on connect" })
	q := db.New(pool)
	if err := q.NotifyClaim(ctx, "7,8"); err != nil {
		t.Fatal(err)
	}
	if err := q.NotifyDispatch(ctx); err != nil { // not listened to
		t.Fatal(err)
	}
	if err := q.NotifySweep(ctx, "42"); err != nil {
		t.Fatal(err)
	}
	batontest.WaitFor(t, 10*time.Second, func() (bool, string) {
		return g.has("baton_claim:7,8") && g.has("baton_sweep:42"), "notifications not delivered"
	})
	if g.has("baton_dispatch:") {
		t.Fatal("delivered a channel the listener does not listen to")
	}

	// Kill the listener's backend: it reconnects and wakes everyone again.
	g.mu.Lock()
	g.list = nil
	g.mu.Unlock()
	if _, err := pool.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
		WHERE datname = current_database() AND query LIKE 'LISTEN%' AND pid <> pg_backend_pid()`); err != nil {
		t.Fatal(err)
	}
	batontest.WaitFor(t, 20*time.Second, func() (bool, string) { return g.has("baton_claim:*"), "no reconnect" })
	if err := q.NotifySweep(ctx, "43"); err != nil {
		t.Fatal(err)
	}
	batontest.WaitFor(t, 10*time.Second, func() (bool, string) { return g.has("baton_sweep:43"), "nothing after reconnect" })
}

func TestClaimPayload(t *testing.T) {
	t.Parallel()
	if p := notify.ClaimPayload([]string{"1", "22"}); p != "1,22" {
		t.Fatalf("payload %q", p)
	}
	long := make([]string, 2000)
	for i := range long {
		long[i] = "1234"
	}
	if p := notify.ClaimPayload(long); p != "*" {
		t.Fatalf("a payload over the cap must become *, got %d bytes", len(p))
	}
	cases := []struct {
		payload, id string
		want        bool
	}{
		{"*", "5", true}, {"", "5", true}, {"1,5,9", "5", true}, {"1,55", "5", false}, {"15", "5", false},
	}
	for _, c := range cases {
		if got := notify.ClaimFor(c.payload, c.id); got != c.want {
			t.Errorf("ClaimFor(%q, %q) = %v", c.payload, c.id, got)
		}
	}
	if strings.Contains(notify.ClaimPayload(nil), ",") {
		t.Fatal("empty list")
	}
}

func TestSignalCoalesces(t *testing.T) {
	t.Parallel()
	s := notify.NewSignal()
	s.Wake()
	s.Wake() // never blocks; coalesced
	select {
	case <-s:
	default:
		t.Fatal("no wake-up pending")
	}
	select {
	case <-s:
		t.Fatal("two wake-ups were not coalesced")
	default:
	}
}

// A listener whose pool was closed (its owner shutting down) stops at once and
// says nothing: it used to warn and retry with backoff until its context
// ended, logging after a test that closed the pool had finished.
func TestListenerStopsOnClosedPool(t *testing.T) {
	pool, _ := srv.NewPool(t)
	pool.Close()
	core, logs := observer.New(zap.DebugLevel)
	l := &notify.Listener{Pool: pool, Channels: []string{"baton_test"}, Logger: zap.New(core), OnNotify: func(string, string) {}}
	done := make(chan struct{})
	go func() { defer close(done); l.Run(context.Background()) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("listener still running on a closed pool")
	}
	if n := logs.Len(); n != 0 {
		t.Fatalf("listener logged %d entries on a closed pool: %v", n, logs.All())
	}
}
