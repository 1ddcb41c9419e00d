package service

import (
	"context"
	"testing"
	"time"
)

func TestStartStop(t *testing.T) {
	t.Parallel()
	var s StartStop
	s.Stop() // before Start: no-op
	stopped := make(chan bool, 1)
	if !s.StartLoop(context.Background(), func(ctx context.Context) { <-ctx.Done(); stopped <- Stopped(ctx) }) {
		t.Fatal("first start refused")
	}
	if s.StartLoop(context.Background(), func(context.Context) {}) {
		t.Fatal("second start while running accepted")
	}
	s.Stop()
	s.Stop()
	if !<-stopped {
		t.Fatal("loop context not canceled with ErrStop")
	}
	// Restartable after Stop.
	if !s.StartLoop(context.Background(), func(ctx context.Context) { <-ctx.Done() }) {
		t.Fatal("restart refused")
	}
	s.Stop()
}

func TestClock(t *testing.T) {
	t.Parallel()
	c := NewClock()
	if c.NowOrNil() != nil {
		t.Fatal("production clock must hand SQL nil")
	}
	at := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	c.StubNow(at)
	c.Advance(time.Minute)
	if got := c.Now(); !got.Equal(at.Add(time.Minute)) {
		t.Fatalf("Now = %s", got)
	}
	if got := c.NowOrNil(); got == nil || !got.Equal(at.Add(time.Minute)) {
		t.Fatalf("NowOrNil = %v", got)
	}
	c.Unstub()
	if time.Since(c.Now()) > time.Minute {
		t.Fatal("unstubbed clock is not time.Now")
	}
}

func TestSignals(t *testing.T) {
	t.Parallel()
	var off TestSignal[int]
	off.Signal(1) // zero value: no-op, no panic
	var on TestSignal[int]
	on.Init(t)
	on.RequireEmpty(t)
	on.Signal(7)
	if v := on.WaitOrTimeout(t, time.Second); v != 7 {
		t.Fatalf("got %d", v)
	}
	for i := range 2000 { // never blocks past the buffer
		on.Signal(i)
	}
}

func TestBackoff(t *testing.T) {
	t.Parallel()
	b := Backoff{Min: 100 * time.Millisecond, Max: 400 * time.Millisecond}
	want := []time.Duration{100, 200, 400, 400}
	for i, w := range want {
		if got := b.Next(); got != w*time.Millisecond {
			t.Fatalf("step %d: %s", i, got)
		}
	}
	b.Reset()
	if got := b.Next(); got != 100*time.Millisecond {
		t.Fatalf("after reset: %s", got)
	}
}
