// Command ledger is the payload of the e2e shell tasks: it records that an attempt
// actually ran by inserting one row (task_id, attempt, session_id) into table
// ledger of the database at BATON_LEDGER_DSN. The ids come from the environment
// the worker sets for every shell task (BATON_TASK_ID, BATON_ATTEMPT,
// BATON_SESSION_ID). It exits non-zero if anything is missing or the insert fails,
// so a task that "succeeded" has always left its row.
package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "ledger:", err)
		os.Exit(1)
	}
}

func run() error {
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
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, "INSERT INTO ledger (task_id, attempt, session_id) VALUES ($1, $2, $3)", ids[0], ids[1], ids[2])
	if err != nil {
		return fmt.Errorf("insert: %w", err)
	}
	return nil
}
