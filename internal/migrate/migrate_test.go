package migrate_test

import (
	"context"
	"database/sql"
	"errors"
	"io/fs"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	_ "github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"

	"github.com/baton-scheduler/baton/batontest"
	"github.com/baton-scheduler/baton/internal/migrate"
	"github.com/baton-scheduler/baton/migrations"
)

var srv *batontest.Server

func TestMain(m *testing.M) {
	os.Exit(batontest.MainNoLeaks(m, func(s *batontest.Server) { srv = s }))
}

// migrationCount is how many migrations are embedded: version numbers are
// reserved per change, so the latest version is not their count.
func migrationCount(t *testing.T) int {
	t.Helper()
	files, err := fs.Glob(migrations.FS, "*.sql")
	if err != nil {
		t.Fatal(err)
	}
	return len(files)
}

func tables(t *testing.T, dsn string) []string {
	t.Helper()
	return tablesIn(t, dsn, "baton")
}

// tablesIn lists the tables and views of schema, goose's version table aside.
func tablesIn(t *testing.T, dsn, schema string) []string {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, `SELECT table_name FROM information_schema.tables
		WHERE table_schema = $1 AND table_name <> 'goose_db_version' ORDER BY 1`, schema)
	if err != nil {
		t.Fatal(err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return names
}

func TestUpDownUp(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn := srv.NewEmptyDatabase(t)
	m, err := migrate.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()

	if v, err := m.Version(ctx); err != nil || v != 0 {
		t.Fatalf("fresh version = %d, %v; want 0", v, err)
	}
	n, err := m.Up(ctx)
	if err != nil || n != migrationCount(t) {
		t.Fatalf("up applied %d, %v; want %d", n, err, migrationCount(t))
	}
	want := []string{"api_tokens", "audit_log", "backfills", "dispatch_queue", "failover_events", "master_sessions", "report_attempt_durations",
		"report_failover_history", "report_tasks_by_state", "report_worker_health", "schedule_fires", "schedules",
		"task_attempt_log", "task_attempts", "tasks", "worker_group_kinds", "worker_groups", "worker_sessions", "workflow_run_findings",
		"workflow_run_map_items",
		"workflow_run_steps", "workflow_runs", "workflow_version_edges", "workflow_version_steps",
		"workflow_versions", "workflows"}
	if got := tables(t, dsn); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("tables after up = %v, want %v", got, want)
	}
	if n, err := m.Up(ctx); err != nil || n != 0 {
		t.Fatalf("second up applied %d, %v; want 0, nil", n, err)
	}
	if _, err := m.DownTo(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if got := tables(t, dsn); len(got) != 0 {
		t.Fatalf("tables after down to 0 = %v, want none", got)
	}
	if _, err := m.Down(ctx); err == nil || !strings.Contains(err.Error(), "already at version 0") {
		t.Fatalf("down at 0: err = %v", err)
	}
	if _, err := m.Up(ctx); err != nil {
		t.Fatal(err)
	}
	if got := tables(t, dsn); len(got) != len(want) {
		t.Fatalf("tables after up again = %v", got)
	}
	st, err := m.Status(ctx)
	if err != nil || len(st) == 0 || !st[len(st)-1].Applied {
		t.Fatalf("status = %+v, %v", st, err)
	}
}

// Two deploys migrating the same empty database at once: both succeed and the
// schema is applied exactly once (goose's Postgres session lock).
func TestConcurrentUp(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn := srv.NewEmptyDatabase(t)
	const deploys = 4
	var wg sync.WaitGroup
	errs := make([]error, deploys)
	applied := make([]int, deploys)
	for i := range deploys {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m, err := migrate.New(ctx, dsn)
			if err != nil {
				errs[i] = err
				return
			}
			defer m.Close()
			applied[i], errs[i] = m.Up(ctx)
		}()
	}
	wg.Wait()
	total := 0
	for i := range deploys {
		if errs[i] != nil {
			t.Fatalf("deploy %d: %v", i, errs[i])
		}
		total += applied[i]
	}
	m, err := migrate.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if total != migrationCount(t) {
		t.Fatalf("migrations applied across deploys = %d, want %d (each exactly once)", total, migrationCount(t))
	}
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var rows int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM goose_db_version WHERE version_id > 0").Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if rows != migrationCount(t) {
		t.Fatalf("goose_db_version rows = %d, want %d", rows, migrationCount(t))
	}
}

