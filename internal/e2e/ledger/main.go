// Command ledger is the payload of the e2e shell tasks: it records that an attempt
// did something by inserting rows into table ledger (see internal/chaos) of the
// database at BATON_LEDGER_DSN. The ids come from the environment the worker sets
// for every shell task (BATON_TASK_ID, BATON_ATTEMPT, BATON_SESSION_ID).
//
//	ledger                 one "run" row
//	ledger start|tick|end  one row of that kind
//	ledger ticks N EVERY   N "tick" rows, EVERY (a Go duration) apart
//
// A write that fails (Postgres restarting, switching over) is retried with the
// same token for up to a minute, so a task survives the database going away; it
// exits non-zero if a write never lands, so a task that "succeeded" has always
// left its rows.
package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/baton-scheduler/baton/internal/chaos"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "ledger:", err)
		os.Exit(1)
	}
}

// writeTimeout bounds one write including its retries.
const writeTimeout = time.Minute

func run(args []string) error {
	dsn := os.Getenv("BATON_LEDGER_DSN")
	if dsn == "" {
		return fmt.Errorf("BATON_LEDGER_DSN is not set")
	}
	var ids [3]int64
	for i, name := range []string{"BATON_TASK_ID", "BATON_ATTEMPT", "BATON_SESSION_ID"} {
		v, err := strconv.ParseInt(os.Getenv(name), 10, 64)
		if err != nil {
			return fmt.Errorf("%s=%q: %w", name, os.Getenv(name), err)
		}
		ids[i] = v
	}
	kind, n, every := chaos.KindRun, 1, time.Duration(0)
	switch {
	case len(args) == 0:
	case len(args) == 1 && (args[0] == chaos.KindRun || args[0] == chaos.KindStart || args[0] == chaos.KindTick || args[0] == chaos.KindEnd):
		kind = args[0]
	case len(args) == 3 && args[0] == "ticks":
		var err error
		if n, err = strconv.Atoi(args[1]); err != nil || n < 0 {
			return fmt.Errorf("ticks: bad count %q", args[1])
		}
		if every, err = time.ParseDuration(args[2]); err != nil {
			return fmt.Errorf("ticks: bad interval %q", args[2])
		}
		kind = chaos.KindTick
	default:
		return fmt.Errorf("usage: ledger [run|start|tick|end|ticks N EVERY]")
	}
	w := &writer{dsn: dsn}
	defer w.close()
	for i := range n {
		if i > 0 {
			time.Sleep(every)
		}
		if err := w.write(ids, kind); err != nil {
			return err
		}
	}
	return nil
}

// writer keeps one connection and replaces it when a write fails.
type writer struct {
	dsn  string
	conn *pgx.Conn
}

func (w *writer) write(ids [3]int64, kind string) error {
	ctx, cancel := context.WithTimeout(context.Background(), writeTimeout)
	defer cancel()
	token := chaos.NewToken()
	return chaos.Retry(ctx, func(ctx context.Context) error {
		if w.conn == nil {
			cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
			conn, err := pgx.Connect(cctx, w.dsn)
			ccancel()
			if err != nil {
				return fmt.Errorf("connect: %w", err)
			}
			w.conn = conn
		}
		ectx, ecancel := context.WithTimeout(ctx, 10*time.Second)
		defer ecancel()
		if _, err := w.conn.Exec(ectx, chaos.InsertSQL, ids[0], ids[1], ids[2], kind, token); err != nil {
			w.close()
			return fmt.Errorf("insert %s: %w", kind, err)
		}
		return nil
	})
}

func (w *writer) close() {
	if w.conn != nil {
		_ = w.conn.Close(context.Background())
		w.conn = nil
	}
}
