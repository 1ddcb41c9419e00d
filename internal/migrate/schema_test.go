package migrate_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/baton-scheduler/baton/internal/migrate"
	"github.com/baton-scheduler/baton/internal/store"
)

// withParam returns dsn (a URL) with key=value added.
func withParam(dsn, key, value string) string {
	return dsn + "&" + key + "=" + value
}

func exec(t *testing.T, dsn string, stmts ...string) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	for _, s := range stmts {
		if _, err := conn.Exec(ctx, s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
}

// An application that migrates its own schema with goose (public.goose_db_version
// at version 7) and has its own tasks table: baton migrates beside it into its
// own schema and neither sees the other's versions or tables.
func TestOwnSchemaBesideApplication(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn := srv.NewEmptyDatabase(t)
	app := withParam(dsn, "search_path", "public")
	exec(t, app,
		"CREATE TABLE goose_db_version (id serial PRIMARY KEY, version_id bigint NOT NULL, is_applied boolean NOT NULL, tstamp timestamp DEFAULT now())",
		"INSERT INTO goose_db_version (version_id, is_applied) VALUES (0, true), (7, true)",
		"CREATE TABLE tasks (id int PRIMARY KEY, title text)",
		"INSERT INTO tasks VALUES (1, 'the application''s own')")

	m, err := migrate.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if m.Schema() != "baton" {
		t.Fatalf("schema = %q, want baton", m.Schema())
	}
	if err := migrate.CheckSchema(ctx, dsn); !errors.Is(err, migrate.ErrDatabaseOlder) || !strings.Contains(err.Error(), `schema "baton" is not migrated`) {
		t.Fatalf("CheckSchema before up: %v", err)
	}
	if n, err := m.Up(ctx); err != nil || n != migrationCount(t) {
		t.Fatalf("up = %d, %v", n, err)
	}
	if err := migrate.CheckSchema(ctx, dsn); err != nil {
		t.Fatal(err)
	}
	if got := tables(t, dsn); len(got) < 11 || !strings.Contains(strings.Join(got, ","), "report_tasks_by_state") {
		t.Fatalf("baton schema holds %v", got)
	}
	if got := tablesIn(t, dsn, "public"); strings.Join(got, ",") != "tasks" {
		t.Fatalf("public holds %v, want only the application's tasks", got)
	}
	conn, err := pgx.Connect(ctx, app)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var appVersion int64
	if err := conn.QueryRow(ctx, "SELECT max(version_id) FROM public.goose_db_version").Scan(&appVersion); err != nil || appVersion != 7 {
		t.Fatalf("application's goose version = %d, %v; want 7 untouched", appVersion, err)
	}
	// The application's DSN, its own search_path included, can be handed to baton as is.
	if err := migrate.CheckSchema(ctx, app); err != nil {
		t.Fatalf("application's DSN: %v", err)
	}
	// The application migrating again (a version baton does not know) changes nothing for baton.
	exec(t, app, "INSERT INTO goose_db_version (version_id, is_applied) VALUES (99999, true)")
	if err := migrate.CheckSchema(ctx, dsn); err != nil {
		t.Fatalf("application's goose version leaked into baton's: %v", err)
	}
}

// An install from schema v1 (tables in public): migrating into the new schema
// refuses and says what to do; keeping public works; MoveFromPublic moves it with
// its rows.
func TestLegacyPublicInstall(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn := srv.NewEmptyDatabase(t)
	public := withParam(dsn, "baton_schema", "public")
	old, err := migrate.New(ctx, public)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := old.Up(ctx); err != nil {
		t.Fatal(err)
	}
	old.Close()
	exec(t, withParam(dsn, "search_path", "public"), "INSERT INTO worker_groups (name) VALUES ('kept')",
		"CREATE TABLE invoices (id int)") // the application's, stays in public

	m, err := migrate.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if _, err := m.Up(ctx); !errors.Is(err, migrate.ErrLegacyPublic) || !strings.Contains(err.Error(), "baton_schema=public") {
		t.Fatalf("up beside a legacy install: %v", err)
	}
	if err := migrate.CheckSchema(ctx, dsn); !errors.Is(err, migrate.ErrLegacyPublic) {
		t.Fatalf("CheckSchema beside a legacy install: %v", err)
	}
	if err := migrate.CheckSchema(ctx, public); err != nil {
		t.Fatalf("keeping public: %v", err)
	}
	n, err := m.MoveFromPublic(ctx)
	if err != nil || n != 53 { // every table, view and function of the migrations (migration 10 adds 1, 11 adds 11, 12 adds 2)
		t.Fatalf("move = %d, %v", n, err)
	}
	if err := migrate.CheckSchema(ctx, dsn); err != nil {
		t.Fatalf("after move: %v", err)
	}
	if got := tablesIn(t, dsn, "public"); strings.Join(got, ",") != "invoices" {
		t.Fatalf("public holds %v, want only the application's invoices", got)
	}
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var name string
	if err := conn.QueryRow(ctx, "SELECT name FROM worker_groups").Scan(&name); err != nil || name != "kept" {
		t.Fatalf("moved rows: %q, %v", name, err)
	}
	var left bool
	if err := conn.QueryRow(ctx, "SELECT to_regprocedure('public.tasks_payload_size()') IS NOT NULL").Scan(&left); err != nil || left {
		t.Fatalf("baton's trigger function left in public: %v, %v", left, err)
	}
	// Functions pinned to their schema's search_path (schema v11) follow it.
	var pinned []string
	if err := conn.QueryRow(ctx, "SELECT coalesce(array_agg(DISTINCT c), '{}') FROM pg_proc p, unnest(p.proconfig) c "+
		"WHERE p.pronamespace = current_schema()::regnamespace AND c LIKE 'search_path=%'").Scan(&pinned); err != nil ||
		len(pinned) != 1 || pinned[0] != "search_path="+store.SchemaDefault {
		t.Fatalf("search_path of the moved functions: %v, %v", pinned, err)
	}
	_, err = conn.Exec(ctx, "INSERT INTO tasks (group_name, kind, payload) VALUES ('kept', 'k', jsonb_build_object('p', repeat('a', 1100000)))")
	if store.Constraint(err) != "tasks_payload_size" {
		t.Fatalf("payload limit after the move: %v", err)
	}
	// The moved schema keeps migrating (identity sequences moved with their tables).
	if _, err := m.Up(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "INSERT INTO master_sessions (name) VALUES ('m')"); err != nil {
		t.Fatal(err)
	}
	if _, err := m.MoveFromPublic(ctx); err == nil {
		t.Fatal("second move succeeded")
	}
}

func TestBadSchemaName(t *testing.T) {
	t.Parallel()
	dsn := srv.NewEmptyDatabase(t)
	_, err := migrate.New(context.Background(), withParam(dsn, "baton_schema", "Bad-Name"))
	if err == nil || !strings.Contains(err.Error(), `schema "Bad-Name" must be`) {
		t.Fatalf("err = %v", err)
	}
}
