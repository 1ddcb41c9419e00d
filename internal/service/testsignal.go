package service

import (
	"testing"
	"time"
)

// TestSignal is a channel a service sends on after a meaningful step (fenced,
// claimed, swept). Its zero value does nothing, so production pays one nil check;
// tests call Init and then wait on it instead of sleeping. Sends never block: a
// test that does not drain a signal loses values beyond the buffer, never the
// service's progress.
type TestSignal[T any] struct {
	ch chan T
}

// Init arms the signal (tests only).
func (s *TestSignal[T]) Init(tb testing.TB) {
	tb.Helper()
	s.ch = make(chan T, 1000)
}

// Signal records v if the signal is armed.
func (s *TestSignal[T]) Signal(v T) {
	if s == nil || s.ch == nil {
		return
	}
	select {
	case s.ch <- v:
	default:
	}
}

// WaitOrTimeout returns the next value, failing the test after timeout (default
// 10 s; generous because CI machines are slow — a pass never waits for it).
func (s *TestSignal[T]) WaitOrTimeout(tb testing.TB, timeout ...time.Duration) T {
	tb.Helper()
	d := 10 * time.Second
	if len(timeout) > 0 {
		d = timeout[0]
	}
	select {
	case v := <-s.ch:
		return v
	case <-time.After(d):
		tb.Fatalf("test signal: nothing within %s", d)
		var zero T
		return zero
	}
}

// RequireEmpty fails the test if a value is waiting.
func (s *TestSignal[T]) RequireEmpty(tb testing.TB) {
	tb.Helper()
	select {
	case v := <-s.ch:
		tb.Fatalf("test signal: unexpected value %v", v)
	default:
	}
}

// C exposes the channel for select statements in tests.
func (s *TestSignal[T]) C() <-chan T { return s.ch }
