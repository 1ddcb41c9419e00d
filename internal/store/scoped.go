package store

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/baton-scheduler/baton/db"
)

// Scoped runs sqlc statements (it is a db.DBTX) on an application's pool, whose
// connections do not have baton's schema on their search_path, in one round trip
// each, as on baton's own pool. Each statement is sent as a pipeline of two,
// ended by one Sync, so Postgres runs them in one implicit transaction: set
// search_path to the schema for that transaction only (set_config, local), then
// the statement. The connection is left as it was.
//
// The statement is a named prepared statement on each connection, prepared the
// first time inside a transaction with the same local search_path, so its tables
// resolve in the schema (preparing it under the application's search_path would
// fail, or find the application's own tables); on a pool whose connections do
// not prepare (QueryExecModeSimpleProtocol or QueryExecModeExec) its text is
// sent instead. Each statement is its own transaction: use Scoped only for
// work that is one statement.
type Scoped struct {
	pool   *pgxpool.Pool
	schema string

	mu sync.Mutex
	// prepared: per connection, the statement names prepared on it by this
	// Scoped. Entries of closed connections are dropped as the map grows.
	prepared map[*pgx.Conn]map[string]bool
}

// NewScoped returns a Scoped on pool for schema (a name ValidSchema accepts).
func NewScoped(pool *pgxpool.Pool, schema string) *Scoped {
	return &Scoped{pool: pool, schema: schema, prepared: map[*pgx.Conn]map[string]bool{}}
}

// Exec implements db.DBTX.
func (s *Scoped) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	var tag pgconn.CommandTag
	err := s.run(ctx, sql, args, func(br pgx.BatchResults) error {
		var err error
		tag, err = br.Exec()
		return err
	})
	return tag, err
}

// QueryRow implements db.DBTX.
func (s *Scoped) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	return scopedRow{s: s, ctx: ctx, sql: sql, args: args}
}

type scopedRow struct {
	s    *Scoped
	ctx  context.Context
	sql  string
	args []any
}

func (r scopedRow) Scan(dest ...any) error {
	return r.s.run(r.ctx, r.sql, r.args, func(br pgx.BatchResults) error { return br.QueryRow().Scan(dest...) })
}

// Query implements db.DBTX. The rows are read before it returns (sqlc's :many
// statements read them all anyway), so the connection goes back to the pool at
// once.
func (s *Scoped) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	var rows *bufferedRows
	err := s.run(ctx, sql, args, func(br pgx.BatchResults) error {
		rs, err := br.Query()
		if err != nil {
			return err
		}
		defer rs.Close()
		rows = &bufferedRows{fields: rs.FieldDescriptions(), m: rs.TypeMap(), i: -1}
		for rs.Next() {
			raw := rs.RawValues()
			row := make([][]byte, len(raw))
			for i, v := range raw {
				if v != nil {
					row[i] = append([]byte{}, v...)
				}
			}
			rows.rows = append(rows.rows, row)
		}
		rs.Close()
		rows.tag = rs.CommandTag()
		return rs.Err()
	})
	if err != nil {
		return nil, err
	}
	return rows, nil
}

// run sends set_config and the statement as one pipeline on a pooled
// connection, prepares the statement first if the connection has not got it,
// and hands the batch results to read (after set_config's).
func (s *Scoped) run(ctx context.Context, sql string, args []any, read func(pgx.BatchResults) error) error {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	// Pools that never prepare (simple protocol, or exec mode, as behind a
	// transaction-mode pooler) send the statement's text: Postgres resolves its
	// tables when it reaches it, after set_config ran.
	raw := false
	switch conn.Conn().Config().DefaultQueryExecMode {
	case pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeExec:
		raw = true
	}
	for try := 0; ; try++ {
		stmt := sql
		if !raw {
			if stmt, err = s.prepare(ctx, conn.Conn(), sql); err != nil {
				return err
			}
		}
		b := &pgx.Batch{}
		b.Queue(db.SchemaSetLocalSearchPath, s.schema)
		b.Queue(stmt, args...)
		br := conn.SendBatch(ctx, b)
		_, err = br.Exec()
		if err == nil {
			err = read(br)
		}
		if cerr := br.Close(); err == nil {
			err = cerr
		}
		// The prepared statement was dropped behind pgx's back (DEALLOCATE ALL,
		// DISCARD ALL by a pooler): prepare it again, once.
		if !raw && Code(err) == codeInvalidStatementName && try == 0 {
			s.forget(conn.Conn())
			continue
		}
		return err
	}
}

