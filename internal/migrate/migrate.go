// Package migrate applies baton's embedded goose migrations with a Postgres
// session lock, so concurrent deploys are safe.
//
// Everything lives in one Postgres schema (store.SchemaDefault, "baton", unless
// the DSN's baton_schema parameter names another): the migrations are
// unqualified and run with search_path set to that schema, and goose's version table is
// <schema>.goose_db_version, so baton shares a database with an application that
// has its own goose_db_version and its own tables. The stock goose CLI does the
// same with
//
//	goose -dir migrations -table baton.goose_db_version postgres "$DSN&search_path=baton" up
//
// after `CREATE SCHEMA IF NOT EXISTS baton`.
package migrate

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"hash/fnv"
	"regexp"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"

	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/store"
	"github.com/baton-scheduler/baton/migrations"
)

// Migrator wraps a goose Provider over the embedded migrations.
type Migrator struct {
	pool     *pgxpool.Pool
	sqlDB    *sql.DB
	provider *goose.Provider
	schema   string
}

// Errors callers match with errors.Is.
var (
	// ErrDatabaseNewer: the database holds migrations this binary does not know.
	ErrDatabaseNewer = errors.New("database schema is newer than this binary")
	// ErrDatabaseOlder: the schema is missing or behind this binary (not migrated).
	ErrDatabaseOlder = errors.New("database schema is older than this binary")
	// ErrLegacyPublic: baton's schema is empty but an install from before baton had
	// its own schema is in public.
	ErrLegacyPublic = errors.New("baton's tables are in schema public")
)

// olderError is ErrDatabaseOlder with a message that says it all.
type olderError struct{ msg string }

func (e *olderError) Error() string        { return e.msg }
func (e *olderError) Is(target error) bool { return target == ErrDatabaseOlder }

// VersionTable is goose's version table name inside baton's schema.
const VersionTable = "goose_db_version"

// schemaRE: a schema name goose can use unquoted in its own SQL.
var schemaRE = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)

// ValidSchema reports whether name can be baton's schema.
func ValidSchema(name string) error {
	if !schemaRE.MatchString(name) {
		return fmt.Errorf("schema %q must be 1-63 of lowercase letters, digits and _, not starting with a digit", name)
	}
	return nil
}

// lockID is the session lock of schema's migrations: distinct from goose's
// default, so an application migrating its own schema with goose never waits on
// baton's migrations, nor baton in one schema on baton in another.
func lockID(schema string) int64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte("baton migrations " + schema))
	return int64(h.Sum64() &^ (1 << 63))
}

// New connects to dsn and prepares the provider. It checks connectivity first so a
// wrong DSN is reported as such, not as a goose error.
func New(ctx context.Context, dsn string) (*Migrator, error) {
	pool, err := store.Open(ctx, dsn, 2)
	if err != nil {
		return nil, err
	}
	schema := store.Schema(pool.Config())
	if err := ValidSchema(schema); err != nil {
		pool.Close()
		return nil, fmt.Errorf("database URL %s: %w", store.SchemaParam, err)
	}
	sqlDB := stdlib.OpenDBFromPool(pool)
	locker, err := lock.NewPostgresSessionLocker(
		// Wait up to 5 minutes for a concurrent deploy to finish its migrations.
		lock.WithLockTimeout(1, 300),
		lock.WithLockID(lockID(schema)),
	)
	if err != nil {
		_ = sqlDB.Close()
		pool.Close()
		return nil, fmt.Errorf("session locker: %w", err)
	}
	provider, err := goose.NewProvider(goose.DialectPostgres, sqlDB, migrations.FS,
		goose.WithSessionLocker(locker),
		goose.WithDisableGlobalRegistry(true),
		goose.WithTableName(schema+"."+VersionTable),
	)
	if err != nil {
		_ = sqlDB.Close()
		pool.Close()
		return nil, fmt.Errorf("migration provider: %w", err)
	}
	return &Migrator{pool: pool, sqlDB: sqlDB, provider: provider, schema: schema}, nil
}

// Schema is the Postgres schema this migrator manages.
func (m *Migrator) Schema() string { return m.schema }

// ensureSchema creates baton's schema if it is missing. Identifiers cannot be
// query parameters, so this is the one statement built in Go (the name is
// validated by ValidSchema and quoted).
func (m *Migrator) ensureSchema(ctx context.Context) error {
	_, err := m.pool.Exec(ctx, "CREATE SCHEMA IF NOT EXISTS "+pgx.Identifier{m.schema}.Sanitize())
	// Two deploys racing on IF NOT EXISTS: the loser sees a unique violation.
	if err != nil && store.Code(err) != store.CodeUniqueViolation {
		return fmt.Errorf("create schema %q: %w", m.schema, err)
	}
	return nil
}

