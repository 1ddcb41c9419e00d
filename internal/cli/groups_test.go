package cli

import (
	"bytes"
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/baton-scheduler/baton/batontest"
)

// baton-worker --groups runs one worker process with a session per group, each
// with its slots, and drains them all on its context's end.
func TestWorkerMainGroups(t *testing.T) {
	t.Parallel()
	pool, dsn := srv.NewPool(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var errb bytes.Buffer
	done := make(chan int, 1)
	go func() {
		done <- WorkerMain(ctx, []string{"--groups", "a=1, b=3", "--name", "multi", "--database-url", dsn, "--shutdown-grace", "100ms"},
			func(string) string { return "" }, BuiltinHandlers(), &errb)
	}()
	sessions := func(state string) int64 {
		return batontest.Int64(t, pool, `SELECT count(*) FROM worker_sessions WHERE name = 'multi' AND state = $1
			AND (group_name, slots) IN (('a', 1), ('b', 3))`, state)
	}
	batontest.WaitFor(t, 30*time.Second, func() (bool, string) {
		select {
		case code := <-done:
			t.Fatalf("baton-worker exited %d: %s", code, errb.String())
		default:
		}
		n := sessions("alive")
		return n == 2, fmt.Sprintf("%d of 2 sessions alive", n)
	})
	if n := batontest.Int64(t, pool, "SELECT count(*) FROM worker_sessions"); n != 2 {
		t.Fatalf("sessions = %d, want 2", n)
	}
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("baton-worker exited %d: %s", code, errb.String())
	}
	if n := sessions("stopped"); n != 2 {
		t.Fatalf("stopped sessions = %d, want 2", n)
	}
}
