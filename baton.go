// Package baton is the public Go API of the baton scheduler: embed a worker with
// your own Go task handlers (the way River users embed workers), run a master
// in-process, submit tasks and migrate the schema.
//
//	w, err := baton.NewWorker(ctx, baton.WorkerConfig{
//		DatabaseURL: dsn,
//		Group:       "billing",
//		Handlers: map[string]baton.Handler{
//			"invoice.send": func(ctx context.Context, t baton.Task) (string, error) { ... },
//		},
//	})
//	err = w.Run(ctx) // until ctx is canceled, then drains
package baton

import (
	"context"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/baton-scheduler/baton/internal/executor"
	"github.com/baton-scheduler/baton/internal/master"
	"github.com/baton-scheduler/baton/internal/migrate"
	"github.com/baton-scheduler/baton/internal/retrypolicy"
	"github.com/baton-scheduler/baton/internal/submit"
	"github.com/baton-scheduler/baton/internal/worker"
)

type (
	// Task is what a handler sees: id, attempt (the fencing epoch), kind, payload.
	Task = executor.Task
	// Handler runs one attempt of a task kind; it must return when ctx is done.
	Handler = executor.Handler
	// RetryPolicy is exponential backoff with jitter for failed attempts.
	RetryPolicy = retrypolicy.Policy
	// WorkerConfig configures a worker; zero fields take the documented defaults.
	WorkerConfig = worker.Config
	// MasterConfig configures a master; zero fields take the documented defaults.
	MasterConfig = master.Config
	// TaskSpec describes a task to submit.
	TaskSpec = submit.Spec
)

// KindShell is the task kind of shell commands ({"command": ..., "env": {...}, "dir": ...}).
const KindShell = submit.KindShell

// Errors Submit can return (match with errors.Is).
var (
	ErrInvalidTask  = submit.ErrInvalid
	ErrUnknownGroup = submit.ErrUnknownGroup
)

// Worker is an embedded worker.
type Worker struct{ w *worker.Worker }

// NewWorker validates cfg and connects (a wrong DSN fails here).
func NewWorker(ctx context.Context, cfg WorkerConfig) (*Worker, error) {
	w, err := worker.New(ctx, cfg)
	if err != nil {
		return nil, err
	}
	return &Worker{w: w}, nil
}

// Run works until ctx is canceled, then drains (see WorkerConfig.ShutdownGrace).
func (w *Worker) Run(ctx context.Context) error { return w.w.Run(ctx) }

// SessionID is the worker's current session id (0 before it registers).
func (w *Worker) SessionID() int64 { return w.w.SessionID() }

// Master is an in-process master.
type Master struct{ m *master.Master }

// NewMaster validates cfg, connects and registers the master session.
func NewMaster(ctx context.Context, cfg MasterConfig) (*Master, error) {
	m, err := master.New(ctx, cfg)
	if err != nil {
		return nil, err
	}
	return &Master{m: m}, nil
}

// Run works until ctx is canceled.
func (m *Master) Run(ctx context.Context) error { return m.m.Run(ctx) }

// Submit validates and stores a task; it returns the task id.
func Submit(ctx context.Context, pool *pgxpool.Pool, spec TaskSpec) (int64, error) {
	return submit.Submit(ctx, pool, spec)
}

// SubmitMany stores tasks in one transaction: all or none.
func SubmitMany(ctx context.Context, pool *pgxpool.Pool, specs []TaskSpec) ([]int64, error) {
	return submit.Many(ctx, pool, specs)
}

// Migrate applies pending schema migrations (safe to run from several processes at once).
func Migrate(ctx context.Context, dsn string) error { return migrate.EnsureLatest(ctx, dsn) }
