package cli

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/apimodel"
	"github.com/baton-scheduler/baton/internal/master"
	"github.com/baton-scheduler/baton/internal/taskops"
)

func (a *app) groupCmd() *cobra.Command {
	return groupCommand("group", "list, show and create worker groups",
		`A worker group is a queue with its workers: every task goes to one group and only
that group's workers run it. A worker creates its group on first start; create
one ahead to submit before any worker ran.`,
		`  baton group list
  baton group show etl --json
  baton group create etl --description 'nightly extracts'`,
		a.groupListCmd(), a.groupShowCmd(), a.groupCreateCmd())
}

// groupReadFlags are the flags of group list and show.
func groupReadFlags(cmd *cobra.Command, a *app, c *common, workerTimeout *time.Duration) {
	c.register(cmd, a.env, true)
	cmd.Flags().DurationVar(workerTimeout, "worker-timeout", master.WorkerTimeoutDefault, "heartbeat age after which a worker is not counted live (the masters' value)")
}

func (a *app) groupListCmd() *cobra.Command {
	var c common
	var workerTimeout time.Duration
	cmd := &cobra.Command{
		Use:     "list",
		Short:   "list groups with their live workers and waiting tasks",
		Long:    "List every worker group: paused or not, live workers (heartbeat younger than --worker-timeout), waiting tasks.",
		Example: "  baton group list\n  baton group list --json",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			groups, err := a.readGroups(cmd.Context(), &c, "", workerTimeout)
			if err != nil {
				return err
			}
			return printRows(a.stdout, c.json, groups, groups, "NAME\tPAUSED\tLIVE WORKERS\tWAITING\tDESCRIPTION", func(out io.Writer, g apimodel.Group) {
				fmt.Fprintf(out, "%s\t%v\t%d\t%d\t%s\n", g.Name, g.Paused, g.LiveWorkers, g.WaitingTasks, g.Description)
			})
		},
	}
	groupReadFlags(cmd, a, &c, &workerTimeout)
	return cmd
}

func (a *app) groupShowCmd() *cobra.Command {
	var c common
	var workerTimeout time.Duration
	cmd := &cobra.Command{
		Use:     "show NAME",
		Short:   "show one group",
		Long:    "Show one worker group: paused or not, live workers, waiting tasks, retry backoff, description.",
		Example: "  baton group show etl\n  baton group show etl --json",
		Args:    oneArg("baton group show NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			groups, err := a.readGroups(cmd.Context(), &c, name, workerTimeout)
			if err != nil {
				return err
			}
			if len(groups) == 0 {
				return fmt.Errorf("group %q not found", name)
			}
			g := groups[0]
			if c.json {
				return writeJSON(a.stdout, g)
			}
			fmt.Fprintf(a.stdout, "group %s  paused %v  live workers %d  waiting tasks %d  retry backoff %s..%s  created %s\n",
				g.Name, g.Paused, g.LiveWorkers, g.WaitingTasks, time.Duration(g.RetryBackoff.BaseMs)*time.Millisecond,
				time.Duration(g.RetryBackoff.MaxMs)*time.Millisecond, g.CreatedAt.UTC().Format(time.RFC3339))
			if g.Description != "" {
				fmt.Fprintf(a.stdout, "description: %s\n", g.Description)
			}
			return nil
		},
	}
	groupReadFlags(cmd, a, &c, &workerTimeout)
	return cmd
}

func (a *app) readGroups(ctx context.Context, c *common, name string, workerTimeout time.Duration) ([]apimodel.Group, error) {
	pool, err := c.pool(ctx)
	if err != nil {
		return nil, err
	}
	defer pool.Close()
	return ListGroups(ctx, db.New(pool), name, workerTimeout)
}

func (a *app) groupCreateCmd() *cobra.Command {
	var c common
	var desc string
	cmd := &cobra.Command{
		Use:   "create NAME",
		Short: "create a group (no-op if it exists)",
		Long: `Create a worker group (recorded in the audit log); an existing group is left as it
is. Names: 1-63 of letters, digits, _ . - starting with a letter or digit.`,
		Example: "  baton group create etl --description 'nightly extracts'",
		Args:    oneArg("baton group create NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, name := cmd.Context(), args[0]
			pool, err := c.pool(ctx)
			if err != nil {
				return err
			}
			defer pool.Close()
			var n int64
			err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
				q := db.New(tx)
				var err error
				if n, err = q.GroupCreate(ctx, db.GroupCreateParams{Name: name, Description: desc}); err != nil {
					return err
				}
				if n == 0 {
					return nil
				}
				return taskops.Audit(ctx, q, cliActor, "group.create", name, map[string]any{"description": desc})
			})
			if err != nil {
				return fmt.Errorf("create group %q (1-63 of letters, digits, _ . - starting with a letter or digit): %w", name, err)
			}
			if c.json {
				return writeJSON(a.stdout, map[string]any{"name": name, "created": n == 1})
			}
			if n == 1 {
				fmt.Fprintf(a.stdout, "group %s created\n", name)
			} else {
				fmt.Fprintf(a.stdout, "group %s exists\n", name)
			}
			return nil
		},
	}
	c.register(cmd, a.env, true)
	cmd.Flags().StringVar(&desc, "description", "", "the group's description")
	return cmd
}

// ListGroups reads groups in the JSON model (name "" = all).
func ListGroups(ctx context.Context, q *db.Queries, name string, workerTimeout time.Duration) ([]apimodel.Group, error) {
	rows, err := q.GroupList(ctx, db.GroupListParams{WorkerTimeoutMs: workerTimeout.Milliseconds(), Name: nilIfEmpty(name)})
	if err != nil {
		return nil, fmt.Errorf("list groups: %w", err)
	}
	return apimodel.Groups(rows), nil
}
