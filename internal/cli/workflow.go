package cli

import (
	"context"
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

	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/store"
	"github.com/baton-scheduler/baton/internal/workflow"
)

const workflowUsage = `  baton workflow apply -f FILE             validate and store a workflow (YAML); a new version only if it changed
  baton workflow list
  baton run start NAME [--param k=v]... [--version N] [--strategy end|continue] [--key K] [--wait]
  baton run list [--workflow W] [--state S] [--limit N]
  baton run show ID
  baton run pause|resume|cancel|stop ID
  baton run rerun ID (--failed | --from STEP)
`

// multiFlag collects a repeated flag.
type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(s string) error { *m = append(*m, s); return nil }

func workflowCmd(ctx context.Context, args []string, env Env, stdout, stderr io.Writer) error {
	cmd, rest, err := sub(args, "workflow", "apply", "list")
	if err != nil {
		return err
	}
	fs := newFlagSet("baton workflow "+cmd, stderr)
	var c common
	c.register(fs, env, true)
	switch cmd {
	case "apply":
		file := fs.String("f", "", "the workflow's YAML file (- for stdin)")
		if err := parseNoArgs(fs, rest); err != nil {
			return err
		}
		if *file == "" {
			return errors.New("usage: baton workflow apply -f FILE")
		}
		var data []byte
		if *file == "-" {
			data, err = io.ReadAll(io.LimitReader(os.Stdin, 16<<20))
		} else {
			data, err = os.ReadFile(*file)
		}
		if err != nil {
			return fmt.Errorf("read workflow: %w", err)
		}
		d, err := workflow.Parse(data)
		if err != nil {
			return err
		}
		if err := d.Validate(); err != nil {
			return err
		}
		pool, err := c.pool(ctx)
		if err != nil {
			return err
		}
		defer pool.Close()
		var a workflow.Applied
		if err := store.WithTx(ctx, pool, func(q *db.Queries, _ pgx.Tx) error {
			a, err = workflow.Apply(ctx, q, d)
			return err
		}); err != nil {
			return err
		}
		if c.json {
			return json.NewEncoder(stdout).Encode(a)
		}
		if a.Created {
			fmt.Fprintf(stdout, "workflow %s: stored version %d\n", a.Name, a.Version)
		} else {
			fmt.Fprintf(stdout, "workflow %s: unchanged (version %d)\n", a.Name, a.Version)
		}
		return nil
	default: // list
		if err := parseNoArgs(fs, rest); err != nil {
			return err
		}
		pool, err := c.pool(ctx)
		if err != nil {
			return err
		}
		defer pool.Close()
		rows, err := db.New(pool).WorkflowList(ctx)
		if err != nil {
			return fmt.Errorf("list workflows: %w", err)
		}
		return printRows(stdout, c.json, rows, rows, "NAME\tVERSION\tCREATED\tUPDATED", func(out io.Writer, w db.WorkflowListRow) {
			fmt.Fprintf(out, "%s\t%d\t%s\t%s\n", w.Name, w.LatestVersion, w.CreatedAt.Format(time.RFC3339), w.UpdatedAt.Format(time.RFC3339))
		})
	}
}

// leadingArg takes the positional argument before the flags (NAME, ID).
func leadingArg(rest []string, usage string) (string, []string, error) {
	if len(rest) == 0 || strings.HasPrefix(rest[0], "-") {
		return "", nil, errors.New(usage)
	}
	return rest[0], rest[1:], nil
}

