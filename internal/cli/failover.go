package cli

import (
	"cmp"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/apimodel"
)

func (a *app) failoverCmd() *cobra.Command {
	return groupCommand("failover", "list failover events",
		`A failover event is a master taking over the tasks of a worker session it found
dead (or fenced): when, by which master, how many tasks it reassigned or queued.`,
		"  baton failover list\n  baton failover list --limit 10 --json",
		a.failoverListCmd())
}

func (a *app) failoverListCmd() *cobra.Command {
	var c common
	var limit int
	cmd := &cobra.Command{
		Use:     "list",
		Short:   "list failover events, newest first",
		Long:    "List failover events, newest first: the dead session, the master that handled it, deadline, tasks reassigned and queued.",
		Example: "  baton failover list\n  baton failover list --limit 10 --json",
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
			rows, err := db.New(pool).FailoverEventList(ctx, db.FailoverEventListParams{MaxRows: int32(limit)})
			if err != nil {
				return fmt.Errorf("list failovers: %w", err)
			}
			return printRows(a.stdout, c.json, apimodel.FailoverEvents(rows), rows, "ID\tKIND\tSESSION\tGROUP\tBY MASTER\tDECLARED BY\tDEADLINE\tFINISHED\tREASSIGNED\tQUEUED\tPASSES", func(out io.Writer, f db.FailoverEvent) {
				g := ""
				if f.GroupName != nil {
					g = *f.GroupName
				}
				fmt.Fprintf(out, "%d\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%d\n", f.ID, f.Kind, f.SessionID, g, optID(f.DetectedBy),
					cmp.Or(apimodel.DeclaredBy(f.CrashDetected), "-"), f.Deadline.Format(time.RFC3339Nano), optTime(f.FinishedAt), f.TasksReassigned, f.TasksQueued, f.Passes)
			})
		},
	}
	c.register(cmd, a.env, true)
	limitFlag(cmd, &limit, 50)
	return cmd
}