const codeInvalidStatementName = "26000"

// prepare returns the name of sql's prepared statement on conn, preparing it in
// a transaction whose search_path is the schema if conn has not got it.
func (s *Scoped) prepare(ctx context.Context, conn *pgx.Conn, sql string) (string, error) {
	h := fnv.New64a()
	_, _ = h.Write([]byte(s.schema + "\x00" + sql))
	name := fmt.Sprintf("baton_scoped_%x", h.Sum64())
	s.mu.Lock()
	ok := s.prepared[conn][name]
	s.mu.Unlock()
	if ok {
		return name, nil
	}
	err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, db.SchemaSetLocalSearchPath, s.schema); err != nil {
			return err
		}
		_, err := tx.Prepare(ctx, name, sql)
		return err
	})
	if err != nil {
		return "", fmt.Errorf("prepare statement in schema %s: %w", s.schema, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.prepared) > 2*int(s.pool.Config().MaxConns)+8 {
		for c := range s.prepared {
			if c.IsClosed() {
				delete(s.prepared, c)
			}
		}
	}
	if s.prepared[conn] == nil {
		s.prepared[conn] = map[string]bool{}
	}
	s.prepared[conn][name] = true
	return name, nil
}

// forget drops what conn is known to have prepared, and pgx's record of it.
func (s *Scoped) forget(conn *pgx.Conn) {
	s.mu.Lock()
	names := s.prepared[conn]
	delete(s.prepared, conn)
	s.mu.Unlock()
	for name := range names {
		_ = conn.Deallocate(context.Background(), name)
	}
}

// bufferedRows is pgx.Rows over rows already read.
type bufferedRows struct {
	fields []pgconn.FieldDescription
	m      *pgtype.Map
	rows   [][][]byte
	i      int
	tag    pgconn.CommandTag
	err    error
	closed bool
}

var _ pgx.Rows = (*bufferedRows)(nil)

func (r *bufferedRows) Close()                                       { r.closed = true }
func (r *bufferedRows) Err() error                                   { return r.err }
func (r *bufferedRows) CommandTag() pgconn.CommandTag                { return r.tag }
func (r *bufferedRows) FieldDescriptions() []pgconn.FieldDescription { return r.fields }
func (r *bufferedRows) Conn() *pgx.Conn                              { return nil }
func (r *bufferedRows) RawValues() [][]byte                          { return r.rows[r.i] }
func (r *bufferedRows) TypeMap() *pgtype.Map                         { return r.m }

func (r *bufferedRows) Next() bool {
	if r.closed || r.err != nil || r.i+1 >= len(r.rows) {
		r.closed = true
		return false
	}
	r.i++
	return true
}

func (r *bufferedRows) Scan(dest ...any) error {
	if len(dest) != len(r.fields) {
		r.err = fmt.Errorf("scan: %d destinations for %d columns", len(dest), len(r.fields))
		return r.err
	}
	row := r.rows[r.i]
	for i, d := range dest {
		if d == nil {
			continue
		}
		f := r.fields[i]
		if err := r.m.Scan(f.DataTypeOID, f.Format, row[i], d); err != nil {
			r.err = fmt.Errorf("scan column %s: %w", f.Name, err)
			return r.err
		}
	}
	return nil
}

func (r *bufferedRows) Values() ([]any, error) {
	return nil, errors.New("bufferedRows: Values is not supported")
}
