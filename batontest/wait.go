package batontest

import (
	"testing"
	"time"
)

// WaitFor polls cond every 25ms until it returns true, failing t with cond's last
// description when timeout passes. Tests wait on database rows with it instead of
// sleeping; the timeout is a safety net, not an assertion about speed.
func WaitFor(t testing.TB, timeout time.Duration, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, desc := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("batontest: still waiting after %s: %s", timeout, desc)
		}
		time.Sleep(25 * time.Millisecond)
	}
}
