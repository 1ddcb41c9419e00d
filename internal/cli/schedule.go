package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/apimodel"
	"github.com/baton-scheduler/baton/internal/schedule"
)

const scheduleUsage = `  baton schedule create NAME --workflow W (--cron EXPR | --every D) [--zone Z] [--param k=v]... [--start T] [--end T]
        [--jitter D] [--overlap skip|buffer_one|buffer_all|cancel_other|allow] [--buffer-max N] [--max-active N]
        [--catchup none|latest|all] [--catchup-window D] [--catchup-max N] [--pause-on-failure]
        [--dst-gap shift|skip] [--dst-fold first|both] [--paused]
  baton schedule update NAME [the create flags to change]
  baton schedule list [--workflow W]
  baton schedule show NAME [--fires N]      the schedule and its latest ledger rows
  baton schedule pause|resume|delete NAME
  baton schedule preview NAME [-n 20]       the next fire times, local and UTC
  baton schedule trigger NAME [--at T] [--rerun]   a manual run of a logical time (default now) through the fire ledger
`

// scheduleCmd is `baton schedule`: one constructor per subcommand; a new
// subcommand is one more constructor in this list.
func (a *app) scheduleCmd() *cobra.Command {
	return groupCommand("schedule", "create, change, inspect and preview schedules",
		`A schedule starts a workflow on a cron calendar in a time zone, or at a fixed
interval. Any number of masters fire it, none twice: the fire's ledger row, the
run and the advance of the next fire time commit in one transaction
(docs/schedules.md).`,
		`  baton schedule create nightly --workflow nightly-report --cron '30 2 * * *' --zone America/New_York --param day=today
  baton schedule preview nightly -n 20
  baton schedule show nightly --json
  baton schedule update nightly --dst-gap skip`,
		a.scheduleCreateCmd(), a.scheduleUpdateCmd(), a.scheduleListCmd(), a.scheduleShowCmd(),
		a.schedulePauseCmd("pause"), a.schedulePauseCmd("resume"), a.scheduleDeleteCmd(), a.schedulePreviewCmd(), a.scheduleTriggerCmd())
}

// scheduleFlags are the flags of create and update; apply writes the given
// ones into a spec.
type scheduleFlags struct {
	cmd                               *cobra.Command
	workflow, cron, every, zone       string
	start, end                        string
	jitter, window                    time.Duration
	overlap, catchup, dstGap, dstFold string
	bufferMax, maxActive, catchupMax  int
	pauseOnFailure, paused            bool
	params                            []string
}

func newScheduleFlags(cmd *cobra.Command) *scheduleFlags {
	f := &scheduleFlags{cmd: cmd}
	fs := cmd.Flags()
	fs.StringVar(&f.workflow, "workflow", "", "the workflow the schedule starts")
	fs.StringVar(&f.cron, "cron", "", "5-field cron expression or @hourly/@daily/@weekly/@monthly/@yearly")
	fs.StringVar(&f.every, "every", "", "a fixed interval instead (real elapsed time), e.g. 90m")
	fs.StringVar(&f.zone, "zone", "", "IANA time zone of the cron expression (default UTC)")
	fs.StringVar(&f.start, "start", "", "no fire time before this (RFC 3339)")
	fs.StringVar(&f.end, "end", "", "no fire time after this (RFC 3339)")
	fs.DurationVar(&f.jitter, "jitter", 0, "delay each fire by a deterministic amount in [0, jitter)")
	fs.StringVar(&f.overlap, "overlap", "", "while a run is active: skip (default), buffer_one, buffer_all, cancel_other, allow")
	fs.IntVar(&f.bufferMax, "buffer-max", 0, "bound of buffer_all (default 100)")
	fs.IntVar(&f.maxActive, "max-active", 0, "cap on active runs (0: none beyond the overlap policy)")
	fs.StringVar(&f.catchup, "catchup", "", "missed fire times: none, latest (default), all")
	fs.DurationVar(&f.window, "catchup-window", 0, "missed times older than this are skipped (default 24h)")
	fs.IntVar(&f.catchupMax, "catchup-max", 0, "catchup all: at most this many missed times run (default 10)")
	fs.BoolVar(&f.pauseOnFailure, "pause-on-failure", false, "pause the schedule when one of its runs fails")
	fs.StringVar(&f.dstGap, "dst-gap", "", "a local time that does not exist (spring forward): shift (default) or skip")
	fs.StringVar(&f.dstFold, "dst-fold", "", "a local time that occurs twice (fall back): first (default) or both")
	fs.BoolVar(&f.paused, "paused", false, "create it paused")
	fs.StringArrayVar(&f.params, "param", nil, "run parameter k=v (repeatable)")
	return f
}

