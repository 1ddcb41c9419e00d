// Command baton-worker runs a worker of one group (--group, --slots) or of several
// (--groups billing=4,email=2): shell tasks, plus the Go
// handlers built into this binary (none by default besides "noop" and "sleep";
// applications embed their own through package baton).
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/baton-scheduler/baton/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.WorkerMain(ctx, os.Args[1:], cli.OSEnv, cli.BuiltinHandlers(), os.Stderr)
	stop()
	os.Exit(code)
}
