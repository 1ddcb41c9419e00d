package retrypolicy

import (
	"testing"
	"time"
)

func TestDelay(t *testing.T) {
	t.Parallel()
	p := Policy{Base: time.Second, Max: 10 * time.Second, Jitter: 0.2}
	cases := []struct {
		name    string
		retries int
		rnd     float64
		want    time.Duration
	}{
		{"first_mid", 0, 0.5, time.Second},
		{"first_low", 0, 0, 800 * time.Millisecond},
		{"first_high", 0, 0.999999, 1199999 * time.Microsecond},
		{"third_mid", 2, 0.5, 4 * time.Second},
		{"capped", 10, 0.5, 10 * time.Second},
		{"huge_retries", 1000, 0.5, 10 * time.Second},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := p.Delay(tc.retries, func() float64 { return tc.rnd })
			if diff := got - tc.want; diff > time.Microsecond || diff < -time.Microsecond {
				t.Fatalf("Delay(%d, %v) = %v, want %v", tc.retries, tc.rnd, got, tc.want)
			}
		})
	}
}
