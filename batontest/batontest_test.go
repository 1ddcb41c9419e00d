package batontest_test

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/baton-scheduler/baton/batontest"
)

var srv *batontest.Server

func TestMain(m *testing.M) {
	os.Exit(batontest.MainNoLeaks(m, func(s *batontest.Server) { srv = s }))
}

// Two parallel tests write the same group name and each sees only its own rows.
func TestIsolation(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"a", "b"} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			pool, _ := srv.NewPool(t)
			ctx := context.Background()
			if _, err := pool.Exec(ctx, "INSERT INTO worker_groups (name, description) VALUES ('shared', $1)", name); err != nil {
				t.Fatalf("insert into a fresh database: %v", err)
			}
			var n int
			var desc string
			if err := pool.QueryRow(ctx, "SELECT count(*), min(description) FROM worker_groups").Scan(&n, &desc); err != nil {
				t.Fatal(err)
			}
			if n != 1 || desc != name {
				t.Fatalf("test %s sees %d groups (first %q): databases are not isolated", name, n, desc)
			}
			var tables int
			if err := pool.QueryRow(ctx, "SELECT count(*) FROM information_schema.tables WHERE table_name = 'tasks'").Scan(&tables); err != nil || tables != 1 {
				t.Fatalf("database is not migrated: %d, %v", tables, err)
			}
		})
	}
}

// BenchmarkNewDatabase: what a test pays for its own migrated database
// (CREATE DATABASE … TEMPLATE; the DROPs run at cleanup, untimed).
func BenchmarkNewDatabase(b *testing.B) {
	for i := 0; i < b.N; i++ {
		srv.NewDatabase(b)
	}
}

func TestProxyStallHangsThenResumes(t *testing.T) {
	t.Parallel()
	dsn := srv.NewDatabase(t)
	p, via := batontest.NewProxy(t, dsn)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, via)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	p.Stall()
	qctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	var one int
	err = conn.QueryRow(qctx, "SELECT 1").Scan(&one)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("query through a stalled proxy: want a hang ended by the deadline, got %v", err)
	}
	p.Restore()
	conn2, err := pgx.Connect(ctx, via)
	if err != nil {
		t.Fatalf("connect after restore: %v", err)
	}
	defer conn2.Close(ctx)
	if err := conn2.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil || one != 1 {
		t.Fatalf("query after restore: %v", err)
	}
}