func parseTimeFlag(name, v string) (*time.Time, error) {
	if v == "" {
		return nil, nil
	}
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05", "2006-01-02"} {
		if t, err := time.Parse(layout, v); err == nil {
			t = t.UTC()
			return &t, nil
		}
	}
	return nil, fmt.Errorf("--%s %q: not a time (RFC 3339, e.g. 2026-03-08T02:30:00Z, or a date 2026-03-08)", name, v)
}

func (f *scheduleFlags) apply(s *schedule.Spec) error {
	given := f.cmd.Flags().Changed
	if given("workflow") {
		s.Workflow = f.workflow
	}
	if given("cron") && given("every") {
		return errors.New("give --cron or --every, not both")
	}
	if given("cron") {
		s.Cron, s.Interval = f.cron, 0
	}
	if given("every") {
		d, err := time.ParseDuration(f.every)
		if err != nil {
			return fmt.Errorf("--every %q: %v", f.every, err)
		}
		s.Cron, s.Interval = "", d
	}
	if given("zone") {
		s.Zone = f.zone
	}
	var err error
	if given("start") {
		if s.Start, err = parseTimeFlag("start", f.start); err != nil {
			return err
		}
	}
	if given("end") {
		if s.End, err = parseTimeFlag("end", f.end); err != nil {
			return err
		}
	}
	if given("jitter") {
		s.Jitter = f.jitter
	}
	if given("overlap") {
		s.Overlap = f.overlap
	}
	if given("buffer-max") {
		s.BufferMax = f.bufferMax
	}
	if given("max-active") {
		s.MaxActiveRuns = f.maxActive
	}
	if given("catchup") {
		s.Catchup = f.catchup
	}
	if given("catchup-window") {
		s.CatchupWindow = f.window
	}
	if given("catchup-max") {
		s.CatchupMax = f.catchupMax
	}
	if given("pause-on-failure") {
		s.PauseOnFailure = f.pauseOnFailure
	}
	if given("dst-gap") {
		s.DSTGap = f.dstGap
	}
	if given("dst-fold") {
		s.DSTFold = f.dstFold
	}
	if given("paused") {
		s.Paused = f.paused
	}
	if len(f.params) > 0 {
		if s.Params, err = parseParams(f.params); err != nil {
			return err
		}
	}
	return nil
}

func (a *app) scheduleCreateCmd() *cobra.Command {
	var c common
	var sf *scheduleFlags
	cmd := &cobra.Command{
		Use:   "create NAME --workflow W (--cron EXPR | --every D)",
		Short: "create a schedule",
		Long: `Create a schedule that starts a workflow on a cron calendar (5 fields or
@hourly/@daily/@weekly/@monthly/@yearly) in a time zone, or every fixed interval.
Policies: overlap while a run is active (skip, buffer_one, buffer_all,
cancel_other, allow) and --max-active; catch-up after downtime (none, latest, all
within --catchup-window and at most --catchup-max); --pause-on-failure; --jitter;
daylight saving (--dst-gap shift|skip, --dst-fold first|both). Prints the schedule.`,
		Example: `  baton schedule create nightly --workflow nightly-report --cron '30 2 * * *' --zone America/New_York \
      --param day=today --overlap buffer_one --catchup latest --pause-on-failure
  baton schedule create poll --workflow sync --every 15m --jitter 30s`,
		Args: oneArg("baton schedule create NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			spec := schedule.Spec{Name: args[0]}
			if err := sf.apply(&spec); err != nil {
				return err
			}
			var s schedule.Schedule
			if err := c.inTx(ctx, func(q *db.Queries) (err error) {
				s, err = schedule.Create(ctx, q, spec, nil)
				return err
			}); err != nil {
				return err
			}
			return printSchedule(a.stdout, c.json, s)
		},
	}
	c.register(cmd, a.env, true)
	sf = newScheduleFlags(cmd)
	return cmd
}

