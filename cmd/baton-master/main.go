// Command baton-master runs a master: liveness sweep, failover, dispatch, timeouts.
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
	code := cli.MasterMain(ctx, os.Args[1:], cli.OSEnv, os.Stderr)
	stop()
	os.Exit(code)
}