func TestDatabaseNewerThanBinary(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn := srv.NewDatabase(t)
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "INSERT INTO goose_db_version (version_id, is_applied) VALUES (99999, true)"); err != nil {
		t.Fatal(err)
	}
	m, err := migrate.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	_, err = m.Up(ctx)
	if !errors.Is(err, migrate.ErrDatabaseNewer) || !strings.Contains(err.Error(), "99999") {
		t.Fatalf("up on newer database: err = %v", err)
	}
	if err := migrate.CheckSchema(ctx, dsn); !errors.Is(err, migrate.ErrDatabaseNewer) {
		t.Fatalf("CheckSchema: %v", err)
	}
}

func TestBadDSN(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	cases := []struct {
		name, dsn, want string
	}{
		{"malformed", "postgres://%zz", "invalid database URL"},
		{"unreachable", "postgres://u:p@127.0.0.1:1/x?connect_timeout=2", "unreachable"},
		{"empty", "", "database URL is empty"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := migrate.New(ctx, tc.dsn)
			if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("err = %v, want one line containing %q", err, tc.want)
			}
		})
	}
	t.Run("wrong_password", func(t *testing.T) {
		dsn := srv.NewDatabase(t)
		bad := strings.Replace(dsn, "://", "://nosuchuser:wrong@", 1)
		if i := strings.Index(dsn, "@"); i > 0 {
			bad = dsn[:strings.Index(dsn, "://")+3] + "nosuchuser:wrong" + dsn[i:]
		}
		_, err := migrate.New(ctx, bad)
		if err == nil || !strings.Contains(err.Error(), "rejected user") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("no_such_database", func(t *testing.T) {
		dsn := srv.NewDatabase(t)
		i := strings.LastIndex(dsn, "/")
		_, err := migrate.New(ctx, dsn[:i]+"/baton_no_such_db")
		if err == nil || !strings.Contains(err.Error(), "no database") {
			t.Fatalf("err = %v", err)
		}
	})
}

// The migrations directory applies with plain goose reading it from disk, as the
// stock CLI does (`goose -dir migrations postgres "$DSN" up`): embed.go beside the
// SQL files is ignored.
func TestStockGooseReadsDirectory(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn := srv.NewEmptyDatabase(t)
	sqlDB, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer sqlDB.Close()
	// The documented stock command: create the schema, name the version table in
	// it, and run with search_path set to it (batontest's URL sets it).
	if _, err := sqlDB.ExecContext(ctx, "CREATE SCHEMA baton"); err != nil {
		t.Fatal(err)
	}
	p, err := goose.NewProvider(goose.DialectPostgres, sqlDB, os.DirFS("../../migrations"),
		goose.WithTableName("baton.goose_db_version"))
	if err != nil {
		t.Fatal(err)
	}
	if res, err := p.Up(ctx); err != nil || len(res) == 0 {
		t.Fatalf("goose up from directory: %v", err)
	}
	if err := migrate.CheckSchema(ctx, dsn); err != nil {
		t.Fatalf("schema applied by goose is not the binary's: %v", err)
	}
	if _, err := p.DownTo(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if got := tables(t, dsn); len(got) != 0 {
		t.Fatalf("tables after goose down: %v", got)
	}
}

// Checking an unmigrated database (what a daemon does at start without
// --migrate) reads only: neither baton's schema nor goose's version table is
// created behind its back, nor anything in public.
func TestCheckSchemaOfEmptyDatabaseWritesNothing(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn := srv.NewEmptyDatabase(t)
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	before := batontest.TakeSnapshot(t, conn, "public")
	if before["schema baton"] != "absent" {
		t.Fatalf("an empty database has schema baton: %v", before)
	}
	err = migrate.CheckSchema(ctx, dsn)
	if err == nil || !strings.Contains(err.Error(), "run `baton migrate up`") {
		t.Fatalf("CheckSchema of an empty database = %v", err)
	}
	if diff := before.Diff(batontest.TakeSnapshot(t, conn, "public")); diff != "" {
		t.Fatalf("CheckSchema of an empty database wrote: %s", diff)
	}
}
