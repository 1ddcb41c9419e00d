package batontest

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Snapshot is the stored state of a database: for every table of the public
// schema, its row count and a digest of all its rows. Two snapshots are equal
// exactly when no row was inserted, updated or deleted in between (sequences
// aside), which is how tests prove that rejected input stored nothing.
type Snapshot map[string]string

// TakeSnapshot reads every table of the database behind pool.
func TakeSnapshot(t testing.TB, pool *pgxpool.Pool) Snapshot {
	t.Helper()
	ctx := context.Background()
	rows, err := pool.Query(ctx, "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename")
	if err != nil {
		t.Fatalf("batontest: list tables: %v", err)
	}
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatalf("batontest: list tables: %v", err)
	}
	s := Snapshot{}
	for _, tbl := range tables {
		var n int64
		var digest string
		q := fmt.Sprintf("SELECT count(*), md5(coalesce(string_agg(r::text, E'\\n' ORDER BY r::text), '')) FROM %s r",
			pgx.Identifier{tbl}.Sanitize())
		if err := pool.QueryRow(ctx, q).Scan(&n, &digest); err != nil {
			t.Fatalf("batontest: snapshot %s: %v", tbl, err)
		}
		s[tbl] = fmt.Sprintf("%d rows, md5 %s", n, digest)
	}
	return s
}

// Diff names the tables whose rows differ between s and other ("" if none).
func (s Snapshot) Diff(other Snapshot) string {
	var diffs []string
	for tbl, v := range s {
		if other[tbl] != v {
			diffs = append(diffs, fmt.Sprintf("%s: %s -> %s", tbl, v, other[tbl]))
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