// checkLegacy refuses to build an empty schema beside an install from before
// baton had its own schema (tables in public), so that install is not silently
// orphaned: the operator keeps it (baton_schema=public) or moves it (MoveFromPublic).
func (m *Migrator) checkLegacy(ctx context.Context) error {
	if m.schema == "public" {
		return nil
	}
	v, err := m.Version(ctx)
	if err != nil || v > 0 {
		return err
	}
	legacy, err := db.New(m.pool).SchemaLegacyPublicInstall(ctx)
	if err != nil {
		return fmt.Errorf("look for an install in schema public: %w", err)
	}
	if legacy {
		return fmt.Errorf("%w and schema %q is empty (installed before baton used its own schema): "+
			"keep using public with baton_schema=public in the database URL (Schema: \"public\" in Go), "+
			"or move the tables with `baton migrate move-from-public` (docs/architecture.md, \"Schema\")",
			ErrLegacyPublic, m.schema)
	}
	return nil
}

// Close releases the connections.
func (m *Migrator) Close() error {
	err := m.sqlDB.Close()
	m.pool.Close()
	return err
}

// Latest is the newest migration version embedded in the binary.
func (m *Migrator) Latest() int64 {
	src := m.provider.ListSources()
	if len(src) == 0 {
		return 0
	}
	return src[len(src)-1].Version
}

// Count is how many migrations are embedded (versions may have gaps: numbers
// are reserved per branch).
func (m *Migrator) Count() int { return len(m.provider.ListSources()) }

// Version is the version the database is at (0 when never migrated). It only
// reads: goose would create its version table to answer, and a binary that
// refuses an unmigrated database must leave it as it found it.
func (m *Migrator) Version(ctx context.Context) (int64, error) {
	// Without its version table goose would try to create it (in a schema that
	// may not exist): a missing table is version 0.
	exists, err := db.New(m.pool).SchemaVersionTableExists(ctx, m.schema+"."+VersionTable)
	if err != nil {
		return 0, fmt.Errorf("read schema version: %w", err)
	}
	if !exists {
		return 0, nil
	}
	v, err := m.provider.GetDBVersion(ctx)
	if err != nil {
		return 0, fmt.Errorf("read schema version: %w", err)
	}
	return v, nil
}

func (m *Migrator) checkNotNewer(ctx context.Context) error {
	v, err := m.Version(ctx)
	if err != nil {
		return err
	}
	if v > m.Latest() {
		return fmt.Errorf("%w: schema %q is at version %d, binary knows up to %d; upgrade baton", ErrDatabaseNewer, m.schema, v, m.Latest())
	}
	return nil
}

// Up creates baton's schema if needed and applies all pending migrations; it
// returns how many ran.
func (m *Migrator) Up(ctx context.Context) (int, error) {
	if err := m.checkNotNewer(ctx); err != nil {
		return 0, err
	}
	if err := m.checkLegacy(ctx); err != nil {
		return 0, err
	}
	if err := m.ensureSchema(ctx); err != nil {
		return 0, err
	}
	res, err := m.provider.Up(ctx)
	if err != nil {
		return len(res), fmt.Errorf("migrate up: %w", err)
	}
	return len(res), nil
}

// Down rolls back the latest migration.
func (m *Migrator) Down(ctx context.Context) (int64, error) {
	if err := m.checkNotNewer(ctx); err != nil {
		return 0, err
	}
	res, err := m.provider.Down(ctx)
	if err != nil {
		if errors.Is(err, goose.ErrNoNextVersion) {
			return 0, errors.New("migrate down: database is already at version 0")
		}
		return 0, fmt.Errorf("migrate down: %w", err)
	}
	return res.Source.Version, nil
}

// DownTo rolls back to version (0 = everything).
func (m *Migrator) DownTo(ctx context.Context, version int64) (int, error) {
	if err := m.checkNotNewer(ctx); err != nil {
		return 0, err
	}
	res, err := m.provider.DownTo(ctx, version)
	if err != nil {
		return len(res), fmt.Errorf("migrate down to %d: %w", version, err)
	}
	return len(res), nil
}

// Status lists every embedded migration and whether it is applied.
type Status struct {
	Version   int64
	Name      string
	Applied   bool
	AppliedAt string
}

