package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/apimodel"
	"github.com/baton-scheduler/baton/internal/submit"
	"github.com/baton-scheduler/baton/internal/taskops"
)

// cliActor is how the audit log names the command line.
var cliActor = taskops.Actor{Name: "cli"}

func (a *app) taskCmd() *cobra.Command {
	return groupCommand("task", "submit, list, show and cancel tasks",
		`Tasks are units of work run by the workers of one group: a shell command
(--shell) or a Go handler kind (--kind) with a JSON payload.`,
		`  baton task submit --group etl --shell 'pg_dump mydb > /backups/x.sql' --max-retries 3 --timeout 10m
  baton task list --state failed --json
  baton task show 42
  baton task cancel 42 43`,
		a.taskSubmitCmd(), a.taskListCmd(), a.taskShowCmd(), a.taskCancelCmd())
}

func (a *app) taskSubmitCmd() *cobra.Command {
	var c common
	var (
		group, shell, kind, payload, runAt, tag string
		priority, retries                       int
		timeout, retryBase, retryMax, delay     time.Duration
	)
	cmd := &cobra.Command{
		Use:   "submit --group G (--shell CMD | --kind K [--payload JSON])",
		Short: "submit a task; prints its id",
		Long: `Submit a task to a worker group: a shell command (--shell, run with /bin/sh -c by
baton-worker) or a Go handler kind (--kind, alias --type) with a JSON payload
(--payload JSON, or @file). The group must exist (a worker creates its group on
first start; baton group create makes one ahead). Invalid input is refused before
anything is stored.`,
		Example: `  baton task submit --group etl --shell 'pg_dump mydb > /backups/x.sql' --max-retries 3 --timeout 10m
  baton task submit --group mail --kind mail.send --payload '{"to":"a@example.com"}' --tag customer=acme
  baton task submit --group etl --kind report --payload @report.json --run-at 2026-12-24T09:00:00Z
  baton task submit --group etl --shell 'make nightly' --delay 10m --retry-base 5s --retry-max 10m`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usageErrorf(cmd, "unexpected argument %q (quote a shell command: --shell 'echo hi')", args[0])
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			given := cmd.Flags().Changed
			spec := submit.Spec{Group: group, Priority: priority, MaxRetries: retries, Timeout: timeout, Delay: delay}
			if tag != "" {
				spec.Tags = strings.Split(tag, ",")
			}
			if runAt != "" {
				if given("delay") {
					return errors.New("give either --run-at or --delay, not both")
				}
				t, err := time.Parse(time.RFC3339Nano, runAt)
				if err != nil {
					return fmt.Errorf("%w: --run-at %q is not an RFC 3339 time (2026-12-24T09:00:00Z)", submit.ErrInvalid, runAt)
				}
				spec.RunAt = t
			}
			if given("retry-base") || given("retry-max") {
				spec.Backoff = &submit.Backoff{Base: retryBase, Max: retryMax}
				if !given("retry-base") {
					spec.Backoff.Base = min(time.Second, retryMax)
				}
				if !given("retry-max") {
					spec.Backoff.Max = max(5*time.Minute, retryBase)
				}
			}
			var err error
			switch {
			case shell != "" && kind != "":
				return errors.New("give either --shell or --type, not both")
			case shell != "":
				spec.Kind = submit.KindShell
				if spec.Payload, err = submit.ShellPayload(shell); err != nil {
					return err
				}
			case kind != "":
				spec.Kind = kind
				p := payload
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
				return writeJSON(a.stdout, map[string]int64{"id": id})
			}
			fmt.Fprintln(a.stdout, id)
			return nil
		},
	}
	c.register(cmd, a.env, true)
	f := cmd.Flags()
	f.StringVar(&group, "group", "default", "worker group")
	f.StringVar(&shell, "shell", "", "shell command (kind shell)")
	f.StringVar(&kind, "kind", "", "Go handler kind")
	f.StringVar(&kind, "type", "", "same as --kind")
	f.StringVar(&payload, "payload", "", "JSON payload (for --kind), or @file")
	f.IntVar(&priority, "priority", 0, "higher runs first (-1000..1000)")
	f.IntVar(&retries, "max-retries", 0, "retries after a failure or timeout (0..100)")
	f.DurationVar(&timeout, "timeout", 0, "run time limit of one attempt (0 = none)")
	f.DurationVar(&retryBase, "retry-base", 0, "this task's retry backoff: retry n waits base·2^(n-1), ±20% (default: the group's, 1s unless set)")
	f.DurationVar(&retryMax, "retry-max", 0, "cap of this task's retry backoff (default: the group's, 5m unless set)")
	f.StringVar(&runAt, "run-at", "", "do not run before this time (RFC 3339, e.g. 2026-12-24T09:00:00Z)")
	f.DurationVar(&delay, "delay", 0, "do not run before now + this (the database's clock), e.g. 10m")
	f.StringVar(&tag, "tag", "", "comma-separated tags, e.g. customer=acme,invoice")
	return cmd
}

