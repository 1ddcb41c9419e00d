// Command testpg starts a throwaway Postgres container (testcontainers-go) for
// baton's test harness and prints its URL on the first line of stdout; it
// stops the container when its stdin closes (the test binary that started it
// exited). batontest runs it with `go run` when BATON_TEST_DATABASE_URL is
// unset, so that batontest itself does not link testcontainers and the Docker
// client: baton's packages' tests import batontest, and everything a test of a
// package an application imports links is in that application's module graph
// (`go mod why`).
//
//	go run github.com/baton-scheduler/baton/internal/testpg IMAGE
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/testcontainers/testcontainers-go"
	tcpostgres "github.com/testcontainers/testcontainers-go/modules/postgres"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: testpg IMAGE")
		os.Exit(2)
	}
	image := os.Args[1]
	ctx := context.Background()
	startCtx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	ctr, err := tcpostgres.Run(startCtx, image,
		tcpostgres.WithDatabase("baton"),
		tcpostgres.WithUsername("baton"),
		tcpostgres.WithPassword("baton"),
		tcpostgres.BasicWaitStrategies(),
		// Data in memory: per-test CREATE DATABASE on a container's overlay
		// filesystem costs ~0.4 s; on tmpfs it is milliseconds.
		testcontainers.WithTmpfs(map[string]string{"/var/lib/postgresql/data": "rw"}),
		// Tests do not need durability; a crash loses a throwaway database.
		testcontainers.WithCmd("postgres", "-c", "fsync=off", "-c", "synchronous_commit=off",
			"-c", "full_page_writes=off", "-c", "max_connections=500"),
	)
	cancel()
	stop := func() {
		if ctr != nil {
			tctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			_ = ctr.Terminate(tctx)
		}
	}
	if err != nil {
		stop()
		fmt.Fprintf(os.Stderr, "start Postgres container from image %q: %v\n", image, err)
		os.Exit(1)
	}
	u, err := ctr.ConnectionString(ctx, "sslmode=disable")
	if err != nil {
		stop()
		fmt.Fprintf(os.Stderr, "container connection string: %v\n", err)
		os.Exit(1)
	}
	fmt.Println(u)
	_, _ = io.Copy(io.Discard, os.Stdin) // until the test binary closes it or exits
	stop()
}
