// Package cli holds the command lines of baton, baton-master and baton-worker:
// flags and environment in, a Config and a Run call out, errors to exit codes.
//
// The baton CLI is a cobra command tree, one file per command group (task.go,
// group.go, worker.go, failover.go, token.go, workflow.go, run.go,
// schedule.go, backfill.go, migrate.go, prune.go, healthcheck.go); the daemons
// (daemons.go) parse their flags with the stdlib flag package.
package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/store"
)

const usageFormat = `baton — operator CLI of the baton scheduler

  baton migrate up|down|status|version     apply/roll back the embedded schema
  baton migrate move-from-public           move a pre-schema install (tables in public) into baton's schema
  baton task submit --group G (--shell CMD | --kind K [--payload JSON]) [--priority N] [--max-retries N] [--retry-base D] [--retry-max D] [--timeout D]
                    [--run-at RFC3339 | --delay D] [--tag T1,T2]
  baton task list [--state S] [--group G] [--tag T] [--limit N]
  baton task show ID
  baton task cancel ID...                  cancel tasks that have not finished
  baton group list | show NAME | create NAME [--description D]
  baton token create --name N --scope read|operate | list | revoke ID   HTTP API bearer tokens
  baton healthcheck [--url http://127.0.0.1:8080]   exit 0 when the master's /readyz answers 200
  baton worker list [--group G] [--all]
  baton failover list [--limit N]
%s  baton prune [--retention 30d] [--batch N]   delete finished tasks, old failover events, ended sessions
  baton dev                                start Postgres (if needed), a master, two workers and demo tasks
  baton completion bash|zsh|fish|powershell   shell completion script

Every command takes --database-url (env BATON_DATABASE_URL); list/show/submit take --json
(one model: snake_case fields, ids as numbers, RFC 3339 UTC times to the second).
baton's tables live in the Postgres schema "baton"; add baton_schema=<schema> to the
URL to use another (baton_schema=public for an install from before schemas).
"baton COMMAND --help" shows a command's flags and examples.`

// usage lists every command (the workflow commands are in workflow.go and run.go,
// the schedule commands in schedule.go and backfill.go).
var usage = fmt.Sprintf(usageFormat, workflowUsage+runUsage+scheduleUsage+backfillUsage)

// BatonMain is the baton CLI; extra adds commands defined elsewhere (baton dev).
// Exit status: 0 on success and for help, 1 for any error, printed as one
// "baton: <reason>" line on stderr (a usage error adds a line pointing at --help).
func BatonMain(ctx context.Context, args []string, env Env, stdout, stderr io.Writer, extra ...Command) int {
	root := newRootCmd(env, stdout, stderr, extra)
	if args == nil {
		args = []string{} // nil would make cobra read os.Args
	}
	root.SetArgs(args)
	_, err := root.ExecuteContextC(ctx)
	var ue *usageError
	if errors.As(err, &ue) {
		code := exitCode(stderr, "baton", err)
		fmt.Fprintf(stderr, "Run '%s --help' for usage.\n", ue.cmd.CommandPath())
		return code
	}
	return exitCode(stderr, "baton", err)
}

// newRootCmd builds the command tree; each group's constructor is in its file.
func newRootCmd(env Env, stdout, stderr io.Writer, extra []Command) *cobra.Command {
	root := &cobra.Command{
		Use:   "baton",
		Short: "operator CLI of the baton scheduler",
		Long:  usage,
		Example: `  export BATON_DATABASE_URL=postgres://user:pass@host:5432/app
  baton migrate up
  baton task submit --group etl --shell 'pg_dump mydb > /backups/x.sql' --max-retries 3 --timeout 10m
  baton task list --state running --json | jq '.[].id'
  source <(baton completion bash)`,
		Args:                       cobra.ArbitraryArgs,
		SuggestionsMinimumDistance: 2,
		SilenceErrors:              true,
		SilenceUsage:               true,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return cmd.Help()
			}
			return unknownSubcommand(cmd, fmt.Sprintf("unknown command %q", args[0]), args[0])
		},
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error { return &usageError{cmd, err} })
	a := &app{env: env, stdout: stdout, stderr: stderr}
	root.AddCommand(
		a.migrateCmd(), a.taskCmd(), a.groupCmd(), a.workerCmd(), a.failoverCmd(), a.tokenCmd(),
		a.workflowCmd(), a.runCmd(), a.scheduleCmd(), a.backfillCmd(), a.pruneCmd(), a.healthcheckCmd(),
	)
	for _, c := range extra {
		run := c.Run
		root.AddCommand(&cobra.Command{
			Use:   c.Name,
			Short: c.Short,
			Long:  c.Short + "\n\nIts flags are its own: run it with --help to list them.",
			// The command parses its own flags (baton dev uses the flag package).
			DisableFlagParsing: true,
			Args:               cobra.ArbitraryArgs,
			RunE: func(cmd *cobra.Command, args []string) error {
				return run(cmd.Context(), args, env, stdout, stderr)
			},
		})
	}
	return root
}

// app is what every command writes to and reads its defaults from.
type app struct {
	env            Env
	stdout, stderr io.Writer
}

// usageError is an error in the command line itself (an unknown flag or
// subcommand, a missing or stray argument): BatonMain points at --help.
type usageError struct {
	cmd *cobra.Command
	err error
}

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

func usageErrorf(cmd *cobra.Command, format string, args ...any) error {
	return &usageError{cmd, fmt.Errorf(format, args...)}
}

