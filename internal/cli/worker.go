package cli

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/apimodel"
)

func (a *app) workerCmd() *cobra.Command {
	return groupCommand("worker", "list worker sessions",
		`A worker session is one run of a baton-worker process (or an embedded worker): its
group, slots, state (active, draining, dead, stopped) and heartbeat age.`,
		"  baton worker list\n  baton worker list --group etl --all --json",
		a.workerListCmd())
}

func (a *app) workerListCmd() *cobra.Command {
	var c common
	var group string
	var all bool
	var limit int
	cmd := &cobra.Command{
		Use:   "list",
		Short: "list live worker sessions (--all: also dead and stopped)",
		Long: `List worker sessions with their group, state, slots, active tasks and heartbeat
age; live ones only unless --all.`,
		Example: "  baton worker list\n  baton worker list --group etl --all --json",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			if err := checkLimit(limit); err != nil {
				return err
			}
			pool, err := c.pool(ctx)
			if err != nil {
				return err
			}
			defer pool.Close()
			rows, err := db.New(pool).WorkerSessionList(ctx, db.WorkerSessionListParams{GroupName: nilIfEmpty(group), IncludeEnded: all, MaxRows: int32(limit)})
			if err != nil {
				return fmt.Errorf("list workers: %w", err)
			}
			return printRows(a.stdout, c.json, apimodel.Workers(rows), rows, "SESSION\tNAME\tGROUP\tSTATE\tSLOTS\tACTIVE\tHEARTBEAT AGE\tHOST\tPID", func(out io.Writer, w db.WorkerSessionListRow) {
				fmt.Fprintf(out, "%d\t%s\t%s\t%s\t%d\t%d\t%.1fs\t%s\t%d\n", w.ID, w.Name, w.GroupName, w.State, w.Slots, w.ActiveTasks,
					w.HeartbeatAgeSeconds, w.Host, w.Pid)
			})
		},
	}
	c.register(cmd, a.env, true)
	cmd.Flags().StringVar(&group, "group", "", "filter by group")
	cmd.Flags().BoolVar(&all, "all", false, "include dead and stopped sessions")
	limitFlag(cmd, &limit, 100)
	return cmd
}
