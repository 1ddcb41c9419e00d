package store_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/baton-scheduler/baton/batontest"
	"github.com/baton-scheduler/baton/internal/store"
)

func show(t *testing.T, pool *pgxpool.Pool, name string) string {
	t.Helper()
	var v string
	if err := pool.QueryRow(context.Background(), "SHOW "+name).Scan(&v); err != nil {
		t.Fatal(err)
	}
	return v
}

func open(t *testing.T, dsn string) *pgxpool.Pool {
	t.Helper()
	pool, err := store.Open(context.Background(), dsn, 4)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// baton's sessions bound lock waits and idle transactions by default; a DSN that
// names a parameter keeps its own value.
func TestSessionParams(t *testing.T) {
	t.Parallel()
	pool, dsn := srv.NewPool(t)
	if got := show(t, pool, "idle_in_transaction_session_timeout"); got != "10s" {
		t.Fatalf("idle_in_transaction_session_timeout = %q, want 10s", got)
	}
	if got := show(t, pool, "lock_timeout"); got != "10s" {
		t.Fatalf("lock_timeout = %q, want 10s", got)
	}
	over := open(t, dsn+"&lock_timeout=250&idle_in_transaction_session_timeout=0")
	if got := show(t, over, "lock_timeout"); got != "250ms" {
		t.Fatalf("DSN lock_timeout overridden: %q", got)
	}
	if got := show(t, over, "idle_in_transaction_session_timeout"); got != "0" {
		t.Fatalf("DSN idle_in_transaction_session_timeout overridden: %q", got)
	}
}

// A process that takes a lock in a transaction and then freezes (SIGSTOP, a
// partition, a bug) loses the lock once its transaction has been idle for
// idle_in_transaction_session_timeout, and a waiter gives up after lock_timeout
// instead of queueing behind it forever.
func TestFrozenTransactionLosesItsLocks(t *testing.T) {
	t.Parallel()
	_, dsn := srv.NewPool(t)
	ctx := context.Background()
	frozen := open(t, dsn+"&idle_in_transaction_session_timeout=300")
	waiter := open(t, dsn+"&lock_timeout=100")

	tx, err := frozen.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock(42, 42)"); err != nil {
		t.Fatal(err)
	}
	// While the lock is held a blocking wait ends with lock_not_available.
	_, err = waiter.Exec(ctx, "SELECT pg_advisory_lock(42, 42)")
	if code := store.Code(err); code != "55P03" && !errors.Is(err, context.DeadlineExceeded) {
		// the transaction may already have been cut off on a slow machine
		if err == nil {
			if _, err := waiter.Exec(ctx, "SELECT pg_advisory_unlock(42, 42)"); err != nil {
				t.Fatal(err)
			}
		} else {
			t.Fatalf("waiting on a held lock: %v (SQLSTATE %s), want 55P03", err, code)
		}
	}
	// The idle transaction is ended by the server and the lock comes free.
	batontest.WaitFor(t, 10*time.Second, func() (bool, string) {
		var got bool
		if err := waiter.QueryRow(ctx, "SELECT pg_try_advisory_xact_lock(42, 42)").Scan(&got); err != nil {
			t.Fatal(err)
		}
		return got, "lock still held by the idle transaction"
	})
	if _, err := tx.Exec(ctx, "SELECT 1"); err == nil {
		t.Fatal("the idle transaction survived idle_in_transaction_session_timeout")
	}
}
