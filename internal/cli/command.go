package cli

import (
	"context"
	"io"
)

// Command is a baton subcommand defined outside this package and handed to
// BatonMain by cmd/baton. `baton dev` is one: it starts Postgres through
// testcontainers, and keeping it out of internal/cli keeps testcontainers and the
// Docker client out of baton-master and baton-worker, which link this package.
type Command struct {
	Name string
	// Short is the one line of `baton --help`.
	Short string
	Run   func(ctx context.Context, args []string, env Env, stdout, stderr io.Writer) error
}
