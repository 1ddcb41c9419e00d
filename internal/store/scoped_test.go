package store_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/store"
)

// Scoped runs sqlc statements in baton's schema on an application's pool whose
// search_path is its own (here public, holding a table of the same name): the
// statements find baton's tables, the connections keep their search_path, and a
// pooler's DEALLOCATE ALL is recovered from.
func TestScopedStatements(t *testing.T) {
	t.Parallel()
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeCacheDescribe,
		pgx.QueryExecModeDescribeExec, pgx.QueryExecModeExec, pgx.QueryExecModeSimpleProtocol} {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			testScoped(t, mode)
		})
	}
}

func testScoped(t *testing.T, mode pgx.QueryExecMode) {
	ctx := context.Background()
	_, dsn := srv.NewPool(t)
	cfg, err := pgxpool.ParseConfig(dsn) // the application's pool: no baton search_path
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 2
	cfg.ConnConfig.RuntimeParams["search_path"] = "public"
	cfg.ConnConfig.DefaultQueryExecMode = mode
	app, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(app.Close)
	if _, err := app.Exec(ctx, "CREATE TABLE public.worker_groups (name text)"); err != nil {
		t.Fatal(err)
	}
	q := db.New(store.NewScoped(app, store.SchemaDefault))
	for i := range 5 { // more calls than connections: each connection prepares once
		if err := q.GroupEnsure(ctx, "scoped"); err != nil { // Exec
			t.Fatalf("call %d: %v", i, err)
		}
		ok, err := q.GroupExists(ctx, "scoped") // QueryRow
		if err != nil || !ok {
			t.Fatalf("call %d: GroupExists = %v, %v", i, ok, err)
		}
		ids, err := q.TaskSubmitMany(ctx, db.TaskSubmitManyParams{ // Query
			GroupNames: []string{"scoped", "scoped"}, Kinds: []string{"k", "k"}, Payloads: []string{"{}", `{"a":1}`},
			Priorities: []int32{0, 0}, MaxRetries: []int32{0, 0}, TimeoutsMs: []int64{0, 0},
			RetryBasesMs: []int64{-1, -1}, RetryMaxesMs: []int64{-1, -1},
			RunAtsUs: []int64{0, 0}, DelaysMs: []int64{0, 0}, TagsJson: []string{"[]", "[]"}})
		if err != nil || len(ids) != 2 || ids[1] <= ids[0] {
			t.Fatalf("call %d: TaskSubmitMany = %v, %v", i, ids, err)
		}
	}
	var appRows int
	if err := app.QueryRow(ctx, "SELECT count(*) FROM public.worker_groups").Scan(&appRows); err != nil || appRows != 0 {
		t.Fatalf("the application's own table got %d rows (%v)", appRows, err)
	}
	if got := show(t, app, "search_path"); got != "public" {
		t.Fatalf("the application's connection was left with search_path %q", got)
	}
	// A pooler's reset drops the prepared statements behind pgx's back.
	for range 2 {
		if _, err := app.Exec(ctx, "DEALLOCATE ALL"); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 4 {
		if ok, err := q.GroupExists(ctx, "scoped"); err != nil || !ok {
			t.Fatalf("after DEALLOCATE ALL, call %d: GroupExists = %v, %v", i, ok, err)
		}
	}
	// A schema that was never migrated is reported as a missing table.
	bad := db.New(store.NewScoped(app, "nothing_here"))
	if _, err := bad.GroupExists(ctx, "scoped"); store.Code(err) != store.CodeUndefinedTable {
		t.Fatalf("unmigrated schema: %v, want SQLSTATE %s", err, store.CodeUndefinedTable)
	}
}