func (a *app) scheduleUpdateCmd() *cobra.Command {
	var c common
	var sf *scheduleFlags
	cmd := &cobra.Command{
		Use:   "update NAME [the create flags to change]",
		Short: "change a schedule's calendar or policies",
		Long: `Change the given settings of a schedule (the flags of create); the others keep
their values. The next fire time is computed again. Prints the schedule.`,
		Example: "  baton schedule update nightly --dst-gap skip --overlap buffer_one\n  baton schedule update nightly --cron '0 3 * * *'",
		Args:    oneArg("baton schedule update NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			var s schedule.Schedule
			var applyErr error
			err := c.inTx(ctx, func(q *db.Queries) (err error) {
				s, err = schedule.Update(ctx, q, args[0], nil, func(spec *schedule.Spec) { applyErr = sf.apply(spec) })
				if applyErr != nil {
					return applyErr
				}
				return err
			})
			if err != nil {
				return err
			}
			return printSchedule(a.stdout, c.json, s)
		},
	}
	c.register(cmd, a.env, true)
	sf = newScheduleFlags(cmd)
	return cmd
}

func (a *app) scheduleListCmd() *cobra.Command {
	var c common
	var wf string
	cmd := &cobra.Command{
		Use:     "list",
		Short:   "list schedules with their next fire time",
		Long:    "List schedules: workflow, calendar, zone, next fire time (UTC), active runs, paused.",
		Example: "  baton schedule list\n  baton schedule list --workflow nightly-report --json",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			var ss []schedule.Schedule
			if err := c.inTx(ctx, func(q *db.Queries) (err error) {
				ss, err = schedule.List(ctx, q, wf, 0)
				return err
			}); err != nil {
				return err
			}
			return printRows(a.stdout, c.json, apimodel.Schedules(ss), ss, "NAME\tWORKFLOW\tCALENDAR\tZONE\tNEXT (UTC)\tACTIVE\tPAUSED", func(out io.Writer, s schedule.Schedule) {
				fmt.Fprintf(out, "%s\t%s\t%s\t%s\t%s\t%d\t%v\n", s.Name, s.Workflow, calendarText(s.Spec), s.Zone, optTime(s.NextFireAt), s.ActiveRuns, s.Paused)
			})
		},
	}
	c.register(cmd, a.env, true)
	cmd.Flags().StringVar(&wf, "workflow", "", "only the schedules of this workflow")
	return cmd
}