// Status reports each embedded migration's state.
func (m *Migrator) Status(ctx context.Context) ([]Status, error) {
	st, err := m.provider.Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("migration status: %w", err)
	}
	out := make([]Status, 0, len(st))
	for _, s := range st {
		row := Status{Version: s.Source.Version, Name: s.Source.Path, Applied: s.State == goose.StateApplied}
		if row.Applied {
			row.AppliedAt = s.AppliedAt.UTC().Format("2006-01-02 15:04:05Z")
		}
		out = append(out, row)
	}
	return out, nil
}

// EnsureLatest migrates up if needed; binaries call it at start when asked to.
func EnsureLatest(ctx context.Context, dsn string) error {
	m, err := New(ctx, dsn)
	if err != nil {
		return err
	}
	defer m.Close()
	_, err = m.Up(ctx)
	return err
}

// CheckSchema returns a clear error if the database is not at the binary's version.
func CheckSchema(ctx context.Context, dsn string) error {
	m, err := New(ctx, dsn)
	if err != nil {
		return err
	}
	defer m.Close()
	v, err := m.Version(ctx)
	if err != nil {
		return err
	}
	switch {
	case v > m.Latest():
		return fmt.Errorf("%w: schema %q is at version %d, binary knows up to %d; upgrade baton", ErrDatabaseNewer, m.schema, v, m.Latest())
	case v == 0:
		if err := m.checkLegacy(ctx); err != nil {
			return err
		}
		return &olderError{fmt.Sprintf("baton's schema %q is not migrated (version 0, this build needs %d): "+
			"run `baton migrate up` or call baton.Migrate", m.schema, m.Latest())}
	case v < m.Latest():
		return &olderError{fmt.Sprintf("baton's schema %q is at version %d, this build needs %d: run `baton migrate up` or call baton.Migrate",
			m.schema, v, m.Latest())}
	}
	return nil
}

// Relations baton's migrations create, read from the embedded SQL: what
// MoveFromPublic moves (indexes, constraints and identity sequences follow
// their tables).
var (
	createTableRE = regexp.MustCompile(`(?im)^\s*CREATE\s+(?:UNLOGGED\s+)?TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?([a-z_][a-z0-9_]*)`)
	createViewRE  = regexp.MustCompile(`(?im)^\s*CREATE\s+(?:OR\s+REPLACE\s+)?(?:MATERIALIZED\s+)?VIEW\s+([a-z_][a-z0-9_]*)`)
	renameRE      = regexp.MustCompile(`(?im)^\s*ALTER\s+TABLE\s+[a-z_][a-z0-9_]*\s+RENAME\s+TO\s+([a-z_][a-z0-9_]*)`)
	// Functions (trigger functions, the workflow functions): moved too, so a
	// public install kept with baton_schema=public and upgraded leaves nothing of
	// baton's behind.
	createFunctionRE = regexp.MustCompile(`(?im)^\s*CREATE\s+(?:OR\s+REPLACE\s+)?FUNCTION\s+([a-z_][a-z0-9_]*)\(`)
)

func migrationRelations() (tables, views, functions []string, err error) {
	entries, err := migrations.FS.ReadDir(".")
	if err != nil {
		return nil, nil, nil, err
	}
	seen := map[string]bool{}
	for _, e := range entries {
		b, err := migrations.FS.ReadFile(e.Name())
		if err != nil {
			return nil, nil, nil, err
		}
		up, _, _ := strings.Cut(string(b), "-- +goose Down")
		for _, m := range append(createTableRE.FindAllStringSubmatch(up, -1), renameRE.FindAllStringSubmatch(up, -1)...) {
			if !seen[m[1]] {
				seen[m[1]] = true
				tables = append(tables, m[1])
			}
		}
		for _, m := range createViewRE.FindAllStringSubmatch(up, -1) {
			if !seen[m[1]] {
				seen[m[1]] = true
				views = append(views, m[1])
			}
		}
		for _, m := range createFunctionRE.FindAllStringSubmatch(up, -1) {
			if !seen["f:"+m[1]] {
				seen["f:"+m[1]] = true
				functions = append(functions, m[1])
			}
		}
	}
	return tables, views, functions, nil
}

