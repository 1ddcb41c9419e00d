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
	w, err := baton.NewWorker(ctx, baton.WorkerConfig{
		DatabaseURL: dsn, Group: "app", Logger: zaptest.NewLogger(t),
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
