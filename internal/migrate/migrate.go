// Package migrate applies baton's embedded goose migrations with a Postgres
// session lock, so concurrent deploys are safe.
package migrate

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/database"
	"github.com/pressly/goose/v3/lock"

	"github.com/baton-scheduler/baton/internal/store"
	"github.com/baton-scheduler/baton/migrations"
)

// Migrator wraps a goose Provider over the embedded migrations.
type Migrator struct {
	pool     *pgxpool.Pool
	sqlDB    *sql.DB
	provider *goose.Provider
}

// ErrDatabaseNewer is returned when the database holds migrations this binary does not know.
var ErrDatabaseNewer = errors.New("database schema is newer than this binary")

// New connects to dsn and prepares the provider. It checks connectivity first so a
// wrong DSN is reported as such, not as a goose error.
func New(ctx context.Context, dsn string) (*Migrator, error) {
	pool, err := store.Open(ctx, dsn, 2)
	if err != nil {
		return nil, err
	}
	sqlDB := stdlib.OpenDBFromPool(pool)
	locker, err := lock.NewPostgresSessionLocker(
		// Wait up to 5 minutes for a concurrent deploy to finish its migrations.
		lock.WithLockTimeout(1, 300),
	)
	if err != nil {
		_ = sqlDB.Close()
		pool.Close()
		return nil, fmt.Errorf("session locker: %w", err)
	}
	provider, err := goose.NewProvider(goose.DialectPostgres, sqlDB, migrations.FS,
		goose.WithSessionLocker(locker),
		goose.WithDisableGlobalRegistry(true),
	)
	if err != nil {
		_ = sqlDB.Close()
		pool.Close()
		return nil, fmt.Errorf("migration provider: %w", err)
	}
	return &Migrator{pool: pool, sqlDB: sqlDB, provider: provider}, nil
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

// Version is the version the database is at (0 when never migrated). It only
// reads: goose would create its version table to answer, and a binary that
// refuses an unmigrated database must leave it as it found it.
func (m *Migrator) Version(ctx context.Context) (int64, error) {
	st, err := database.NewStore(database.DialectPostgres, goose.DefaultTablename)
	if err != nil {
		return 0, fmt.Errorf("read schema version: %w", err)
	}
	if ext, ok := st.(database.StoreExtender); ok {
		exists, err := ext.TableExists(ctx, m.sqlDB)
		if err != nil {
			return 0, fmt.Errorf("read schema version: %w", err)
		}
		if !exists {
			return 0, nil
		}
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
		return fmt.Errorf("%w: database is at version %d, binary knows up to %d; upgrade baton", ErrDatabaseNewer, v, m.Latest())
	}
	return nil
}

// Up applies all pending migrations and returns how many ran.
func (m *Migrator) Up(ctx context.Context) (int, error) {
	if err := m.checkNotNewer(ctx); err != nil {
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
		return fmt.Errorf("%w: database is at version %d, binary knows up to %d; upgrade baton", ErrDatabaseNewer, v, m.Latest())
	case v < m.Latest():
		return fmt.Errorf("database schema is at version %d, binary needs %d: run `baton migrate up`", v, m.Latest())
	}
	return nil
}