// unknownSubcommand names the unknown word, the choices and cobra's suggestion.
func unknownSubcommand(cmd *cobra.Command, msg, typed string) error {
	if s := cmd.SuggestionsFor(typed); len(s) > 0 {
		msg += fmt.Sprintf(" (did you mean %q?)", s[0])
	}
	return usageErrorf(cmd, "%s: use %s", msg, strings.Join(subcommandNames(cmd), "|"))
}

func subcommandNames(cmd *cobra.Command) []string {
	var names []string
	for _, c := range cmd.Commands() {
		if c.IsAvailableCommand() && c.Name() != "help" && c.Name() != "completion" {
			names = append(names, c.Name())
		}
	}
	return names
}

// groupCommand is a command group (task, run, ...): it runs nothing itself;
// without a subcommand, or with an unknown one, it says which exist.
func groupCommand(name, short, long, example string, subs ...*cobra.Command) *cobra.Command {
	g := &cobra.Command{
		Use:     name + " SUBCOMMAND",
		Short:   short,
		Long:    long,
		Example: example,
		Args:    cobra.ArbitraryArgs,
		// SuggestionsFor: a word within two edits of a subcommand, or a prefix.
		SuggestionsMinimumDistance: 2,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usageErrorf(cmd, "%s needs a subcommand: %s", name, strings.Join(subcommandNames(cmd), "|"))
			}
			return unknownSubcommand(cmd, fmt.Sprintf("unknown %s subcommand %q", name, args[0]), args[0])
		},
	}
	g.AddCommand(subs...)
	return g
}

// noArgs refuses positional arguments.
func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usageErrorf(cmd, "unexpected argument %q", args[0])
	}
	return nil
}

// oneArg takes exactly one positional argument (NAME, ID); usage is the
// error for none.
func oneArg(usage string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) == 0 {
			what := "argument"
			if f := strings.Fields(cmd.Use); len(f) > 1 {
				what = f[1]
			}
			return usageErrorf(cmd, "missing %s: usage: %s", what, usage)
		}
		if len(args) > 1 {
			return usageErrorf(cmd, "unexpected argument %q", args[1])
		}
		return nil
	}
}

type common struct {
	dsn  string
	json bool
}

// register adds --database-url and, for commands that print something, --json.
func (c *common) register(cmd *cobra.Command, env Env, withJSON bool) {
	dsnFlag(cmd.Flags(), &c.dsn, env)
	if withJSON {
		cmd.Flags().BoolVar(&c.json, "json", false, "print JSON (the model of the HTTP API, package apimodel) instead of a table")
	}
}

// dsnFlag defines --database-url, defaulting to BATON_DATABASE_URL.
func dsnFlag(fs *pflag.FlagSet, p *string, env Env) {
	*p = env("BATON_DATABASE_URL")
	fs.Var(pdsnValue{p}, "database-url", "Postgres URL (default: env BATON_DATABASE_URL; prefer the env, a flag shows in ps)")
}

// pdsnValue is --database-url for pflag: it prints as nothing, so --help never
// shows the URL taken from the environment (and its password).
type pdsnValue struct{ p *string }

func (v pdsnValue) String() string     { return "" }
func (v pdsnValue) Set(s string) error { *v.p = s; return nil }
func (v pdsnValue) Type() string       { return "url" }

func (c *common) pool(ctx context.Context) (*pgxpool.Pool, error) {
	return store.Open(ctx, c.dsn, 2)
}

// inTx opens a pool for one command and runs fn in one transaction on it.
func (c *common) inTx(ctx context.Context, fn func(q *db.Queries) error) error {
	pool, err := c.pool(ctx)
	if err != nil {
		return err
	}
	defer pool.Close()
	return store.WithTx(ctx, pool, func(q *db.Queries, _ pgx.Tx) error { return fn(q) })
}

// limitFlag defines a list command's --limit (1..10000).
func limitFlag(cmd *cobra.Command, p *int, def int) {
	cmd.Flags().IntVar(p, "limit", def, "rows (1..10000)")
}

func checkLimit(limit int) error {
	if limit < 1 || limit > 10000 {
		return fmt.Errorf("--limit %d is outside 1..10000", limit)
	}
	return nil
}

// parseParams turns --param k=v values into run parameters.
func parseParams(kvs []string) (map[string]any, error) {
	params := map[string]any{}
	for _, kv := range kvs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return nil, fmt.Errorf("--param %q: write k=v", kv)
		}
		params[k] = v
	}
	return params, nil
}

func writeJSON(stdout io.Writer, v any) error { return json.NewEncoder(stdout).Encode(v) }

func nilIfEmpty(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func optID(p *int64) string {
	if p == nil {
		return "-"
	}
	return strconv.FormatInt(*p, 10)
}

func optTime(t *time.Time) string {
	if t == nil {
		return "-"
	}
	return t.Format(time.RFC3339Nano)
}

func deref(s *string) string {
	if s == nil {
		return "-"
	}
	return *s
}

// printRows writes model (rows in the JSON model, package apimodel) as JSON, or
// rows as a table with header and one line per row.
func printRows[T any](stdout io.Writer, asJSON bool, model any, rows []T, header string, line func(io.Writer, T)) error {
	if asJSON {
		return writeJSON(stdout, model)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, header)
	for _, r := range rows {
		line(tw, r)
	}
	return tw.Flush()
}
