// Command baton is the operator CLI: migrations, task submission, inspection.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/baton-scheduler/baton/internal/cli"
	"github.com/baton-scheduler/baton/internal/devenv"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.BatonMain(ctx, os.Args[1:], cli.OSEnv, os.Stdout, os.Stderr, devenv.Command)
	stop()
	os.Exit(code)
}