func runCmd(ctx context.Context, args []string, env Env, stdout, stderr io.Writer) error {
	cmd, rest, err := sub(args, "run", "start", "list", "show", "pause", "resume", "cancel", "stop", "rerun")
	if err != nil {
		return err
	}
	fs := newFlagSet("baton run "+cmd, stderr)
	var c common
	c.register(fs, env, true)
	inTx := func(fn func(q *db.Queries) error) error { return c.inTx(ctx, fn) }
	switch cmd {
	case "start":
		var params multiFlag
		fs.Var(&params, "param", "run parameter k=v (repeatable)")
		version := fs.Int("version", 0, "version to run (default: the latest)")
		strategy := fs.String("strategy", "", "failure strategy: continue or end (default: the workflow's)")
		key := fs.String("key", "", "idempotency key: a second start with it returns the first run")
		wait := fs.Bool("wait", false, "wait until the run ends; exit 1 unless it succeeded")
		name, rest, err := leadingArg(rest, "usage: baton run start NAME [--param k=v]...")
		if err != nil {
			return err
		}
		if err := parseNoArgs(fs, rest); err != nil {
			return err
		}
		p := workflow.StartParams{Workflow: name, Version: *version, FailureStrategy: *strategy, IdempotencyKey: *key, Params: map[string]any{}}
		for _, kv := range params {
			k, v, ok := strings.Cut(kv, "=")
			if !ok {
				return fmt.Errorf("--param %q: write k=v", kv)
			}
			p.Params[k] = v
		}
		var s workflow.Started
		if err := inTx(func(q *db.Queries) error {
			s, err = workflow.Start(ctx, q, p)
			return err
		}); err != nil {
			return err
		}
		if *wait {
			return waitRun(ctx, &c, s.RunID, stdout)
		}
		if c.json {
			return json.NewEncoder(stdout).Encode(s)
		}
		fmt.Fprintln(stdout, s.RunID)
		return nil
	case "list":
		wf := fs.String("workflow", "", "filter by workflow")
		state := fs.String("state", "", "filter by state")
		limit := fs.Int("limit", 50, "rows (1..10000)")
		if err := parseList(fs, rest, limit); err != nil {
			return err
		}
		var runs []workflow.Run
		if err := inTx(func(q *db.Queries) error {
			runs, err = workflow.ListRuns(ctx, q, workflow.ListParams{Workflow: *wf, State: *state, Limit: *limit})
			return err
		}); err != nil {
			return err
		}
		return printRows(stdout, c.json, runs, runs, "ID\tWORKFLOW\tVERSION\tSTATE\tSTEPS LEFT\tCREATED\tFINISHED", func(out io.Writer, r workflow.Run) {
			fmt.Fprintf(out, "%d\t%s\t%d\t%s\t%d\t%s\t%s\n", r.ID, r.Workflow, r.Version, r.State, r.StepsLeft,
				r.CreatedAt.Format(time.RFC3339), optTime(r.FinishedAt))
		})
	}
	idArg, rest, err := leadingArg(rest, "usage: baton run "+cmd+" ID")
	if err != nil {
		return err
	}
	id, err := strconv.ParseInt(idArg, 10, 64)
	if err != nil {
		return fmt.Errorf("run id %q is not a number", idArg)
	}
	var failed bool
	var from string
	if cmd == "rerun" {
		fs.BoolVar(&failed, "failed", false, "rerun the failed, upstream_failed and canceled steps and what depends on them")
		fs.StringVar(&from, "from", "", "rerun this step and everything downstream of it")
	}
	if err := parseNoArgs(fs, rest); err != nil {
		return err
	}
	switch cmd {
	case "show":
		return showRun(ctx, &c, id, stdout)
	case "pause":
		err = inTx(func(q *db.Queries) error { return workflow.Pause(ctx, q, id) })
	case "resume":
		err = inTx(func(q *db.Queries) error { return workflow.Resume(ctx, q, id) })
	case "cancel":
		err = inTx(func(q *db.Queries) error { return workflow.End(ctx, q, id, "canceled") })
	case "stop":
		err = inTx(func(q *db.Queries) error { return workflow.End(ctx, q, id, "stopped") })
	case "rerun":
		if failed == (from != "") {
			return errors.New("usage: baton run rerun ID (--failed | --from STEP)")
		}
		var n int
		err = inTx(func(q *db.Queries) error {
			var steps []string
			if from != "" {
				steps = []string{from}
			}
			n, err = workflow.Rerun(ctx, q, id, steps, failed)
			return err
		})
		if err == nil {
			fmt.Fprintf(stdout, "run %d: %d steps to run again\n", id, n)
		}
		return err
	}
	if err == nil {
		fmt.Fprintf(stdout, "run %d: %s\n", id, map[string]string{"pause": "paused", "resume": "resumed", "cancel": "canceled", "stop": "stopped"}[cmd])
	}
	return err
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
		return json.NewEncoder(stdout).Encode(r)
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
