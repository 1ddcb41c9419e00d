// Package retrypolicy computes the delay before a failed task runs again:
// exponential backoff with jitter, capped.
package retrypolicy

import (
	"math/rand/v2"
	"time"
)

// Policy is exponential backoff: Base·2^retries, capped at Max, with ±Jitter of it.
type Policy struct {
	Base   time.Duration // delay before the first retry
	Max    time.Duration // cap
	Jitter float64       // fraction in [0,1): 0.2 spreads the delay over ±20%
}

// Default: 1s, 2s, 4s, ... capped at 5 minutes, ±20%.
var Default = Policy{Base: time.Second, Max: 5 * time.Minute, Jitter: 0.2}

// Delay returns the delay before retry number retries+1. rnd returns a value in
// [0,1); nil uses math/rand.
func (p Policy) Delay(retries int, rnd func() float64) time.Duration {
	if rnd == nil {
		rnd = rand.Float64
	}
	d := p.Base
	for i := 0; i < retries && d < p.Max; i++ {
		d *= 2
	}
	d = min(d, p.Max)
	if p.Jitter > 0 {
		d = time.Duration(float64(d) * (1 - p.Jitter + 2*p.Jitter*rnd()))
	}
	return max(d, 0)
}
