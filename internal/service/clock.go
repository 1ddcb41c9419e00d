package service

import (
	"sync"
	"time"
)

// Clock is the process clock of a service. In production it is time.Now (with its
// monotonic reading). Tests stub it to a fixed instant or move it, and the same
// instant can be handed to SQL through NowOrNil so queries that judge liveness use
// the test's "now" instead of Postgres now().
//
// Liveness decisions about *another* process are made with Postgres time only;
// this clock never decides that a session is dead.
type Clock struct {
	mu   sync.Mutex
	stub *time.Time
}

// NewClock returns the production clock.
func NewClock() *Clock { return &Clock{} }

// Now is the stubbed time if set, else time.Now().
func (c *Clock) Now() time.Time {
	if c == nil {
		return time.Now()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stub != nil {
		return *c.stub
	}
	return time.Now()
}

// NowOrNil is nil in production (SQL then uses now()) and the stubbed time in tests.
func (c *Clock) NowOrNil() *time.Time {
	if c == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stub == nil {
		return nil
	}
	t := *c.stub
	return &t
}

// StubNow pins the clock at t (tests only).
func (c *Clock) StubNow(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stub = &t
}

// Advance moves a stubbed clock by d (tests only); an unstubbed clock is pinned at
// time.Now()+d.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := time.Now()
	if c.stub != nil {
		t = *c.stub
	}
	t = t.Add(d)
	c.stub = &t
}

// Unstub returns the clock to time.Now.
func (c *Clock) Unstub() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stub = nil
}
