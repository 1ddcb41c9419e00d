// Package service gives every long-running part of baton (heartbeat, claim loop,
// result writer, sweeper, dispatcher, listener, later the workflow engine and the
// scheduler) one shape: a Base with a named logger and a clock, a Start/Stop
// lifecycle with one goroutine, and test signals that tests wait on instead of
// sleeping.
package service

import (
	"context"
	"errors"
	"sync"
	"time"

	"go.uber.org/zap"
)

// ErrStop is the cancel cause of a service's context when Stop is called, so
// shutdown can be told apart from other cancellation.
var ErrStop = errors.New("service stopped")

// Base is embedded by every service: its name, logger and clock.
type Base struct {
	Name   string
	Logger *zap.Logger
	Clock  *Clock
}

// NewBase returns a Base for a service called name; a nil logger becomes a no-op
// logger and a nil clock the process clock.
func NewBase(name string, logger *zap.Logger, clock *Clock) Base {
	if logger == nil {
		logger = zap.NewNop()
	}
	if clock == nil {
		clock = NewClock()
	}
	return Base{Name: name, Logger: logger.Named(name), Clock: clock}
}

// StartStop is the lifecycle helper a service embeds: Start runs the loop in one
// goroutine; Stop cancels it with ErrStop and waits until it has returned. Stop is
// idempotent and safe before Start.
type StartStop struct {
	mu      sync.Mutex
	cancel  context.CancelCauseFunc
	done    chan struct{}
	started chan struct{}
}

// StartLoop runs loop in a new goroutine under a context derived from ctx. It
// returns false (and runs nothing) if the service is already running.
func (s *StartStop) StartLoop(ctx context.Context, loop func(ctx context.Context)) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.done != nil {
		return false
	}
	ctx, cancel := context.WithCancelCause(ctx)
	s.cancel, s.done, s.started = cancel, make(chan struct{}), make(chan struct{})
	done, started := s.done, s.started
	go func() {
		defer close(done)
		close(started)
		loop(ctx)
	}()
	return true
}

// Stop cancels the loop and waits for it to return.
func (s *StartStop) Stop() {
	s.mu.Lock()
	cancel, done := s.cancel, s.done
	s.mu.Unlock()
	if done == nil {
		return
	}
	cancel(ErrStop)
	<-done
	s.mu.Lock()
	if s.done == done {
		s.cancel, s.done, s.started = nil, nil, nil
	}
	s.mu.Unlock()
}

// Done is closed when the running loop returns (nil if not started).
func (s *StartStop) Done() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.done
}

// Stopped reports whether ctx ended because of Stop (as opposed to a parent
// cancellation or a deadline).
func Stopped(ctx context.Context) bool { return errors.Is(context.Cause(ctx), ErrStop) }

// Sleep waits d or until ctx is done; it reports whether the full time passed.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// Backoff is exponential backoff with a cap; Reset after a success.
type Backoff struct {
	Min, Max time.Duration
	cur      time.Duration
}

// Next returns the next wait and doubles it up to Max.
func (b *Backoff) Next() time.Duration {
	if b.cur < b.Min {
		b.cur = b.Min
	}
	d := b.cur
	b.cur = min(b.cur*2, b.Max)
	return d
}

// Reset starts over at Min.
func (b *Backoff) Reset() { b.cur = 0 }

// WithTimeout runs fn with a context bounded by d: every database call in a loop
// gets its own deadline, so a hung connection cannot stall the loop.
func WithTimeout[T any](ctx context.Context, d time.Duration, fn func(ctx context.Context) (T, error)) (T, error) {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	return fn(ctx)
}
