package batontest_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/baton-scheduler/baton/batontest"
	"github.com/baton-scheduler/baton/internal/store"
)

// TestSnapshotDetectsEveryChange is the proof behind every "nothing stored
// changed" check (docs/malformed-inputs.md, the submit and CLI fuzz targets,
// migrate): for every table of baton's schema — listed here from
// information_schema, independently of TakeSnapshot, so a table a migration adds
// is covered without editing this test — an inserted row, an update of each
// column and a deleted row each make the snapshot differ; so do a table or a
// column added, a schema created, and a row in a schema the test names. Taking
// it twice without a change gives equal snapshots.
func TestSnapshotDetectsEveryChange(t *testing.T) {
	t.Parallel()
	pool, _ := srv.NewPool(t)
	ctx := context.Background()
	batontest.NewTask(t, pool, &batontest.TaskOpts{State: batontest.Ptr("running")})
	batontest.NewTask(t, pool, nil)

	rows, err := pool.Query(ctx, `SELECT table_name FROM information_schema.tables
		WHERE table_schema = $1 AND table_type = 'BASE TABLE' ORDER BY 1`, store.SchemaDefault)
	if err != nil {
		t.Fatal(err)
	}
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	for _, must := range []string{"goose_db_version", "tasks", "worker_sessions", "worker_groups"} {
		if !slices.Contains(tables, must) {
			t.Fatalf("schema %s lacks table %s; tables: %v", store.SchemaDefault, must, tables)
		}
	}
	before := batontest.TakeSnapshot(t, pool)
	var want []string
	for _, tbl := range tables {
		want = append(want, store.SchemaDefault+"."+tbl)
	}
	if got := before.Tables(); !slices.Equal(got, want) {
		t.Fatalf("snapshot covers %v, the schema has %v", got, want)
	}
	if diff := before.Diff(batontest.TakeSnapshot(t, pool)); diff != "" {
		t.Fatalf("two snapshots without a change differ: %s", diff)
	}

	// Sequential: each table's changes drop constraints in a rolled-back
	// transaction, which locks the tables that reference it.
	for _, tbl := range tables {
		t.Run(tbl, func(t *testing.T) {
			for _, op := range []string{"insert", "update", "delete", "add_column"} {
				t.Run(op, func(t *testing.T) { changeDetected(t, pool, tbl, op) })
			}
		})
	}

	t.Run("create_table", func(t *testing.T) {
		inTx(t, pool, func(tx pgx.Tx) {
			before := batontest.TakeSnapshot(t, tx)
			exec(t, tx, "CREATE TABLE batontest_new (id int)")
			requireDiff(t, before, batontest.TakeSnapshot(t, tx), "batontest_new")
		})
	})
	t.Run("create_schema", func(t *testing.T) {
		inTx(t, pool, func(tx pgx.Tx) {
			before := batontest.TakeSnapshot(t, tx, "batontest_other")
			exec(t, tx, "CREATE SCHEMA batontest_other")
			requireDiff(t, before, batontest.TakeSnapshot(t, tx, "batontest_other"), "schema batontest_other")
		})
	})
	t.Run("named_schema", func(t *testing.T) {
		inTx(t, pool, func(tx pgx.Tx) {
			exec(t, tx, "CREATE TABLE public.batontest_app (v text)")
			before := batontest.TakeSnapshot(t, tx, "public")
			exec(t, tx, "INSERT INTO public.batontest_app VALUES ('x')")
			requireDiff(t, before, batontest.TakeSnapshot(t, tx, "public"), "public.batontest_app")
		})
	})
	t.Run("configured_schema", func(t *testing.T) {
		// A pool whose baton schema is another (baton_schema=jobs): the snapshot
		// follows the connection's search_path.
		inTx(t, pool, func(tx pgx.Tx) {
			exec(t, tx, "CREATE SCHEMA jobs")
			exec(t, tx, "CREATE TABLE jobs.tasks (v text)")
			exec(t, tx, "SET LOCAL search_path = jobs")
			before := batontest.TakeSnapshot(t, tx)
			exec(t, tx, "INSERT INTO jobs.tasks VALUES ('x')")
			requireDiff(t, before, batontest.TakeSnapshot(t, tx), "jobs.tasks")
		})
	})
}

