package batontest

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
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

// Int64 runs a query returning one integer, failing t on error.
func Int64(t testing.TB, pool *pgxpool.Pool, sql string, args ...any) int64 {
	t.Helper()
	var v int64
	if err := pool.QueryRow(context.Background(), sql, args...).Scan(&v); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return v
}
