package cli

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/apimodel"
	"github.com/baton-scheduler/baton/internal/workflow"
)

const runUsage = `  baton run start NAME [--param k=v]... [--version N] [--strategy end|continue] [--key K] [--wait]
  baton run list [--workflow W] [--state S] [--limit N]
  baton run show ID
  baton run pause|resume|cancel|stop ID
  baton run rerun ID (--failed | --from STEP)
`

func (a *app) runCmd() *cobra.Command {
	return groupCommand("run", "start, list, show and steer workflow runs",
		`A run is one execution of a workflow version: its steps become tasks as their
dependencies finish. No process holds a run: the transaction that records a step's
result readies its successors, so a master's or worker's death cannot lose it.`,
		`  baton run start nightly-report --param day=2026-12-05 --wait
  baton run list --state running
  baton run show 1 --json
  baton run rerun 1 --failed`,
		a.runStartCmd(), a.runListCmd(), a.runShowCmd(),
		a.runSetCmd("pause", "paused", "pause a run: no new step starts; running steps finish",
			func(ctx context.Context, q *db.Queries, id int64) error { return workflow.Pause(ctx, q, id) }),
		a.runSetCmd("resume", "resumed", "resume a paused run",
			func(ctx context.Context, q *db.Queries, id int64) error { return workflow.Resume(ctx, q, id) }),
		a.runSetCmd("cancel", "canceled", "cancel a run: its unfinished tasks are canceled",
			func(ctx context.Context, q *db.Queries, id int64) error { return workflow.End(ctx, q, id, "canceled") }),
		a.runSetCmd("stop", "stopped", "stop a run: no new step starts, running tasks finish, the run ends stopped",
			func(ctx context.Context, q *db.Queries, id int64) error { return workflow.End(ctx, q, id, "stopped") }),
		a.runRerunCmd(),
	)
}

func (a *app) runStartCmd() *cobra.Command {
	var c common
	var params []string
	var version int
	var strategy, key string
	var wait bool
	cmd := &cobra.Command{
		Use:   "start NAME",
		Short: "start a run of a workflow; prints its id",
		Long: `Start a run of a workflow (its latest version unless --version). Parameters are
checked against the workflow's; an idempotency key (--key) makes a second start
with it return the first run. --wait polls until the run ends, prints it, and
exits 1 unless it succeeded.`,
		Example: `  baton run start nightly-report --param day=2026-12-05
  baton run start nightly-report --param day=2026-12-05 --key nightly-2026-12-05 --wait`,
		Args: oneArg("baton run start NAME [--param k=v]..."),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			pm, err := parseParams(params)
			if err != nil {
				return err
			}
			p := workflow.StartParams{Workflow: args[0], Version: version, FailureStrategy: strategy, IdempotencyKey: key, Params: pm}
			var s workflow.Started
			if err := c.inTx(ctx, func(q *db.Queries) error {
				s, err = workflow.Start(ctx, q, p)
				return err
			}); err != nil {
				return err
			}
			if wait {
				return waitRun(ctx, &c, s.RunID, a.stdout)
			}
			if c.json {
				return writeJSON(a.stdout, apimodel.RunStarted{RunID: s.RunID, Created: s.Created})
			}
			fmt.Fprintln(a.stdout, s.RunID)
			return nil
		},
	}
	c.register(cmd, a.env, true)
	cmd.Flags().StringArrayVar(&params, "param", nil, "run parameter k=v (repeatable)")
	cmd.Flags().IntVar(&version, "version", 0, "version to run (default: the latest)")
	cmd.Flags().StringVar(&strategy, "strategy", "", "failure strategy: continue or end (default: the workflow's)")
	cmd.Flags().StringVar(&key, "key", "", "idempotency key: a second start with it returns the first run")
	cmd.Flags().BoolVar(&wait, "wait", false, "wait until the run ends; exit 1 unless it succeeded")
	return cmd
}

func (a *app) runListCmd() *cobra.Command {
	var c common
	var wf, state string
	var limit int
	cmd := &cobra.Command{
		Use:     "list",
		Short:   "list runs, newest first",
		Long:    "List runs, newest first, by workflow and state (running, paused, succeeded, failed, canceled, stopped).",
		Example: "  baton run list\n  baton run list --workflow nightly-report --state failed --json",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			if err := checkLimit(limit); err != nil {
				return err
			}
			var runs []workflow.Run
			if err := c.inTx(ctx, func(q *db.Queries) (err error) {
				runs, err = workflow.ListRuns(ctx, q, workflow.ListParams{Workflow: wf, State: state, Limit: limit})
				return err
			}); err != nil {
				return err
			}
			return printRows(a.stdout, c.json, apimodel.Runs(runs), runs, "ID\tWORKFLOW\tVERSION\tSTATE\tSTEPS LEFT\tCREATED\tFINISHED", func(out io.Writer, r workflow.Run) {
				fmt.Fprintf(out, "%d\t%s\t%d\t%s\t%d\t%s\t%s\n", r.ID, r.Workflow, r.Version, r.State, r.StepsLeft,
					r.CreatedAt.Format(time.RFC3339), optTime(r.FinishedAt))
			})
		},
	}
	c.register(cmd, a.env, true)
	cmd.Flags().StringVar(&wf, "workflow", "", "filter by workflow")
	cmd.Flags().StringVar(&state, "state", "", "filter by state")
	limitFlag(cmd, &limit, 50)
	return cmd
}

