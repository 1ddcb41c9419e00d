package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/apimodel"
	"github.com/baton-scheduler/baton/internal/schedule"
)

const backfillUsage = `  baton backfill create WORKFLOW --from T --to T [--schedule S] [--cron EXPR] [--zone Z] [--param k=v]...
        [--parallel N] [--order asc|desc] [--reprocess none|failed|all] [--dry-run]
  baton backfill list | show ID | pause ID | resume ID | cancel ID
`

func (a *app) backfillCmd() *cobra.Command {
	return groupCommand("backfill", "run a workflow for past logical times",
		`A backfill runs a workflow once per logical time of a calendar between --from and
--to, at most --parallel at once, sharing a schedule's ledger when it names one
(a time already run is skipped unless --reprocess). The masters drive it.`,
		`  baton backfill create nightly-report --schedule nightly --from 2026-11-01 --to 2026-11-30 --parallel 3 --dry-run
  baton backfill list
  baton backfill show 1 --json`,
		a.backfillCreateCmd(), a.backfillListCmd(),
		a.backfillIDCmd("show", "show a backfill with its progress", nil),
		a.backfillIDCmd("pause", "pause a backfill: it starts no new run", func(ctx context.Context, q *db.Queries, id int64) error {
			return schedule.SetBackfillState(ctx, q, id, "paused")
		}),
		a.backfillIDCmd("resume", "resume a paused backfill", func(ctx context.Context, q *db.Queries, id int64) error {
			return schedule.SetBackfillState(ctx, q, id, "running")
		}),
		a.backfillIDCmd("cancel", "cancel a backfill: it starts no new run; started runs go on", func(ctx context.Context, q *db.Queries, id int64) error {
			return schedule.SetBackfillState(ctx, q, id, "canceled")
		}),
	)
}

func (a *app) backfillCreateCmd() *cobra.Command {
	var c common
	var from, to, sched, cron, zone, order, reprocess string
	var parallel int
	var dry bool
	var params []string
	cmd := &cobra.Command{
		Use:   "create WORKFLOW --from T --to T",
		Short: "create a backfill (--dry-run: show the plan, store nothing)",
		Long: `Create a backfill of a workflow over the logical times from --from to --to (RFC 3339
or a date) of a calendar: a schedule's (--schedule, whose params it takes and
whose ledger it shares; give WORKFLOW as - to take the schedule's) or --cron in
--zone (default @daily in UTC). --dry-run lists what would run and what would be
skipped, and stores nothing.`,
		Example: `  baton backfill create nightly-report --schedule nightly --from 2026-11-01 --to 2026-11-30 --parallel 3 --dry-run
  baton backfill create nightly-report --cron '0 6 * * 1' --zone Europe/Paris --from 2026-01-01 --to 2026-06-30 --reprocess failed`,
		Args: oneArg("baton backfill create WORKFLOW --from T --to T [--schedule S] ..."),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, stdout, wf := cmd.Context(), a.stdout, args[0]
			if from == "" || to == "" {
				return errors.New("backfill create: --from and --to are required")
			}
			f, err := parseTimeFlag("from", from)
			if err != nil {
				return err
			}
			t, err := parseTimeFlag("to", to)
			if err != nil {
				return err
			}
			spec := schedule.BackfillSpec{Workflow: wf, Schedule: sched, Cron: cron, Zone: zone, From: *f, To: *t,
				Parallel: parallel, Order: order, Reprocess: reprocess}
			if sched != "" && wf == "-" {
				spec.Workflow = ""
			}
			if len(params) > 0 {
				if spec.Params, err = parseParams(params); err != nil {
					return err
				}
			}
			var b schedule.Backfill
			var plan []schedule.PlanItem
			if err := c.inTx(ctx, func(q *db.Queries) error {
				b, plan, err = schedule.CreateBackfill(ctx, q, spec, dry)
				return err
			}); err != nil {
				return err
			}
			if !dry {
				return printBackfill(stdout, c.json, b)
			}
			if c.json {
				return writeJSON(stdout, apimodel.Plan(plan))
			}
			runs := 0
			for _, p := range plan {
				if p.Action != "skip" {
					runs++
				}
			}
			fmt.Fprintf(stdout, "dry run: %d logical times, %d would run, %d would be skipped; nothing stored\n", len(plan), runs, len(plan)-runs)
			return printRows(stdout, false, nil, plan, "LOGICAL TIME (UTC)\tACTION\tREASON\tRUN", func(out io.Writer, p schedule.PlanItem) {
				run := "-"
				if p.RunID != 0 {
					run = strconv.FormatInt(p.RunID, 10)
				}
				fmt.Fprintf(out, "%s\t%s\t%s\t%s\n", p.At.UTC().Format(time.RFC3339), p.Action, p.Reason, run)
			})
		},
	}
	c.register(cmd, a.env, true)
	fs := cmd.Flags()
	fs.StringVar(&from, "from", "", "first logical time (RFC 3339 or a date)")
	fs.StringVar(&to, "to", "", "last logical time (RFC 3339 or a date)")
	fs.StringVar(&sched, "schedule", "", "take the calendar (and params) of this schedule and share its ledger")
	fs.StringVar(&cron, "cron", "", "calendar without a schedule (default @daily)")
	fs.StringVar(&zone, "zone", "", "zone of --cron (default UTC)")
	fs.IntVar(&parallel, "parallel", 1, "at most this many runs at once")
	fs.StringVar(&order, "order", "asc", "asc or desc")
	fs.StringVar(&reprocess, "reprocess", "none", "times already in the ledger: none, failed, all")
	fs.BoolVar(&dry, "dry-run", false, "list what would run and what would be skipped; store nothing")
	fs.StringArrayVar(&params, "param", nil, "run parameter k=v (repeatable)")
	return cmd
}

