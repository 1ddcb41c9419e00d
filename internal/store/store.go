// Package store opens the Postgres pool, runs transactions and turns pgx errors
// into one-line errors an operator can act on. It is the only package besides
// db/ that talks to pgx directly.
package store

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/baton-scheduler/baton/db"
)

// SQLSTATE codes baton reacts to.
const (
	CodeUniqueViolation     = "23505"
	CodeForeignKeyViolation = "23503"
	CodeCheckViolation      = "23514"
	CodeDeadlockDetected    = "40P01"
	CodeSerialization       = "40001"
	CodeInvalidPassword     = "28P01"
	CodeInvalidAuth         = "28000"
	CodeInvalidCatalog      = "3D000"
	CodeUndefinedTable      = "42P01"
)

// Advisory lock classes (first key of the two-int form).
const (
	LockClassWorkerFailover int32 = 0x6261_0001
	LockClassMasterFailover int32 = 0x6261_0002
	LockClassDispatchGroup  int32 = 0x6261_0003
)

// ParseConfig parses a DSN (URL or key=value) and reports a malformed one clearly.
func ParseConfig(dsn string) (*pgxpool.Config, error) {
	if strings.TrimSpace(dsn) == "" {
		return nil, errors.New("database URL is empty: set BATON_DATABASE_URL or --database-url")
	}
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		// pgx's message may echo the DSN; keep only its reason to avoid leaking a password.
		return nil, fmt.Errorf("invalid database URL: %s", redact(err.Error(), dsn))
	}
	// baton's tables live in their own schema: every connection baton opens
	// resolves unqualified names there. The schema comes from the DSN's
	// baton_schema parameter (consumed here, never sent to the server), else
	// SchemaDefault; the DSN's own search_path, if any, is the application's
	// and is overridden, so the application's DSN can be handed to baton as is.
	schema := cfg.ConnConfig.RuntimeParams[SchemaParam]
	delete(cfg.ConnConfig.RuntimeParams, SchemaParam)
	if schema == "" {
		schema = SchemaDefault
	}
	cfg.ConnConfig.RuntimeParams["search_path"] = schema
	return cfg, nil
}

// SchemaDefault is the Postgres schema of baton's tables, views and goose version
// table unless the DSN names another with SchemaParam.
const SchemaDefault = "baton"

// SchemaParam is the DSN parameter naming baton's schema
// (postgres://.../db?baton_schema=jobs, or baton_schema=jobs in key=value form).
const SchemaParam = "baton_schema"

// Schema is baton's schema on connections of cfg (a config from ParseConfig).
func Schema(cfg *pgxpool.Config) string {
	return cfg.ConnConfig.RuntimeParams["search_path"]
}

// Open connects a pool and checks that the server answers, so a wrong DSN fails at
// start-up with a message that says what is wrong.
func Open(ctx context.Context, dsn string, maxConns int32) (*pgxpool.Pool, error) {
	cfg, err := ParseConfig(dsn)
	if err != nil {
		return nil, err
	}
	if maxConns > 0 {
		cfg.MaxConns = maxConns
	}
	if cfg.ConnConfig.ConnectTimeout == 0 {
		cfg.ConnConfig.ConnectTimeout = 5 * time.Second
	}
	applyConnDefaults(&cfg.ConnConfig.Config)
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open pool: %w", err)
	}
	pingCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := pool.Ping(pingCtx); err != nil {
		pool.Close()
		return nil, DescribeConnError(err, cfg.ConnConfig.Host, cfg.ConnConfig.Port, cfg.ConnConfig.User, cfg.ConnConfig.Database)
	}
	return pool, nil
}

