// Command chaosworker is baton-worker with one more Go handler, "ledger", for the
// fault campaign: it records its attempt's start, a tick every tick_ms while it
// works, and its end in table ledger (see internal/chaos) of the database at the
// payload's dsn, and stops as soon as its context is canceled. Its ledger writes go
// straight to Postgres, not through the worker's own connection, as a real task's
// side effects would: a worker cut off from baton's database does not stop them.
//
// Payload: {"dsn": "...", "ticks": N, "tick_ms": M}.
//
// A second handler, "crash", is a Go poison task: it records its attempt's start
// in the ledger and then crashes the whole worker process with an unrecovered
// panic in a goroutine of its own (a fatal error no recover in the executor can
// catch, as a handler's bug would), so it kills every worker that runs it.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/baton-scheduler/baton/internal/chaos"
	"github.com/baton-scheduler/baton/internal/cli"
	"github.com/baton-scheduler/baton/internal/executor"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	handlers := cli.BuiltinHandlers()
	handlers["ledger"] = ledgerHandler
	handlers["crash"] = crashHandler
	code := cli.WorkerMain(ctx, os.Args[1:], cli.OSEnv, handlers, os.Stderr)
	stop()
	os.Exit(code)
}

type payload struct {
	DSN    string `json:"dsn"`
	Ticks  int    `json:"ticks"`
	TickMS int    `json:"tick_ms"`
}

var (
	poolsMu sync.Mutex
	pools   = map[string]*pgxpool.Pool{}
)

// pool is one ledger pool per DSN for the life of the process.
func pool(dsn string) (*pgxpool.Pool, error) {
	poolsMu.Lock()
	defer poolsMu.Unlock()
	if p, ok := pools[dsn]; ok {
		return p, nil
	}
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("ledger dsn: %w", err)
	}
	cfg.MaxConns = 16
	cfg.ConnConfig.ConnectTimeout = 5 * time.Second
	p, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		return nil, err
	}
	pools[dsn] = p
	return p, nil
}

func ledgerHandler(ctx context.Context, t executor.Task) (string, error) {
	var p payload
	if err := json.Unmarshal(t.Payload, &p); err != nil {
		return "", fmt.Errorf("ledger payload: %w", err)
	}
	pl, err := pool(p.DSN)
	if err != nil {
		return "", err
	}
	write := func(kind string) error {
		token := chaos.NewToken()
		return chaos.Retry(ctx, func(ctx context.Context) error {
			// A side effect outside baton: only while this attempt still owns the
			// task (a worker frozen past its deadline resumes its handlers before
			// its context is canceled; the lease check sees the expiry at once).
			if err := t.CheckLease(); err != nil {
				return err
			}
			wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			_, err := pl.Exec(wctx, chaos.InsertSQL, t.ID, t.Attempt, t.SessionID, kind, token)
			return err
		})
	}
	if err := write(chaos.KindStart); err != nil {
		return "", err
	}
	for range p.Ticks {
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(time.Duration(p.TickMS) * time.Millisecond):
		}
		if err := write(chaos.KindTick); err != nil {
			return "", err
		}
	}
	if err := write(chaos.KindEnd); err != nil {
		return "", err
	}
	return fmt.Sprintf("%d ticks", p.Ticks), nil
}

// crashHandler records the attempt's start, then crashes the process.
func crashHandler(ctx context.Context, t executor.Task) (string, error) {
	var p payload
	if err := json.Unmarshal(t.Payload, &p); err != nil {
		return "", fmt.Errorf("crash payload: %w", err)
	}
	pl, err := pool(p.DSN)
	if err != nil {
		return "", err
	}
	token := chaos.NewToken()
	if err := chaos.Retry(ctx, func(ctx context.Context) error {
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		_, err := pl.Exec(wctx, chaos.InsertSQL, t.ID, t.Attempt, t.SessionID, chaos.KindStart, token)
		return err
	}); err != nil {
		return "", err
	}
	go func() { panic(fmt.Sprintf("poison task %d attempt %d crashes its worker", t.ID, t.Attempt)) }()
	<-ctx.Done()
	return "", ctx.Err()
}