func (a *app) backfillListCmd() *cobra.Command {
	var c common
	cmd := &cobra.Command{
		Use:     "list",
		Short:   "list backfills (the latest 100) with their progress",
		Long:    "List the latest 100 backfills: workflow, state, range, parallelism, logical times in total, started and skipped.",
		Example: "  baton backfill list\n  baton backfill list --json",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			var bs []schedule.Backfill
			if err := c.inTx(ctx, func(q *db.Queries) (err error) {
				bs, err = schedule.ListBackfills(ctx, q, 100)
				return err
			}); err != nil {
				return err
			}
			return printRows(a.stdout, c.json, apimodel.Backfills(bs), bs, "ID\tWORKFLOW\tSTATE\tFROM\tTO\tPARALLEL\tTOTAL\tSTARTED\tSKIPPED", func(out io.Writer, b schedule.Backfill) {
				fmt.Fprintf(out, "%d\t%s\t%s\t%s\t%s\t%d\t%d\t%d\t%d\n", b.ID, b.Workflow, b.State, b.From.UTC().Format(time.RFC3339),
					b.To.UTC().Format(time.RFC3339), b.Parallel, b.Total, b.Started, b.Skipped)
			})
		},
	}
	c.register(cmd, a.env, true)
	return cmd
}

// backfillIDCmd is show, pause, resume or cancel: change (nil for show), then
// print the backfill.
func (a *app) backfillIDCmd(name, short string, change func(context.Context, *db.Queries, int64) error) *cobra.Command {
	var c common
	cmd := &cobra.Command{
		Use:     name + " ID",
		Short:   short,
		Long:    short + "; prints the backfill with its progress.",
		Example: "  baton backfill " + name + " 1",
		Args:    oneArg("baton backfill " + name + " ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			id, err := strconv.ParseInt(args[0], 10, 64)
			if err != nil {
				return fmt.Errorf("backfill id %q is not a number", args[0])
			}
			var b schedule.Backfill
			if err := c.inTx(ctx, func(q *db.Queries) (err error) {
				if change != nil {
					if err := change(ctx, q, id); err != nil {
						return err
					}
				}
				b, err = schedule.GetBackfill(ctx, q, id)
				return err
			}); err != nil {
				return err
			}
			return printBackfill(a.stdout, c.json, b)
		},
	}
	c.register(cmd, a.env, true)
	return cmd
}

func printBackfill(stdout io.Writer, asJSON bool, b schedule.Backfill) error {
	if asJSON {
		return writeJSON(stdout, apimodel.BackfillFrom(b))
	}
	sched := ""
	if b.Schedule != "" {
		sched = "  schedule " + b.Schedule
	}
	fmt.Fprintf(stdout, "backfill %d  workflow %s%s  %s\n", b.ID, b.Workflow, sched, b.State)
	fmt.Fprintf(stdout, "  %s .. %s  order %s  parallel %d  reprocess %s\n", b.From.UTC().Format(time.RFC3339), b.To.UTC().Format(time.RFC3339),
		b.Order, b.Parallel, b.Reprocess)
	done := b.Succeeded + b.Failed
	fmt.Fprintf(stdout, "  %d logical times: %d started (%d running, %d succeeded, %d failed), %d skipped, %d not yet reached (%d%% done)\n",
		b.Total, b.Started, b.Running, b.Succeeded, b.Failed, b.Skipped, max(b.Total-b.Started-b.Skipped, 0), 100*(done+b.Skipped)/max(b.Total, 1))
	return nil
}