func (a *app) scheduleShowCmd() *cobra.Command {
	var c common
	var n int
	cmd := &cobra.Command{
		Use:   "show NAME",
		Short: "show a schedule and its latest ledger rows",
		Long: `Show a schedule: calendar, policies, state, next fire time, and its fire ledger,
newest first: each nominal time with its source, outcome (started with the run and
its lag, or skipped with the reason).`,
		Example: "  baton schedule show nightly\n  baton schedule show nightly --fires 100 --json",
		Args:    oneArg("baton schedule show NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, stdout := cmd.Context(), a.stdout
			var s schedule.Schedule
			var fires []db.ScheduleFireListRow
			if err := c.inTx(ctx, func(q *db.Queries) (err error) {
				if s, err = schedule.Get(ctx, q, args[0]); err != nil {
					return err
				}
				fires, err = q.ScheduleFireList(ctx, db.ScheduleFireListParams{ScheduleID: &s.ID, MaxRows: int32(n)})
				return err
			}); err != nil {
				return err
			}
			if c.json {
				return writeJSON(stdout, apimodel.ScheduleDetail{Schedule: apimodel.ScheduleFrom(s), Fires: apimodel.LedgerEntries(fires)})
			}
			if err := printSchedule(stdout, false, s); err != nil {
				return err
			}
			tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NOMINAL (UTC)\tSOURCE\tOUTCOME\tREASON\tRUN\tRUN STATE\tLAG")
			for _, f := range fires {
				lag := "-"
				if f.LagMs != nil {
					lag = (time.Duration(*f.LagMs) * time.Millisecond).String()
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", f.NominalTime.UTC().Format(time.RFC3339), f.Source, f.Outcome, deref(f.Reason),
					optID(f.RunID), deref(f.RunState), lag)
			}
			return tw.Flush()
		},
	}
	c.register(cmd, a.env, true)
	cmd.Flags().IntVar(&n, "fires", 20, "how many of the latest ledger rows to print")
	return cmd
}

// schedulePauseCmd is pause or resume.
func (a *app) schedulePauseCmd(name string) *cobra.Command {
	var c common
	var reason string
	pause := name == "pause"
	short := "resume a paused schedule: the next fire time follows its catch-up policy"
	if pause {
		short = "pause a schedule: it fires nothing until resumed"
	}
	cmd := &cobra.Command{
		Use:     name + " NAME",
		Short:   short,
		Long:    short + ".",
		Example: "  baton schedule " + name + " nightly",
		Args:    oneArg("baton schedule " + name + " NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			if err := c.inTx(ctx, func(q *db.Queries) error { return schedule.SetPaused(ctx, q, args[0], pause, reason) }); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "schedule %s %sd\n", args[0], name)
			return nil
		},
	}
	if pause {
		cmd.Example += " --reason maintenance"
	}
	c.register(cmd, a.env, true) // --json: accepted, as before; prints one line
	cmd.Flags().StringVar(&reason, "reason", "", "pause: why (shown by show)")
	return cmd
}

func (a *app) scheduleDeleteCmd() *cobra.Command {
	var c common
	cmd := &cobra.Command{
		Use:     "delete NAME",
		Short:   "delete a schedule with its ledger (runs it started go on)",
		Long:    "Delete a schedule with its fire ledger. Runs it started go on.",
		Example: "  baton schedule delete nightly",
		Args:    oneArg("baton schedule delete NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			if err := c.inTx(ctx, func(q *db.Queries) error { return schedule.Delete(ctx, q, args[0]) }); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "schedule %s deleted (with its ledger; runs it started go on)\n", args[0])
			return nil
		},
	}
	c.register(cmd, a.env, true) // --json: accepted, as before; prints one line
	return cmd
}

func (a *app) schedulePreviewCmd() *cobra.Command {
	var c common
	var n int
	cmd := &cobra.Command{
		Use:   "preview NAME [-n 20]",
		Short: "the next fire times, local and UTC",
		Long: `Print a schedule's next fire times in its zone and in UTC, with daylight-saving
adjustments (a local time that does not exist or occurs twice) and the jitter.`,
		Example: "  baton schedule preview nightly\n  baton schedule preview nightly -n 100 --json",
		Args:    oneArg("baton schedule preview NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			if n < 1 || n > 10000 {
				return fmt.Errorf("-n %d is outside 1..10000", n)
			}
			var items []schedule.PreviewItem
			if err := c.inTx(ctx, func(q *db.Queries) (err error) {
				items, err = schedule.Preview(ctx, q, args[0], n, nil)
				return err
			}); err != nil {
				return err
			}
			return printRows(a.stdout, c.json, apimodel.Fires(items), items, "LOCAL\tUTC\tNOTE", func(out io.Writer, it schedule.PreviewItem) {
				note := it.Note
				if !it.Due.Equal(it.Nominal) {
					note = strings.TrimSpace(note + " due " + it.Due.UTC().Format("15:04:05.000Z") + " (jitter)")
				}
				fmt.Fprintf(out, "%s\t%s\t%s\n", it.Local, it.UTC, note)
			})
		},
	}
	c.register(cmd, a.env, true)
	cmd.Flags().IntVarP(&n, "count", "n", 20, "how many fire times")
	aliasFlags(cmd.Flags(), map[string]string{"n": "count"})
	return cmd
}

