package baton_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap/zaptest"

	"github.com/baton-scheduler/baton"
	"github.com/baton-scheduler/baton/batontest"
)

var srv *batontest.Server

func TestMain(m *testing.M) {
	os.Exit(batontest.MainNoLeaks(m, func(s *batontest.Server) { srv = s }))
}

// An application embeds a worker with its own Go handler and a master in the same
// process, submits through the client and waits for the result. (The adopter's
// view, from a separate module, is in examples/invoicing.)
func TestEmbeddedWorker(t *testing.T) {
	t.Parallel()
	pool, dsn := srv.NewPool(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	reg := prometheus.NewRegistry()
	w, err := baton.NewWorker(ctx, baton.WorkerConfig{
		DatabaseURL: dsn, Group: "app", Logger: zaptest.NewLogger(t), Metrics: reg,
		Handlers: map[string]baton.Handler{
			"upper": func(_ context.Context, task baton.Task) (string, error) {
				if err := task.CheckLease(); err != nil {
					return "", fmt.Errorf("a running attempt of a healthy worker must own its task: %w", err)
				}
				var p struct{ S string }
				if err := json.Unmarshal(task.Payload, &p); err != nil {
					return "", err
				}
				return strings.ToUpper(p.S), nil
			},
		},
		Master: &baton.MasterConfig{},
	})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	select {
	case <-w.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("worker not ready")
	}
	client, err := baton.NewClient(pool, &baton.ClientConfig{Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	id, err := client.Submit(ctx, baton.TaskSpec{Group: "app", Kind: "upper", Payload: json.RawMessage(`{"S": "hello"}`)})
	if err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(ctx, 20*time.Second)
	defer wcancel()
	info, err := client.Wait(wctx, id)
	if err != nil || info.State != baton.TaskSucceeded || info.Output != "HELLO" {
		t.Fatalf("wait = %+v, %v", info, err)
	}

	// The worker's and the embedded master's metrics, in the application's registry.
	if err := testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP baton_worker_attempts_finished_total Attempts this process ran to an end, by outcome (succeeded, failed, timed_out, snoozed, killed).
# TYPE baton_worker_attempts_finished_total counter
baton_worker_attempts_finished_total{group="app",outcome="succeeded"} 1
`), "baton_worker_attempts_finished_total"); err != nil {
		t.Error(err)
	}
	if n, err := testutil.GatherAndCount(reg, "baton_master_heartbeat_duration_seconds", "baton_db_pool_max_connections"); err != nil || n != 3 {
		t.Errorf("master heartbeat histogram and the two pools: %d series, %v", n, err)
	}
	// A second worker of the group cannot register the same series there.
	if _, err := baton.NewWorker(ctx, baton.WorkerConfig{DatabaseURL: dsn, Group: "app", Logger: zaptest.NewLogger(t), Metrics: reg,
		Handlers: map[string]baton.Handler{"x": func(context.Context, baton.Task) (string, error) { return "", nil }}}); !errors.Is(err, baton.ErrInvalidConfig) || !strings.Contains(err.Error(), "register metrics") {
		t.Errorf("second worker on one registry: %v", err)
	}

	_, err = client.Submit(ctx, baton.TaskSpec{Group: "nope", Kind: "upper"})
	if !errors.Is(err, baton.ErrUnknownGroup) || strings.Contains(err.Error(), "--group") {
		t.Fatalf("unknown group: %v", err)
	}
	_, err = client.Submit(ctx, baton.TaskSpec{Group: "app", Kind: "upper", Payload: json.RawMessage(`{`)})
	if !errors.Is(err, baton.ErrInvalidTask) {
		t.Fatalf("bad JSON: %v", err)
	}
}

// One Submit through the Client: one round trip on the application's pool
// (set_config of baton's schema and the insert, pipelined in one implicit
// transaction); the wake-up NOTIFY follows in the background.
func BenchmarkClientSubmit(b *testing.B) {
	pool, _ := srv.NewPool(b)
	ctx := context.Background()
	client, err := baton.NewClient(pool, &baton.ClientConfig{Logger: zaptest.NewLogger(b)})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := client.CreateGroup(ctx, "bench", ""); err != nil {
		b.Fatal(err)
	}
	spec := baton.TaskSpec{Group: "bench", Kind: "noop"}
	b.ResetTimer()
	for b.Loop() {
		if _, err := client.Submit(ctx, spec); err != nil {
			b.Fatal(err)
		}
	}
}

// SubmitTx in a transaction of the caller's that also does its own insert.
func BenchmarkClientSubmitTx(b *testing.B) {
	pool, _ := srv.NewPool(b)
	ctx := context.Background()
	client, err := baton.NewClient(pool, &baton.ClientConfig{Logger: zaptest.NewLogger(b)})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := client.CreateGroup(ctx, "bench", ""); err != nil {
		b.Fatal(err)
	}
	spec := baton.TaskSpec{Group: "bench", Kind: "noop"}
	b.ResetTimer()
	for b.Loop() {
		tx, err := pool.Begin(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := client.SubmitTx(ctx, tx, spec); err != nil {
			b.Fatal(err)
		}
		if err := tx.Commit(ctx); err != nil {
			b.Fatal(err)
		}
	}
}