// runID parses a run id argument.
func runID(s string) (int64, error) {
	id, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("run id %q is not a number", s)
	}
	return id, nil
}

func (a *app) runShowCmd() *cobra.Command {
	var c common
	cmd := &cobra.Command{
		Use:     "show ID",
		Short:   "show a run with its steps",
		Long:    "Show a run: workflow version, state, failure strategy, parameters, and every step with its state, trigger rule, task, attempt and error.",
		Example: "  baton run show 1\n  baton run show 1 --json | jq '.steps[] | {name, state}'",
		Args:    oneArg("baton run show ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := runID(args[0])
			if err != nil {
				return err
			}
			return showRun(cmd.Context(), &c, id, a.stdout)
		},
	}
	c.register(cmd, a.env, true)
	return cmd
}

// runSetCmd is pause, resume, cancel or stop: one call on the run, then
// "run ID: <done>".
func (a *app) runSetCmd(name, done, short string, fn func(context.Context, *db.Queries, int64) error) *cobra.Command {
	var c common
	cmd := &cobra.Command{
		Use:     name + " ID",
		Short:   short,
		Long:    short + ".",
		Example: "  baton run " + name + " 1",
		Args:    oneArg("baton run " + name + " ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			id, err := runID(args[0])
			if err != nil {
				return err
			}
			if err := c.inTx(ctx, func(q *db.Queries) error { return fn(ctx, q, id) }); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "run %d: %s\n", id, done)
			return nil
		},
	}
	c.register(cmd, a.env, true) // --json: accepted, as before; these print one line
	return cmd
}

func (a *app) runRerunCmd() *cobra.Command {
	var c common
	var failed bool
	var from string
	cmd := &cobra.Command{
		Use:   "rerun ID (--failed | --from STEP)",
		Short: "run steps of a finished run again, in the same run",
		Long: `Run steps of a run again, in the same run: --failed reruns the failed,
upstream_failed and canceled steps and what depends on them; --from STEP reruns
that step and everything downstream of it.`,
		Example: "  baton run rerun 1 --failed\n  baton run rerun 1 --from join",
		Args:    oneArg("baton run rerun ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			id, err := runID(args[0])
			if err != nil {
				return err
			}
			if failed == (from != "") {
				return usageErrorf(cmd, "usage: baton run rerun ID (--failed | --from STEP)")
			}
			var n int
			if err := c.inTx(ctx, func(q *db.Queries) error {
				var steps []string
				if from != "" {
					steps = []string{from}
				}
				n, err = workflow.Rerun(ctx, q, id, steps, failed)
				return err
			}); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "run %d: %d steps to run again\n", id, n)
			return nil
		},
	}
	c.register(cmd, a.env, true) // --json: accepted, as before
	cmd.Flags().BoolVar(&failed, "failed", false, "rerun the failed, upstream_failed and canceled steps and what depends on them")
	cmd.Flags().StringVar(&from, "from", "", "rerun this step and everything downstream of it")
	return cmd
}

func showRun(ctx context.Context, c *common, id int64, stdout io.Writer) error {
	pool, err := c.pool(ctx)
	if err != nil {
		return err
	}
	defer pool.Close()
	r, err := workflow.GetRun(ctx, db.New(pool), id)
	if err != nil {
		return err
	}
	if c.json {
		return writeJSON(stdout, apimodel.RunFrom(r))
	}
	fmt.Fprintf(stdout, "run %d  workflow %s v%d  state %s  strategy %s  params %s\n", r.ID, r.Workflow, r.Version, r.State, r.FailureStrategy, r.Params)
	if r.ParentRunID != 0 {
		fmt.Fprintf(stdout, "child of run %d\n", r.ParentRunID)
	}
	if r.Error != "" {
		fmt.Fprintf(stdout, "error: %s\n", r.Error)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "STEP\tSTATE\tRULE\tTASK\tATTEMPT\tTASKS\tFINISHED\tERROR")
	for _, s := range r.Steps {
		task := "-"
		switch {
		case s.TaskID != 0:
			task = strconv.FormatInt(s.TaskID, 10)
		case s.ChildRunID != 0:
			task = fmt.Sprintf("run %d", s.ChildRunID)
		case s.Items > 0:
			task = fmt.Sprintf("%d/%d items", s.ItemsDone, s.Items)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%s\t%s\n", s.Name, s.State, s.TriggerRule, task, s.Attempt, s.Tasks, optTime(s.FinishedAt), s.Error)
	}
	return tw.Flush()
}

// waitRun polls until the run ends (the CLI holds no listener).
func waitRun(ctx context.Context, c *common, id int64, stdout io.Writer) error {
	pool, err := c.pool(ctx)
	if err != nil {
		return err
	}
	defer pool.Close()
	for {
		r, err := workflow.GetRun(ctx, db.New(pool), id)
		if err != nil {
			return err
		}
		if workflow.Terminal(r.State) {
			if err := showRun(ctx, c, id, stdout); err != nil {
				return err
			}
			if r.State != "succeeded" {
				return fmt.Errorf("run %d %s", id, r.State)
			}
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}