// MoveFromPublic moves an install from before baton had its own schema (schema v1
// in public) into this migrator's schema, in one transaction: tables (with their
// indexes, constraints, triggers and identity sequences), views and functions are
// moved with ALTER ... SET SCHEMA, and baton's rows of public.goose_db_version (versions 0 and 1) are
// copied into <schema>.goose_db_version. public.goose_db_version itself is left
// alone, since an application may share it; drop it if it was baton's only.
// Stop baton's workers and masters first. It returns how many relations moved.
func (m *Migrator) MoveFromPublic(ctx context.Context) (int, error) {
	if m.schema == "public" {
		return 0, errors.New("move from public: the target schema is public; name another with baton_schema")
	}
	if v, err := m.Version(ctx); err != nil {
		return 0, err
	} else if v > 0 {
		return 0, fmt.Errorf("move from public: schema %q is already at version %d", m.schema, v)
	}
	legacy, err := db.New(m.pool).SchemaLegacyPublicInstall(ctx)
	if err != nil {
		return 0, fmt.Errorf("move from public: %w", err)
	}
	if !legacy {
		return 0, errors.New("move from public: no baton install found in schema public")
	}
	tables, views, functions, err := migrationRelations()
	if err != nil {
		return 0, fmt.Errorf("move from public: read migrations: %w", err)
	}
	var versions []int64
	for _, src := range m.provider.ListSources() {
		versions = append(versions, src.Version)
	}
	target := pgx.Identifier{m.schema}.Sanitize()
	moved := 0
	// Administrative DDL on identifiers (which cannot be query parameters): built
	// here from the migrations' own names and the validated schema name.
	err = pgx.BeginFunc(ctx, m.pool, func(tx pgx.Tx) error {
		run := func(stmt string, args ...any) error {
			if _, err := tx.Exec(ctx, stmt, args...); err != nil {
				return fmt.Errorf("move from public: %s: %w", stmt, err)
			}
			return nil
		}
		if err := run("CREATE SCHEMA IF NOT EXISTS " + target); err != nil {
			return err
		}
		for _, name := range append(tables, views...) {
			// A table of one version may be a view of another (task_attempts):
			// move each by what it is now.
			var kind string
			if err := tx.QueryRow(ctx, "SELECT coalesce((SELECT CASE relkind WHEN 'v' THEN 'VIEW' ELSE 'TABLE' END FROM pg_class WHERE oid = to_regclass($1)), '')",
				"public."+name).Scan(&kind); err != nil {
				return fmt.Errorf("move from public: look up %s: %w", name, err)
			}
			if kind == "" {
				continue
			}
			if err := run("ALTER " + kind + " public." + pgx.Identifier{name}.Sanitize() + " SET SCHEMA " + target); err != nil {
				return err
			}
			moved++
		}
		for _, name := range functions {
			// Every overload in public by that name, with its identity arguments.
			rows, err := tx.Query(ctx, "SELECT pg_get_function_identity_arguments(p.oid) FROM pg_proc p "+
				"WHERE p.pronamespace = 'public'::regnamespace AND p.proname = $1", name)
			if err != nil {
				return fmt.Errorf("move from public: look up %s: %w", name, err)
			}
			args, err := pgx.CollectRows(rows, pgx.RowTo[string])
			if err != nil {
				return fmt.Errorf("move from public: look up %s: %w", name, err)
			}
			for _, a := range args {
				if err := run("ALTER FUNCTION public." + pgx.Identifier{name}.Sanitize() + "(" + a + ") SET SCHEMA " + target); err != nil {
					return err
				}
				// A function pinned to its schema's search_path (schema v11's
				// workflow functions) follows it to the new schema.
				var pinned bool
				if err := tx.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_proc p, unnest(p.proconfig) c "+
					"WHERE p.pronamespace = $1::regnamespace AND p.proname = $2 AND pg_get_function_identity_arguments(p.oid) = $3 "+
					"AND c LIKE 'search_path=%')", m.schema, name, a).Scan(&pinned); err != nil {
					return fmt.Errorf("move from public: look up %s: %w", name, err)
				}
				if pinned {
					if err := run("ALTER FUNCTION " + target + "." + pgx.Identifier{name}.Sanitize() + "(" + a + ") SET search_path = " + target); err != nil {
						return err
					}
				}
				moved++
			}
		}
		// Only baton's own versions: public.goose_db_version may be shared with
		// the application (the very collision baton's schema ends).
		if err := run("CREATE TABLE " + target + "." + VersionTable + " (LIKE public." + VersionTable + " INCLUDING ALL)"); err != nil {
			return err
		}
		return run("INSERT INTO "+target+"."+VersionTable+" (version_id, is_applied, tstamp) "+
			"SELECT version_id, is_applied, tstamp FROM public."+VersionTable+" WHERE version_id = 0 OR version_id = ANY($1) ORDER BY id", versions)
	})
	if err != nil {
		return 0, err
	}
	return moved, nil
}
