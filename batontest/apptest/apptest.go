// Package apptest is baton's test kit for applications that embed it. It needs
// only a Postgres URL (BATON_TEST_DATABASE_URL) and imports no container or
// Docker client, so it adds nothing of the kind to the application's module.
//
//	func TestInvoice(t *testing.T) {
//		dsn := apptest.NewDatabase(t)           // a fresh database, baton migrated
//		w := apptest.StartWorker(t, baton.WorkerConfig{DatabaseURL: dsn, Group: "billing",
//			Handlers: handlers, Master: &baton.MasterConfig{}})
//		...
//		tasks := apptest.RequireSubmitted(t, client, baton.ListParams{Kind: "invoice.send"})
//	}
//
// and, without any database, apptest.RunTask runs one task through a handler.
package apptest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap/zaptest"

	"github.com/baton-scheduler/baton"
)

// EnvDatabaseURL names the variable holding the URL of a Postgres server on
// which the tests may create databases (a role with CREATEDB).
const EnvDatabaseURL = "BATON_TEST_DATABASE_URL"

// ServerURL returns the test server's URL, or skips t when it is unset (fails
// under CI=true, so a CI run never passes by skipping).
func ServerURL(t testing.TB) string {
	t.Helper()
	u := os.Getenv(EnvDatabaseURL)
	if u == "" {
		msg := "apptest: " + EnvDatabaseURL + " is not set: no Postgres for this test"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return u
}

// NewEmptyDatabase creates a database for t on the test server (dropped when t
// ends) and returns its URL. Nothing is migrated: the application runs its own
// migrations and baton.Migrate.
func NewEmptyDatabase(t testing.TB) string {
	t.Helper()
	admin := ServerURL(t)
	ctx := context.Background()
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	name := "apptest_" + hex.EncodeToString(b)
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		t.Fatalf("apptest: connect to %s: %v", EnvDatabaseURL, describe(err))
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		t.Fatalf("apptest: create database: %v", err)
	}
	t.Cleanup(func() {
		c, err := pgx.Connect(context.Background(), admin)
		if err != nil {
			t.Logf("apptest: drop %s: %v", name, describe(err))
			return
		}
		defer c.Close(context.Background())
		if _, err := c.Exec(context.Background(), "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
			t.Logf("apptest: drop %s: %v", name, err)
		}
	})
	dsn, err := withDatabase(admin, name)
	if err != nil {
		t.Fatalf("apptest: %v", err)
	}
	return dsn
}

// NewDatabase is NewEmptyDatabase with baton's schema migrated.
func NewDatabase(t testing.TB) string {
	t.Helper()
	dsn := NewEmptyDatabase(t)
	if err := baton.Migrate(context.Background(), dsn); err != nil {
		t.Fatalf("apptest: migrate baton: %v", err)
	}
	return dsn
}

func withDatabase(admin, name string) (string, error) {
	if strings.HasPrefix(admin, "postgres://") || strings.HasPrefix(admin, "postgresql://") {
		u, err := url.Parse(admin)
		if err != nil {
			return "", errors.New(EnvDatabaseURL + " is not a valid URL")
		}
		u.Path = "/" + name
		return u.String(), nil
	}
	return admin + " dbname=" + name, nil
}

// describe keeps a connection error to its cause (never the URL).
func describe(err error) error {
	for errors.Unwrap(err) != nil {
		err = errors.Unwrap(err)
	}
	return err
}

// RunTask runs one task through handler synchronously, in the test's process,
// with no database: the handler sees the Task a worker would give it (ID 1,
// attempt 1, kind and payload from spec). It returns the handler's output and
// error; a panic is returned as an error, as a worker records it. Task.Retries
// needs a worker and returns an error here.
func RunTask(ctx context.Context, handler baton.Handler, spec baton.TaskSpec) (output string, err error) {
	if spec.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, spec.Timeout)
		defer cancel()
	}
	payload := spec.Payload
	if len(payload) == 0 {
		payload = []byte("{}")
	}
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("handler panicked: %v", r)
		}
	}()
	return handler(ctx, baton.Task{ID: 1, Attempt: 1, Kind: spec.Kind, Payload: payload, Worker: "apptest"})
}

// RequireSubmitted returns the tasks matching p (newest first) and fails t if
// there are none.
func RequireSubmitted(t testing.TB, client *baton.Client, p baton.ListParams) []baton.TaskInfo {
	t.Helper()
	tasks, err := client.List(context.Background(), p)
	if err != nil {
		t.Fatalf("apptest: list tasks: %v", err)
	}
	if len(tasks) == 0 {
		t.Fatalf("apptest: no task submitted matching %+v", p)
	}
	return tasks
}

// RequireNotSubmitted fails t if any task matches p.
func RequireNotSubmitted(t testing.TB, client *baton.Client, p baton.ListParams) {
	t.Helper()
	tasks, err := client.List(context.Background(), p)
	if err != nil {
		t.Fatalf("apptest: list tasks: %v", err)
	}
	if len(tasks) > 0 {
		t.Fatalf("apptest: %d task(s) submitted matching %+v, want none (first: %+v)", len(tasks), p, tasks[0])
	}
}

// StartWorker starts an in-process worker (and its master, if cfg.Master is
// set), waits until it is ready and stops it (drained) when t ends. A nil
// cfg.Logger logs to t.
func StartWorker(t testing.TB, cfg baton.WorkerConfig) *baton.Worker {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = zaptest.NewLogger(t)
	}
	ctx, cancel := context.WithCancel(context.Background())
	w, err := baton.NewWorker(ctx, cfg)
	if err != nil {
		cancel()
		t.Fatalf("apptest: start worker: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("apptest: worker: %v", err)
		}
	})
	select {
	case <-w.Ready():
	case err := <-done:
		done <- err
		t.Fatalf("apptest: worker stopped before it was ready: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("apptest: worker not ready after 30s")
	}
	return w
}

// StartMaster starts an in-process master, stopped when t ends.
func StartMaster(t testing.TB, cfg baton.MasterConfig) *baton.Master {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = zaptest.NewLogger(t)
	}
	ctx, cancel := context.WithCancel(context.Background())
	m, err := baton.NewMaster(ctx, cfg)
	if err != nil {
		cancel()
		t.Fatalf("apptest: start master: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("apptest: master: %v", err)
		}
	})
	return m
}

// Wait is client.Wait bounded by timeout, failing t on error.
func Wait(t testing.TB, client *baton.Client, id int64, timeout time.Duration) baton.TaskInfo {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	info, err := client.Wait(ctx, id)
	if err != nil {
		t.Fatalf("apptest: wait for task %d: %v", id, err)
	}
	return info
}