// changeDetected applies one kind of change to tbl inside a transaction that is
// rolled back and requires the snapshot to see it. To change any table without
// knowing its rules, the transaction drops the table's constraints and NOT NULLs
// and turns off triggers (foreign keys are triggers); the row it changes is one
// it inserts with default values.
func changeDetected(t *testing.T, pool *pgxpool.Pool, tbl, op string) {
	ctx := context.Background()
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck
	ident := pgx.Identifier{store.SchemaDefault, tbl}.Sanitize()
	exec(t, tx, "SET LOCAL session_replication_role = replica")
	for _, q := range strings.Split(strings.TrimSpace(`
		SELECT format('ALTER TABLE %s DROP CONSTRAINT %I CASCADE', conrelid::regclass, conname)
		  FROM pg_constraint WHERE conrelid = $1::regclass AND contype IN ('p', 'u', 'c', 'x')
		;SELECT format('DROP INDEX %s', indexrelid::regclass)
		  FROM pg_index WHERE indrelid = $1::regclass AND indisunique
		   AND NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conindid = indexrelid)
		;SELECT format('ALTER TABLE %s ALTER COLUMN %I DROP NOT NULL', attrelid::regclass, attname)
		  FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped
		   AND attnotnull AND attidentity = ''`), ";") {
		rows, err := tx.Query(ctx, q, ident)
		if err != nil {
			t.Fatal(err)
		}
		stmts, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range stmts {
			exec(t, tx, s)
		}
	}
	key := store.SchemaDefault + "." + tbl
	insert := "INSERT INTO " + ident + " DEFAULT VALUES"
	switch op {
	case "insert":
		before := batontest.TakeSnapshot(t, tx)
		exec(t, tx, insert)
		requireDiff(t, before, batontest.TakeSnapshot(t, tx), key)
	case "delete":
		exec(t, tx, insert)
		before := batontest.TakeSnapshot(t, tx)
		exec(t, tx, "DELETE FROM "+ident+" WHERE ctid IN (SELECT ctid FROM "+ident+" LIMIT 1)")
		requireDiff(t, before, batontest.TakeSnapshot(t, tx), key)
	case "add_column":
		exec(t, tx, "TRUNCATE "+ident+" CASCADE")
		before := batontest.TakeSnapshot(t, tx)
		exec(t, tx, "ALTER TABLE "+ident+" ADD COLUMN batontest_extra int")
		requireDiff(t, before, batontest.TakeSnapshot(t, tx), key)
	case "update":
		exec(t, tx, insert)
		// One update per column whose type we know how to change: the digest
		// must cover every column, not just some.
		rows, err := tx.Query(ctx, `SELECT a.attname, ty.typcategory, format_type(a.atttypid, NULL), a.atttypid::bigint
			FROM pg_attribute a JOIN pg_type ty ON ty.oid = a.atttypid
			WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped
			  AND a.attidentity = '' AND a.attgenerated = '' ORDER BY a.attnum`, ident)
		if err != nil {
			t.Fatal(err)
		}
		type col struct {
			name, cat, typ string
			oid            int64
		}
		cols, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (col, error) {
			var c col
			return c, r.Scan(&c.name, &c.cat, &c.typ, &c.oid)
		})
		if err != nil {
			t.Fatal(err)
		}
		changed := 0
		for _, c := range cols {
			var expr string
			id := pgx.Identifier{c.name}.Sanitize()
			switch {
			case c.cat == "N":
				expr = "coalesce(" + id + ", 0) + 1"
			case c.cat == "S":
				expr = "coalesce(" + id + ", '') || 'x'"
			case c.cat == "B":
				expr = "NOT coalesce(" + id + ", false)"
			case c.cat == "D":
				expr = "coalesce(" + id + ", now()) + interval '1 day'"
			case c.cat == "T":
				expr = "coalesce(" + id + ", interval '0') + interval '1 second'"
			case c.typ == "jsonb":
				expr = `coalesce(` + id + `, '{}') || '{"batontest": 1}'`
			case c.cat == "E":
				expr = fmt.Sprintf("(SELECT e.enumlabel::%s FROM pg_enum e WHERE e.enumtypid = %d AND e.enumlabel <> coalesce(%s::text, '') LIMIT 1)",
					c.typ, c.oid, id)
			default:
				continue
			}
			before := batontest.TakeSnapshot(t, tx)
			exec(t, tx, "UPDATE "+ident+" SET "+id+" = "+expr)
			requireDiff(t, before, batontest.TakeSnapshot(t, tx), key)
			changed++
		}
		if changed == 0 {
			t.Fatalf("no column of %s has a type this test can change: teach it one", ident)
		}
	}
}

func requireDiff(t *testing.T, before, after batontest.Snapshot, key string) {
	t.Helper()
	diff := before.Diff(after)
	if !strings.Contains(diff, key+":") {
		t.Fatalf("the snapshot missed a change of %s (diff: %q)", key, diff)
	}
}

func inTx(t *testing.T, pool interface {
	Begin(context.Context) (pgx.Tx, error)
}, f func(pgx.Tx)) {
	t.Helper()
	ctx := context.Background()
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck
	f(tx)
}

func exec(t *testing.T, tx pgx.Tx, sql string) {
	t.Helper()
	if _, err := tx.Exec(context.Background(), sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}