func (a *app) taskListCmd() *cobra.Command {
	var c common
	var state, group, tag string
	var limit int
	cmd := &cobra.Command{
		Use:   "list",
		Short: "list tasks, newest first",
		Long: `List tasks, newest first, filtered by state, group and tags. States: scheduled,
queued, dispatched, running, succeeded, failed, timed_out, canceled.`,
		Example: `  baton task list --state running
  baton task list --group etl --tag customer=acme --limit 200
  baton task list --state failed --json | jq -r '.[] | "\(.id) \(.last_error)"'`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			if err := checkLimit(limit); err != nil {
				return err
			}
			if state != "" && !taskStates[state] {
				return fmt.Errorf("unknown state %q: use scheduled, queued, dispatched, running, succeeded, failed, timed_out or canceled", state)
			}
			var tags []string
			if tag != "" {
				tags = strings.Split(tag, ",")
			}
			var rows []db.Task
			if err := c.inTx(ctx, func(q *db.Queries) (err error) {
				rows, err = taskops.ListPage(ctx, q, db.TaskListPageParams{State: nilIfEmpty(state), GroupName: nilIfEmpty(group), Tags: tags, MaxRows: int32(limit)})
				if err != nil {
					return fmt.Errorf("list tasks: %w", err)
				}
				return nil
			}); err != nil {
				return err
			}
			return printRows(a.stdout, c.json, apimodel.Tasks(rows), rows, "ID\tGROUP\tKIND\tSTATE\tATTEMPT\tWORKER\tFAILOVERS\tSUBMITTED", func(out io.Writer, t db.Task) {
				fmt.Fprintf(out, "%d\t%s\t%s\t%s\t%d\t%s\t%d\t%s\n", t.ID, t.GroupName, t.Kind, t.State, t.Attempt,
					optID(t.WorkerSessionID), t.FailoverCount, t.SubmittedAt.Format(time.RFC3339))
			})
		},
	}
	c.register(cmd, a.env, true)
	cmd.Flags().StringVar(&state, "state", "", "filter by state")
	cmd.Flags().StringVar(&group, "group", "", "filter by group")
	limitFlag(cmd, &limit, 50)
	cmd.Flags().StringVar(&tag, "tag", "", "only tasks with this tag (comma-separated: with all of them)")
	return cmd
}

func (a *app) taskShowCmd() *cobra.Command {
	var c common
	cmd := &cobra.Command{
		Use:   "show ID",
		Short: "show a task with every attempt",
		Long: `Show a task: state, retries, payload, output, last error, and every attempt with
its worker session, reason, outcome and times.`,
		Example: `  baton task show 42
  baton task show 42 --json | jq '.attempts[] | {attempt, worker_session_id, outcome}'`,
		Args: oneArg("baton task show ID [--json]"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, stdout := cmd.Context(), a.stdout
			id, err := strconv.ParseInt(args[0], 10, 64)
			if err != nil {
				return fmt.Errorf("task id %q is not a number", args[0])
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
				return writeJSON(stdout, apimodel.TaskDetail{Task: apimodel.TaskFromRow(t), Attempts: apimodel.Attempts(attempts)})
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
		},
	}
	c.register(cmd, a.env, true)
	return cmd
}

// taskCancelCmd is `baton task cancel ID...`: each task in its own
// transaction, audited; finished tasks are reported, unknown ids fail the
// command.
func (a *app) taskCancelCmd() *cobra.Command {
	var c common
	cmd := &cobra.Command{
		Use:   "cancel ID...",
		Short: "cancel tasks that have not finished",
		Long: `Cancel tasks that have not finished, each in its own transaction, recorded in the
audit log. A running task's worker stops it. A task already finished is reported
as such; an unknown id fails the command (exit 1) after the others were canceled.`,
		Example: `  baton task cancel 42
  baton task cancel 42 43 44 --json`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usageErrorf(cmd, "usage: baton task cancel ID... [--json]")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			ids, err := parseIDs("task", args)
			if err != nil {
				return err
			}
			return a.taskCancel(cmd, &c, ids)
		},
	}
	c.register(cmd, a.env, true)
	return cmd
}

func (a *app) taskCancel(cmd *cobra.Command, c *common, ids []int64) error {
	ctx, stdout := cmd.Context(), a.stdout
	pool, err := c.pool(ctx)
	if err != nil {
		return err
	}
	defer pool.Close()
	var missing []string
	out := []apimodel.Task{}
	for _, id := range ids {
		var row db.Task
		var changed bool
		err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			q := db.New(tx)
			var err error
			if row, changed, err = taskops.Cancel(ctx, q, id, "canceled by baton task cancel"); err != nil {
				return err
			}
			if !changed {
				return nil
			}
			return taskops.Audit(ctx, q, cliActor, "task.cancel", fmt.Sprint(id), map[string]any{"ids": []int64{id}})
		})
		switch {
		case errors.Is(err, taskops.ErrNotFound):
			missing = append(missing, strconv.FormatInt(id, 10))
			continue
		case err != nil:
			return err
		}
		out = append(out, apimodel.TaskFromRow(row))
		if c.json {
			continue
		}
		if changed {
			fmt.Fprintf(stdout, "task %d canceled\n", id)
		} else {
			fmt.Fprintf(stdout, "task %d already %s\n", id, row.State)
		}
	}
	if c.json {
		if err := writeJSON(stdout, out); err != nil {
			return err
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("task %s not found", strings.Join(missing, ", "))
	}
	return nil
}

// parseIDs parses positive ids of what (task, token).
func parseIDs(what string, args []string) ([]int64, error) {
	ids := make([]int64, 0, len(args))
	for _, s := range args {
		id, err := strconv.ParseInt(s, 10, 64)
		if err != nil || id <= 0 {
			return nil, fmt.Errorf("%s id %q is not a positive number", what, s)
		}
		ids = append(ids, id)
	}
	return ids, nil
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

var taskStates = map[string]bool{"scheduled": true, "queued": true, "dispatched": true, "running": true, "succeeded": true,
	"failed": true, "timed_out": true, "canceled": true}