func (a *app) scheduleTriggerCmd() *cobra.Command {
	var c common
	var atS string
	var rerun bool
	cmd := &cobra.Command{
		Use:   "trigger NAME [--at T] [--rerun]",
		Short: "a manual run of a logical time (default now) through the fire ledger",
		Long: `Start a run of the schedule's workflow for a logical time (--at; default now, to
the second) through the same ledger key as its scheduled fires and backfills, so a
logical time never runs twice at once: a time that is running or buffered is
refused, and one whose run ended is refused unless --rerun (a new run in the same
ledger row). A manual run ignores pause, overlap and max_active_runs
(docs/schedules.md).`,
		Example: "  baton schedule trigger nightly\n  baton schedule trigger nightly --at 2026-12-01T02:30:00-05:00 --rerun --json",
		Args:    oneArg("baton schedule trigger NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			var at *time.Time
			if atS != "" {
				var err error
				if at, err = parseTimeFlag("at", atS); err != nil {
					return err
				}
			}
			var tr schedule.Triggered
			if err := c.inTx(ctx, func(q *db.Queries) (err error) {
				tr, err = schedule.Trigger(ctx, q, args[0], at, rerun, nil)
				return err
			}); err != nil {
				return err
			}
			if c.json {
				return json.NewEncoder(a.stdout).Encode(apimodel.Triggered{Schedule: tr.Schedule, NominalTime: apimodel.At(tr.Nominal), RunID: tr.RunID, Rerun: tr.Rerun})
			}
			fmt.Fprintf(a.stdout, "schedule %s: run %d for logical time %s (ledger row %d)\n", args[0], tr.RunID, tr.Nominal.UTC().Format(time.RFC3339), tr.FireID)
			return nil
		},
	}
	c.register(cmd, a.env, true)
	cmd.Flags().StringVar(&atS, "at", "", "the logical time to run (RFC 3339, 2006-01-02T15:04:05 UTC or a date); default now, to the second")
	cmd.Flags().BoolVar(&rerun, "rerun", false, "run a logical time that already ran again (a new run in the same ledger row)")
	return cmd
}

func calendarText(s schedule.Spec) string {
	if s.Cron != "" {
		return s.Cron
	}
	return "@every " + s.Interval.String()
}

func printSchedule(stdout io.Writer, asJSON bool, s schedule.Schedule) error {
	if asJSON {
		return writeJSON(stdout, apimodel.ScheduleFrom(s))
	}
	params, _ := json.Marshal(s.Params)
	fmt.Fprintf(stdout, "schedule %s  workflow %s  params %s\n", s.Name, s.Workflow, params)
	fmt.Fprintf(stdout, "  calendar %s in %s  dst gap %s, fold %s  jitter %s\n", calendarText(s.Spec), s.Zone, s.DSTGap, s.DSTFold, s.Jitter)
	fmt.Fprintf(stdout, "  overlap %s (buffer max %d)  max active %d  catch-up %s (window %s, max %d)  pause on failure %v\n",
		s.Overlap, s.BufferMax, s.MaxActiveRuns, s.Catchup, s.CatchupWindow, s.CatchupMax, s.PauseOnFailure)
	state := "active"
	if s.Paused {
		state = "paused: " + s.PausedReason
	}
	fmt.Fprintf(stdout, "  %s  next fire %s (nominal %s)  active runs %d  buffered %d\n", state, optTime(s.NextFireAt), optTime(s.NextNominalAt), s.ActiveRuns, s.Buffered)
	return nil
}
