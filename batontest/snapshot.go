package batontest

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/baton-scheduler/baton/internal/store"
)

// Snapshot is the stored state of baton's schema: whether each snapshotted schema
// exists, and for every table in it (enumerated from the catalog, so a table a
// migration adds is covered without a change here; goose's version table
// included) its columns, row count and a digest of all its rows. Two snapshots
// are equal exactly when no schema or table was created or dropped and no row was
// inserted, updated or deleted in between, which is how tests prove that rejected
// input stored nothing. Sequences are left out: a refused INSERT may consume an
// identity value, which stores nothing.
type Snapshot map[string]string

// Querier is what TakeSnapshot reads through: a *pgxpool.Pool, a *pgx.Conn or a
// pgx.Tx.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// TakeSnapshot reads every table of the schemas that hold baton's data as seen
// by q: store.SchemaDefault, every schema on q's search_path (a pool from
// store.Open has exactly baton's configured schema there) and the schemas named.
// Schema public is read only when named or on the search_path.
func TakeSnapshot(t testing.TB, q Querier, schemas ...string) Snapshot {
	t.Helper()
	ctx := context.Background()
	var searchPath string
	if err := q.QueryRow(ctx, "SELECT current_setting('search_path')").Scan(&searchPath); err != nil {
		t.Fatalf("batontest: read search_path: %v", err)
	}
	names := map[string]bool{store.SchemaDefault: true}
	for _, s := range append(parseSearchPath(searchPath), schemas...) {
		names[s] = true
	}
	list := make([]string, 0, len(names))
	for s := range names {
		list = append(list, s)
	}
	sort.Strings(list)

	s := Snapshot{}
	rows, err := q.Query(ctx, "SELECT nspname FROM pg_namespace WHERE nspname = ANY($1)", list)
	if err != nil {
		t.Fatalf("batontest: list schemas: %v", err)
	}
	present, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatalf("batontest: list schemas: %v", err)
	}
	for _, n := range list {
		s["schema "+n] = "absent"
	}
	for _, n := range present {
		s["schema "+n] = "present"
	}

	// Ordinary, partitioned and foreign tables and materialized views: every
	// relation that holds rows. Columns with their types, so that a table altered
	// in between differs even while empty.
	rows, err = q.Query(ctx, `SELECT n.nspname, c.relname,
			(SELECT md5(string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod), ', ' ORDER BY a.attnum))
			   FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped)
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = ANY($1) AND c.relkind IN ('r', 'p', 'f', 'm')
		ORDER BY 1, 2`, list)
	if err != nil {
		t.Fatalf("batontest: list tables: %v", err)
	}
	type table struct{ schema, name, columns string }
	tables, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (table, error) {
		var tb table
		var cols *string
		err := r.Scan(&tb.schema, &tb.name, &cols)
		if cols != nil {
			tb.columns = *cols
		}
		return tb, err
	})
	if err != nil {
		t.Fatalf("batontest: list tables: %v", err)
	}
	for _, tb := range tables {
		var n int64
		var digest string
		ident := pgx.Identifier{tb.schema, tb.name}.Sanitize()
		qs := fmt.Sprintf("SELECT count(*), md5(coalesce(string_agg(r::text, E'\\n' ORDER BY r::text), '')) FROM %s r", ident)
		if err := q.QueryRow(ctx, qs).Scan(&n, &digest); err != nil {
			t.Fatalf("batontest: snapshot %s: %v", ident, err)
		}
		s[tb.schema+"."+tb.name] = fmt.Sprintf("%d rows, md5 %s, columns md5 %s", n, digest, tb.columns)
	}
	return s
}

// Tables names the tables the snapshot covers ("schema.table"), sorted.
func (s Snapshot) Tables() []string {
	var out []string
	for k := range s {
		if !strings.HasPrefix(k, "schema ") {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}

// parseSearchPath splits a search_path setting into schema names ($user aside).
func parseSearchPath(sp string) []string {
	var out []string
	for _, p := range strings.Split(sp, ",") {
		p = strings.TrimSpace(p)
		if strings.HasPrefix(p, `"`) && strings.HasSuffix(p, `"`) && len(p) >= 2 {
			p = strings.ReplaceAll(p[1:len(p)-1], `""`, `"`)
		}
		if p == "" || p == "$user" {
			continue
		}
		out = append(out, p)
	}
	return out
}

// Changed lists the keys ("schema.table", or "schema name" for a schema created
// or dropped) whose state differs between s and other, sorted.
func (s Snapshot) Changed(other Snapshot) []string {
	var keys []string
	for k, v := range s {
		if w, ok := other[k]; !ok || w != v {
			keys = append(keys, k)
		}
	}
	for k := range other {
		if _, ok := s[k]; !ok {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	return keys
}

// Diff names the tables whose rows differ between s and other ("" if none).
func (s Snapshot) Diff(other Snapshot) string {
	var diffs []string
	for tbl, v := range s {
		if other[tbl] != v {
			w, ok := other[tbl]
			if !ok {
				w = "(absent)"
			}
			diffs = append(diffs, fmt.Sprintf("%s: %s -> %s", tbl, v, w))
		}
	}
	for tbl, v := range other {
		if _, ok := s[tbl]; !ok {
			diffs = append(diffs, fmt.Sprintf("%s: (absent) -> %s", tbl, v))
		}
	}
	sort.Strings(diffs)
	return strings.Join(diffs, "; ")
}
