// Package cli holds the command lines of baton, baton-master and baton-worker:
// flags and environment in, a Config and a Run call out, errors to exit codes.
package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/apimodel"
	"github.com/baton-scheduler/baton/internal/migrate"
	"github.com/baton-scheduler/baton/internal/store"
	"github.com/baton-scheduler/baton/internal/submit"
	"github.com/baton-scheduler/baton/internal/taskops"
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

Every command takes --database-url (env BATON_DATABASE_URL); list/show/submit take --json
(one model: snake_case fields, ids as numbers, RFC 3339 UTC times to the second).
baton's tables live in the Postgres schema "baton"; add baton_schema=<schema> to the
URL to use another (baton_schema=public for an install from before schemas).
`

// usage lists every command (the workflow commands are in workflow.go).
var usage = fmt.Sprintf(usageFormat, workflowUsage+scheduleUsage)

// BatonMain is the baton CLI; extra adds commands defined elsewhere (baton dev).
func BatonMain(ctx context.Context, args []string, env Env, stdout, stderr io.Writer, extra ...Command) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stdout, usage)
		return 0
	}
	var err error
	switch args[0] {
	case "migrate":
		err = migrateCmd(ctx, args[1:], env, stdout, stderr)
	case "task":
		err = taskCmd(ctx, args[1:], env, stdout, stderr)
	case "worker":
		err = workerCmd(ctx, args[1:], env, stdout, stderr)
	case "failover":
		err = failoverCmd(ctx, args[1:], env, stdout, stderr)
	case "prune":
		err = pruneCmd(ctx, args[1:], env, stdout, stderr)
	case "workflow":
		err = workflowCmd(ctx, args[1:], env, stdout, stderr)
	case "run":
		err = runCmd(ctx, args[1:], env, stdout, stderr)
	case "schedule":
		err = scheduleCmd(ctx, args[1:], env, stdout, stderr)
	case "backfill":
		err = backfillCmd(ctx, args[1:], env, stdout, stderr)
	case "group":
		err = groupCmd(ctx, args[1:], env, stdout, stderr)
	case "token":
		err = tokenCmd(ctx, args[1:], env, stdout, stderr)
	case "healthcheck":
		err = healthcheckCmd(ctx, args[1:], env, stdout, stderr)
	default:
		err = fmt.Errorf("unknown command %q\n\n%s", args[0], usage)
		for _, c := range extra {
			if c.Name == args[0] {
				err = c.Run(ctx, args[1:], env, stdout, stderr)
			}
		}
	}
	return exitCode(stderr, "baton", err)
}

type common struct {
	dsn  string
	json bool
}

func (c *common) register(fs *flag.FlagSet, env Env, withJSON bool) {
	dsnVar(fs, &c.dsn, env)
	if withJSON {
		fs.BoolVar(&c.json, "json", false, "print JSON instead of a table")
	}
}

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

func sub(args []string, what string, choices ...string) (string, []string, error) {
	if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
		fmt.Fprint(os.Stderr, usage)
		return "", nil, flag.ErrHelp
	}
	if len(args) == 0 {
		return "", nil, fmt.Errorf("%s needs a subcommand: %s", what, strings.Join(choices, "|"))
	}
	for _, c := range choices {
		if args[0] == c {
			return c, args[1:], nil
		}
	}
	return "", nil, fmt.Errorf("unknown %s subcommand %q: use %s", what, args[0], strings.Join(choices, "|"))
}

func migrateCmd(ctx context.Context, args []string, env Env, stdout, stderr io.Writer) error {
	cmd, rest, err := sub(args, "migrate", "up", "down", "status", "version", "move-from-public")
	if err != nil {
		return err
	}
	fs := newFlagSet("baton migrate "+cmd, stderr)
	var c common
	c.register(fs, env, false)
	to := fs.Int64("to", -1, "down: roll back to this version (0 = everything); default one step")
	if err := fs.Parse(rest); err != nil {
		return err
	}
	m, err := migrate.New(ctx, c.dsn)
	if err != nil {
		return err
	}
	defer m.Close()
	switch cmd {
	case "move-from-public":
		n, err := m.MoveFromPublic(ctx)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "moved %d tables and views from public to schema %s\n", n, m.Schema())
	case "up":
		n, err := m.Up(ctx)
		if err != nil {
			return err
		}
		v, _ := m.Version(ctx)
		fmt.Fprintf(stdout, "applied %d migration(s); schema at version %d\n", n, v)
	case "down":
		if *to >= 0 {
			n, err := m.DownTo(ctx, *to)
			if err != nil {
				return err
			}
			v, err := m.Version(ctx)
			if err != nil {
				return err
			}
			fmt.Fprintf(stdout, "rolled back %d migration(s); schema at version %d\n", n, v)
		} else {
			v, err := m.Down(ctx)
			if err != nil {
				return err
			}
			fmt.Fprintf(stdout, "rolled back migration %d\n", v)
		}
	case "status":
		st, err := m.Status(ctx)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "VERSION\tAPPLIED\tAPPLIED AT\tFILE")
		for _, s := range st {
			fmt.Fprintf(tw, "%d\t%v\t%s\t%s\n", s.Version, s.Applied, s.AppliedAt, s.Name)
		}
		return tw.Flush()
	case "version":
		v, err := m.Version(ctx)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%d (binary knows up to %d)\n", v, m.Latest())
	}
	return nil
}

func taskCmd(ctx context.Context, args []string, env Env, stdout, stderr io.Writer) error {
	cmd, rest, err := sub(args, "task", "submit", "list", "show", "cancel")
	if err != nil {
		return err
	}
	fs := newFlagSet("baton task "+cmd, stderr)
	var c common
	c.register(fs, env, true)
	switch cmd {
	case "cancel":
		return taskCancel(ctx, fs, &c, rest, stdout)
	case "submit":
		group := fs.String("group", "default", "worker group")
		shell := fs.String("shell", "", "shell command (kind shell)")
		kind := fs.String("kind", "", "Go handler kind")
		fs.StringVar(kind, "type", "", "same as --kind")
		payload := fs.String("payload", "", "JSON payload (for --type), or @file")
		priority := fs.Int("priority", 0, "higher runs first (-1000..1000)")
		retries := fs.Int("max-retries", 0, "retries after a failure or timeout (0..100)")
		timeout := fs.Duration("timeout", 0, "run time limit of one attempt (0 = none)")
		retryBase := fs.Duration("retry-base", 0, "this task's retry backoff: retry n waits base·2^(n-1), ±20% (default: the group's, 1s unless set)")
		retryMax := fs.Duration("retry-max", 0, "cap of this task's retry backoff (default: the group's, 5m unless set)")
		runAt := fs.String("run-at", "", "do not run before this time (RFC 3339, e.g. 2026-12-24T09:00:00Z)")
		delay := fs.Duration("delay", 0, "do not run before now + this (the database's clock), e.g. 10m")
		tag := fs.String("tag", "", "comma-separated tags, e.g. customer=acme,invoice")
		if err := parseNoArgs(fs, rest); err != nil {
			return err
		}
		spec := submit.Spec{Group: *group, Priority: *priority, MaxRetries: *retries, Timeout: *timeout, Delay: *delay}
		if *tag != "" {
			spec.Tags = strings.Split(*tag, ",")
		}
		if *runAt != "" {
			if flagGiven(fs, "delay") {
				return errors.New("give either --run-at or --delay, not both")
			}
			t, err := time.Parse(time.RFC3339Nano, *runAt)
			if err != nil {
				return fmt.Errorf("%w: --run-at %q is not an RFC 3339 time (2026-12-24T09:00:00Z)", submit.ErrInvalid, *runAt)
			}
			spec.RunAt = t
		}
		if flagGiven(fs, "retry-base") || flagGiven(fs, "retry-max") {
			spec.Backoff = &submit.Backoff{Base: *retryBase, Max: *retryMax}
			if !flagGiven(fs, "retry-base") {
				spec.Backoff.Base = min(time.Second, *retryMax)
			}
			if !flagGiven(fs, "retry-max") {
				spec.Backoff.Max = max(5*time.Minute, *retryBase)
			}
		}
		switch {
		case *shell != "" && *kind != "":
			return errors.New("give either --shell or --type, not both")
		case *shell != "":
			spec.Kind = submit.KindShell
			if spec.Payload, err = submit.ShellPayload(*shell); err != nil {
				return err
			}
		case *kind != "":
			spec.Kind = *kind
			p := *payload
			if strings.HasPrefix(p, "@") {
				b, err := readPayloadFile(p[1:])
				if err != nil {
					return err
				}
				p = string(b)
			}
			spec.Payload = json.RawMessage(p)
		default:
			return errors.New("give --shell CMD or --type T")
		}
		if err := spec.Validate(); err != nil {
			return err
		}
		pool, err := c.pool(ctx)
		if err != nil {
			return err
		}
		defer pool.Close()
		id, err := submit.Submit(ctx, pool, spec)
		if err != nil {
			return err
		}
		if c.json {
			return json.NewEncoder(stdout).Encode(map[string]int64{"id": id})
		}
		fmt.Fprintln(stdout, id)
		return nil
	case "list":
		state := fs.String("state", "", "filter by state")
		group := fs.String("group", "", "filter by group")
		limit := fs.Int("limit", 50, "rows (1..10000)")
		tag := fs.String("tag", "", "only tasks with this tag (comma-separated: with all of them)")
		if err := parseList(fs, rest, limit); err != nil {
			return err
		}
		if *state != "" && !taskStates[*state] {
			return fmt.Errorf("unknown state %q: use scheduled, queued, dispatched, running, succeeded, failed, timed_out or canceled", *state)
		}
		var tags []string
		if *tag != "" {
			tags = strings.Split(*tag, ",")
		}
		var rows []db.Task
		if err := c.inTx(ctx, func(q *db.Queries) (err error) {
			rows, err = taskops.ListPage(ctx, q, db.TaskListPageParams{State: nilIfEmpty(*state), GroupName: nilIfEmpty(*group), Tags: tags, MaxRows: int32(*limit)})
			if err != nil {
				return fmt.Errorf("list tasks: %w", err)
			}
			return nil
		}); err != nil {
			return err
		}
		return printRows(stdout, c.json, apimodel.Tasks(rows), rows, "ID\tGROUP\tKIND\tSTATE\tATTEMPT\tWORKER\tFAILOVERS\tSUBMITTED", func(out io.Writer, t db.Task) {
			fmt.Fprintf(out, "%d\t%s\t%s\t%s\t%d\t%s\t%d\t%s\n", t.ID, t.GroupName, t.Kind, t.State, t.Attempt,
				optID(t.WorkerSessionID), t.FailoverCount, t.SubmittedAt.Format(time.RFC3339))
		})
	default: // show
		if err := fs.Parse(rest); err != nil {
			return err
		}
		if fs.NArg() < 1 {
			return errors.New("usage: baton task show ID [--json]")
		}
		// Flags may follow the id (baton task show 7 --json).
		id0 := fs.Arg(0)
		if err := parseNoArgs(fs, fs.Args()[1:]); err != nil {
			return err
		}
		id, err := strconv.ParseInt(id0, 10, 64)
		if err != nil {
			return fmt.Errorf("task id %q is not a number", id0)
		}
		pool, err := c.pool(ctx)
		if err != nil {
			return err
		}
		defer pool.Close()
		q := db.New(pool)
		t, err := q.TaskGet(ctx, id)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("task %d not found", id)
		}
		if err != nil {
			return fmt.Errorf("get task: %w", err)
		}
		attempts, err := q.TaskAttemptList(ctx, id)
		if err != nil {
			return fmt.Errorf("list attempts: %w", err)
		}
		if c.json {
			return json.NewEncoder(stdout).Encode(apimodel.TaskDetail{Task: apimodel.TaskFromRow(t), Attempts: apimodel.Attempts(attempts)})
		}
		// attempt counts every run (retries, snoozes, failovers); retries only the retries used.
		fmt.Fprintf(stdout, "task %d  group %s  kind %s  state %s  attempt %d  retries used %d of %d  failovers %d\n",
			t.ID, t.GroupName, t.Kind, t.State, t.Attempt, t.Retries, t.MaxRetries, t.FailoverCount)
		if t.SubmittedMaxRetries != nil {
			fmt.Fprintf(stdout, "failed permanently (the handler said so): submitted with max retries %d\n", *t.SubmittedMaxRetries)
		}
		if len(t.Tags) > 0 {
			fmt.Fprintf(stdout, "tags: %s\n", strings.Join(t.Tags, ","))
		}
		fmt.Fprintf(stdout, "payload: %s\n", t.Payload)
		if t.State == "scheduled" || t.State == "queued" {
			fmt.Fprintf(stdout, "runs at: %s\n", t.AvailableAt.Format(time.RFC3339Nano))
		}
		if t.LastError != "" {
			fmt.Fprintf(stdout, "last error: %s\n", t.LastError)
		}
		if t.Output != "" {
			fmt.Fprintf(stdout, "output:\n%s\n", t.Output)
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ATTEMPT\tWORKER\tREASON\tOUTCOME\tDISPATCHED\tSTARTED\tFINISHED\tERROR")
		for _, a := range attempts {
			outcome := "(in flight)"
			if a.Outcome != nil {
				outcome = *a.Outcome
			}
			fmt.Fprintf(tw, "%d\t%d\t%s\t%s\t%s\t%s\t%s\t%s\n", a.Attempt, a.WorkerSessionID, a.Reason, outcome,
				a.DispatchedAt.Format(time.RFC3339Nano), optTime(a.StartedAt), optTime(a.FinishedAt), a.Error)
		}
		return tw.Flush()
	}
}

// readPayloadFile reads --payload @file, at most one byte past the payload
// limit: a huge or endless file (/dev/zero) is refused, not read into memory.
func readPayloadFile(name string) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, fmt.Errorf("read payload: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, submit.MaxPayloadBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read payload %s: %w", name, err)
	}
	if len(b) > submit.MaxPayloadBytes {
		return nil, fmt.Errorf("%w: payload file %s is larger than the limit of %d bytes (1 MiB)", submit.ErrInvalid, name, submit.MaxPayloadBytes)
	}
	return b, nil
}

func workerCmd(ctx context.Context, args []string, env Env, stdout, stderr io.Writer) error {
	_, rest, err := sub(args, "worker", "list")
	if err != nil {
		return err
	}
	fs := newFlagSet("baton worker list", stderr)
	var c common
	c.register(fs, env, true)
	group := fs.String("group", "", "filter by group")
	all := fs.Bool("all", false, "include dead and stopped sessions")
	limit := fs.Int("limit", 100, "rows (1..10000)")
	if err := parseList(fs, rest, limit); err != nil {
		return err
	}
	pool, err := c.pool(ctx)
	if err != nil {
		return err
	}
	defer pool.Close()
	rows, err := db.New(pool).WorkerSessionList(ctx, db.WorkerSessionListParams{GroupName: nilIfEmpty(*group), IncludeEnded: *all, MaxRows: int32(*limit)})
	if err != nil {
		return fmt.Errorf("list workers: %w", err)
	}
	return printRows(stdout, c.json, apimodel.Workers(rows), rows, "SESSION\tNAME\tGROUP\tSTATE\tSLOTS\tACTIVE\tHEARTBEAT AGE\tHOST\tPID", func(out io.Writer, w db.WorkerSessionListRow) {
		fmt.Fprintf(out, "%d\t%s\t%s\t%s\t%d\t%d\t%.1fs\t%s\t%d\n", w.ID, w.Name, w.GroupName, w.State, w.Slots, w.ActiveTasks,
			w.HeartbeatAgeSeconds, w.Host, w.Pid)
	})
}

func failoverCmd(ctx context.Context, args []string, env Env, stdout, stderr io.Writer) error {
	_, rest, err := sub(args, "failover", "list")
	if err != nil {
		return err
	}
	fs := newFlagSet("baton failover list", stderr)
	var c common
	c.register(fs, env, true)
	limit := fs.Int("limit", 50, "rows (1..10000)")
	if err := parseList(fs, rest, limit); err != nil {
		return err
	}
	pool, err := c.pool(ctx)
	if err != nil {
		return err
	}
	defer pool.Close()
	rows, err := db.New(pool).FailoverEventList(ctx, db.FailoverEventListParams{MaxRows: int32(*limit)})
	if err != nil {
		return fmt.Errorf("list failovers: %w", err)
	}
	return printRows(stdout, c.json, apimodel.FailoverEvents(rows), rows, "ID\tKIND\tSESSION\tGROUP\tBY MASTER\tDEADLINE\tFINISHED\tREASSIGNED\tQUEUED\tPASSES", func(out io.Writer, f db.FailoverEvent) {
		g := ""
		if f.GroupName != nil {
			g = *f.GroupName
		}
		fmt.Fprintf(out, "%d\t%s\t%d\t%s\t%s\t%s\t%s\t%d\t%d\t%d\n", f.ID, f.Kind, f.SessionID, g, optID(f.DetectedBy),
			f.Deadline.Format(time.RFC3339Nano), optTime(f.FinishedAt), f.TasksReassigned, f.TasksQueued, f.Passes)
	})
}

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

var taskStates = map[string]bool{"scheduled": true, "queued": true, "dispatched": true, "running": true, "succeeded": true,
	"failed": true, "timed_out": true, "canceled": true}

// parseNoArgs parses flags and refuses leftover words (an unquoted shell command).
func parseNoArgs(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q (quote a shell command: --shell 'echo hi')", fs.Arg(0))
	}
	return nil
}

// parseList parses a list command's flags and checks its --limit.
func parseList(fs *flag.FlagSet, args []string, limit *int) error {
	if err := parseNoArgs(fs, args); err != nil {
		return err
	}
	if *limit < 1 || *limit > 10000 {
		return fmt.Errorf("--limit %d is outside 1..10000", *limit)
	}
	return nil
}

// printRows writes model (rows in the JSON model, package apimodel) as JSON, or
// rows as a table with header and one line per row.
func printRows[T any](stdout io.Writer, asJSON bool, model any, rows []T, header string, line func(io.Writer, T)) error {
	if asJSON {
		return json.NewEncoder(stdout).Encode(model)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, header)
	for _, r := range rows {
		line(tw, r)
	}
	return tw.Flush()
}

// flagGiven reports whether flag name was set on the command line.
func flagGiven(fs *flag.FlagSet, name string) bool {
	given := false
	fs.Visit(func(f *flag.Flag) { given = given || f.Name == name })
	return given
}
