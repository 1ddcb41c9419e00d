package baton_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/baton-scheduler/baton"
	"github.com/baton-scheduler/baton/batontest"
)

var srv *batontest.Server

func TestMain(m *testing.M) {
	os.Exit(batontest.Main(m, func(s *batontest.Server) { srv = s }))
}

// An application embeds a worker with its own Go handler and an in-process master.
func TestEmbeddedWorker(t *testing.T) {
	t.Parallel()
	pool, dsn := srv.NewPool(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w, err := baton.NewWorker(ctx, baton.WorkerConfig{
		DatabaseURL: dsn, Group: "app",
		Handlers: map[string]baton.Handler{
			"upper": func(_ context.Context, task baton.Task) (string, error) {
				var p struct{ S string }
				if err := json.Unmarshal(task.Payload, &p); err != nil {
					return "", err
				}
				return strings.ToUpper(p.S), nil
			},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	m, err := baton.NewMaster(ctx, baton.MasterConfig{DatabaseURL: dsn})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{}, 2)
	go func() { _ = w.Run(ctx); done <- struct{}{} }()
	go func() { _ = m.Run(ctx); done <- struct{}{} }()
	defer func() { cancel(); <-done; <-done }()
	batontest.WaitFor(t, 10*time.Second, func() (bool, string) { return w.SessionID() != 0, "worker registered" })

	id, err := baton.Submit(ctx, pool, baton.TaskSpec{Group: "app", Kind: "upper", Payload: json.RawMessage(`{"S": "hello"}`)})
	if err != nil {
		t.Fatal(err)
	}
	batontest.WaitFor(t, 20*time.Second, func() (bool, string) {
		var state, out string
		_ = pool.QueryRow(ctx, "SELECT state, output FROM tasks WHERE id = $1", id).Scan(&state, &out)
		return state == "succeeded" && out == "HELLO", "task state " + state + " output " + out
	})

	_, err = baton.Submit(ctx, pool, baton.TaskSpec{Group: "nope", Kind: "upper"})
	if !errors.Is(err, baton.ErrUnknownGroup) {
		t.Fatalf("unknown group: %v", err)
	}
	_, err = baton.Submit(ctx, pool, baton.TaskSpec{Group: "app", Kind: "upper", Payload: json.RawMessage(`{`)})
	if !errors.Is(err, baton.ErrInvalidTask) {
		t.Fatalf("bad JSON: %v", err)
	}
}