// DescribeConnError turns a failed connection into one line naming the cause.
func DescribeConnError(err error, host string, port uint16, user, database string) error {
	addr := net.JoinHostPort(host, fmt.Sprint(port))
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code {
		case CodeInvalidPassword, CodeInvalidAuth:
			return fmt.Errorf("postgres at %s rejected user %q: %s", addr, user, pgErr.Message)
		case CodeInvalidCatalog:
			return fmt.Errorf("postgres at %s has no database %q", addr, database)
		}
		return fmt.Errorf("postgres at %s: %s (SQLSTATE %s)", addr, pgErr.Message, pgErr.Code)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("postgres at %s is unreachable: timed out connecting", addr)
	}
	var netErr net.Error
	var opErr *net.OpError
	var dnsErr *net.DNSError
	switch {
	case errors.As(err, &dnsErr):
		return fmt.Errorf("postgres host %q cannot be resolved: %s", host, dnsErr.Err)
	case errors.As(err, &opErr):
		return fmt.Errorf("postgres at %s is unreachable: %s", addr, opErr.Err)
	case errors.As(err, &netErr):
		return fmt.Errorf("postgres at %s is unreachable: %s", addr, oneLine(netErr.Error()))
	}
	return fmt.Errorf("connect to postgres at %s: %s", addr, rootCause(err))
}

func rootCause(err error) string {
	for {
		next := errors.Unwrap(err)
		if next == nil {
			return oneLine(err.Error())
		}
		err = next
	}
}

func oneLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// redact turns pgx's parse error into a reason that cannot echo the DSN (and so its
// password): pgx and net/url quote parts of the input in their messages, so only
// the innermost reason is kept, and only when it quotes nothing and shares no
// four characters with the input.
func redact(msg, dsn string) string {
	reason := msg
	if i := strings.LastIndex(msg, ": "); i >= 0 {
		reason = msg[i+2:]
	}
	reason = strings.Trim(oneLine(reason), "() ")
	safe := !strings.ContainsAny(reason, "`\"'")
	for i := 0; safe && i+4 <= len(dsn); i++ {
		safe = !strings.Contains(reason, dsn[i:i+4])
	}
	form := "key=value DSN"
	if strings.Contains(dsn, "://") {
		form = "postgres:// URL"
	}
	if safe && reason != "" {
		return fmt.Sprintf("not a valid %s: %s", form, reason)
	}
	return fmt.Sprintf("not a valid %s (check quoting, percent-encoding, host and port)", form)
}

// WithTx runs fn in one transaction and commits if fn returns nil.
func WithTx(ctx context.Context, pool *pgxpool.Pool, fn func(q *db.Queries, tx pgx.Tx) error) error {
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		return fn(db.New(tx), tx)
	})
}

// Code returns the SQLSTATE of err, or "".
func Code(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

// Constraint returns the name of the violated constraint, or "".
func Constraint(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.ConstraintName
	}
	return ""
}

// Message is a Postgres error's message (without SQLSTATE), else err's text.
func Message(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Message
	}
	return err.Error()
}

// Retryable reports whether a transaction failed only because it raced another
// (deadlock, serialization) and may simply run again.
func Retryable(err error) bool {
	switch Code(err) {
	case CodeDeadlockDetected, CodeSerialization:
		return true
	}
	return false
}

// DataException returns Postgres' message when err is a data exception (SQLSTATE
// class 22: a value the server refuses, such as a number beyond numeric's range or
// an invalid byte sequence), so callers can blame the input instead of the server.
func DataException(err error) (string, bool) {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && strings.HasPrefix(pgErr.Code, "22") {
		return pgErr.Message, true
	}
	return "", false
}

// ConnConfig parses a DSN into the configuration of one connection outside any pool,
// with baton's session parameters and dialer (as Open gives the pool's). The worker's
// liveness lock lives on such a connection.
func ConnConfig(dsn string) (*pgx.ConnConfig, error) {
	cfg, err := ParseConfig(dsn)
	if err != nil {
		return nil, err
	}
	cc := cfg.ConnConfig
	if cc.ConnectTimeout == 0 {
		cc.ConnectTimeout = 5 * time.Second
	}
	applyConnDefaults(&cc.Config)
	return cc, nil
}
