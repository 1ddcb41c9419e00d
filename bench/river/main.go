// Command riverburn measures River's no-op burn-down the way River's own bench
// tool does (`river bench --num-total-jobs N`): N jobs inserted in batches of
// 5,000 before the client starts, FetchCooldown 2 ms, FetchPollInterval 20 ms,
// MaxWorkers 2,000 on the default queue; jobs/s from client start to the last
// completion event. It exists only so `make bench` can put River's figure next to
// baton's from the same Postgres in the same run; baton's go.mod does not carry it.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"runtime/debug"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivermigrate"
)

type noopArgs struct {
	Num int `json:"num"`
}

func (noopArgs) Kind() string { return "benchmark" }

type noopWorker struct {
	river.WorkerDefaults[noopArgs]
}

func (noopWorker) Work(context.Context, *river.Job[noopArgs]) error { return nil }

func main() {
	dsn := flag.String("database-url", os.Getenv("DATABASE_URL"), "Postgres URL of an empty database")
	n := flag.Int("jobs", 100_000, "jobs to burn down")
	flag.Parse()
	if err := run(*dsn, *n); err != nil {
		fmt.Fprintln(os.Stderr, "riverburn:", err)
		os.Exit(1)
	}
}

func run(dsn string, n int) error {
	ctx := context.Background()
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return err
	}
	cfg.MaxConns = 20
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer pool.Close()
	driver := riverpgxv5.New(pool)
	migrator, err := rivermigrate.New(driver, nil)
	if err != nil {
		return err
	}
	if _, err := migrator.Migrate(ctx, rivermigrate.DirectionUp, nil); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	if _, err := pool.Exec(ctx, "TRUNCATE river_job"); err != nil {
		return err
	}
	if _, err := pool.Exec(ctx, "VACUUM FULL river_job"); err != nil {
		return err
	}
	workers := river.NewWorkers()
	river.AddWorker(workers, &noopWorker{})
	client, err := river.NewClient(driver, &river.Config{
		FetchCooldown:     2 * time.Millisecond,
		FetchPollInterval: 20 * time.Millisecond,
		Queues:            map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: 2_000}},
		Workers:           workers,
	})
	if err != nil {
		return err
	}
	for off := 0; off < n; off += 5000 {
		batch := make([]river.InsertManyParams, min(5000, n-off))
		for i := range batch {
			batch[i].Args = noopArgs{Num: off + i}
		}
		if _, err := client.InsertMany(ctx, batch); err != nil {
			return fmt.Errorf("insert: %w", err)
		}
	}
	events, cancel := client.SubscribeConfig(&river.SubscribeConfig{
		ChanSize: n,
		Kinds:    []river.EventKind{river.EventKindJobCompleted, river.EventKindJobFailed, river.EventKindJobCancelled},
	})
	defer cancel()
	start := time.Now()
	if err := client.Start(ctx); err != nil {
		return err
	}
	var last time.Time
	deadline := time.After(10 * time.Minute)
	for done := 0; done < n; done++ {
		select {
		case ev := <-events:
			if ev.Kind != river.EventKindJobCompleted {
				return fmt.Errorf("job %d ended %s", ev.Job.ID, ev.Kind)
			}
			last = time.Now()
		case <-deadline:
			return fmt.Errorf("only %d of %d jobs done after 10 minutes", done, n)
		}
	}
	stopCtx, stopCancel := context.WithTimeout(ctx, 30*time.Second)
	defer stopCancel()
	_ = client.Stop(stopCtx)
	secs := last.Sub(start).Seconds()
	var left int
	_ = pool.QueryRow(ctx, "SELECT count(*) FROM river_job WHERE state <> 'completed'").Scan(&left)
	if left != 0 {
		return fmt.Errorf("%d jobs not completed", left)
	}
	fmt.Printf("river %s: %d jobs in %.2fs = %.0f jobs/s\n", riverVersion(), n, secs, float64(n)/secs)
	return nil
}

func riverVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			if d.Path == "github.com/riverqueue/river" {
				return d.Version
			}
		}
	}
	return "(unknown version)"
}
