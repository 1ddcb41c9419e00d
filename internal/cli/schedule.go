package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/baton-scheduler/baton/db"
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
  baton backfill create WORKFLOW --from T --to T [--schedule S] [--cron EXPR] [--zone Z] [--param k=v]...
        [--parallel N] [--order asc|desc] [--reprocess none|failed|all] [--dry-run]
  baton backfill list | show ID | pause ID | resume ID | cancel ID
`

// scheduleFlags are the flags of create and update; apply writes the given
// ones into a spec.
type scheduleFlags struct {
	fs                                *flag.FlagSet
	workflow, cron, every, zone       string
	start, end                        string
	jitter, window                    time.Duration
	overlap, catchup, dstGap, dstFold string
	bufferMax, maxActive, catchupMax  int
	pauseOnFailure, paused            bool
	params                            multiFlag
}

func newScheduleFlags(fs *flag.FlagSet) *scheduleFlags {
	f := &scheduleFlags{fs: fs}
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
	fs.Var(&f.params, "param", "run parameter k=v (repeatable)")
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
	given := func(n string) bool { return flagGiven(f.fs, n) }
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
		s.Params = map[string]any{}
		for _, kv := range f.params {
			k, v, ok := strings.Cut(kv, "=")
			if !ok {
				return fmt.Errorf("--param %q: write k=v", kv)
			}
			s.Params[k] = v
		}
	}
	return nil
}

func scheduleCmd(ctx context.Context, args []string, env Env, stdout, stderr io.Writer) error {
	cmd, rest, err := sub(args, "schedule", "create", "update", "list", "show", "pause", "resume", "delete", "preview", "trigger")
	if err != nil {
		return err
	}
	fs := newFlagSet("baton schedule "+cmd, stderr)
	var c common
	c.register(fs, env, true)
	inTx := func(fn func(q *db.Queries) error) error { return c.inTx(ctx, fn) }
	var name string
	if cmd != "list" {
		name, rest, err = leadingArg(rest, fmt.Sprintf("usage: baton schedule %s NAME", cmd))
		if err != nil {
			return err
		}
	}
	switch cmd {
	case "create", "update":
		sf := newScheduleFlags(fs)
		if err := parseNoArgs(fs, rest); err != nil {
			return err
		}
		var s schedule.Schedule
		if cmd == "create" {
			spec := schedule.Spec{Name: name}
			if err := sf.apply(&spec); err != nil {
				return err
			}
			err = inTx(func(q *db.Queries) error {
				s, err = schedule.Create(ctx, q, spec, nil)
				return err
			})
		} else {
			var applyErr error
			err = inTx(func(q *db.Queries) error {
				s, err = schedule.Update(ctx, q, name, nil, func(spec *schedule.Spec) { applyErr = sf.apply(spec) })
				if applyErr != nil {
					return applyErr
				}
				return err
			})
		}
		if err != nil {
			return err
		}
		return printSchedule(stdout, c.json, s)
	case "list":
		wf := fs.String("workflow", "", "only the schedules of this workflow")
		if err := parseNoArgs(fs, rest); err != nil {
			return err
		}
		var ss []schedule.Schedule
		if err := inTx(func(q *db.Queries) error {
			ss, err = schedule.List(ctx, q, *wf, 0)
			return err
		}); err != nil {
			return err
		}
		return printRows(stdout, c.json, ss, ss, "NAME\tWORKFLOW\tCALENDAR\tZONE\tNEXT (UTC)\tACTIVE\tPAUSED", func(out io.Writer, s schedule.Schedule) {
			fmt.Fprintf(out, "%s\t%s\t%s\t%s\t%s\t%d\t%v\n", s.Name, s.Workflow, calendarText(s.Spec), s.Zone, optTime(s.NextFireAt), s.ActiveRuns, s.Paused)
		})
	case "show":
		n := fs.Int("fires", 20, "how many of the latest ledger rows to print")
		if err := parseNoArgs(fs, rest); err != nil {
			return err
		}
		var s schedule.Schedule
		var fires []db.ScheduleFireListRow
		if err := inTx(func(q *db.Queries) error {
			if s, err = schedule.Get(ctx, q, name); err != nil {
				return err
			}
			fires, err = q.ScheduleFireList(ctx, db.ScheduleFireListParams{ScheduleID: &s.ID, MaxRows: int32(*n)})
			return err
		}); err != nil {
			return err
		}
		if c.json {
			return json.NewEncoder(stdout).Encode(map[string]any{"schedule": s, "fires": fires})
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
	case "pause", "resume":
		reason := fs.String("reason", "", "pause: why (shown by show)")
		if err := parseNoArgs(fs, rest); err != nil {
			return err
		}
		if err := inTx(func(q *db.Queries) error { return schedule.SetPaused(ctx, q, name, cmd == "pause", *reason) }); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "schedule %s %sd\n", name, cmd)
		return nil
	case "trigger":
		atS := fs.String("at", "", "the logical time to run (RFC 3339, 2006-01-02T15:04:05 UTC or a date); default now, to the second")
		rerun := fs.Bool("rerun", false, "run a logical time that already ran again (a new run in the same ledger row)")
		if err := parseNoArgs(fs, rest); err != nil {
			return err
		}
		var at *time.Time
		if *atS != "" {
			if at, err = parseTimeFlag("at", *atS); err != nil {
				return err
			}
		}
		var tr schedule.Triggered
		if err := inTx(func(q *db.Queries) error {
			tr, err = schedule.Trigger(ctx, q, name, at, *rerun, nil)
			return err
		}); err != nil {
			return err
		}
		if c.json {
			return json.NewEncoder(stdout).Encode(tr)
		}
		fmt.Fprintf(stdout, "schedule %s: run %d for logical time %s (ledger row %d)\n", name, tr.RunID, tr.Nominal.UTC().Format(time.RFC3339), tr.FireID)
		return nil
	case "delete":
		if err := parseNoArgs(fs, rest); err != nil {
			return err
		}
		if err := inTx(func(q *db.Queries) error { return schedule.Delete(ctx, q, name) }); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "schedule %s deleted (with its ledger; runs it started go on)\n", name)
		return nil
	default: // preview
		n := fs.Int("n", 20, "how many fire times")
		if err := parseNoArgs(fs, rest); err != nil {
			return err
		}
		if *n < 1 || *n > 10000 {
			return fmt.Errorf("-n %d is outside 1..10000", *n)
		}
		var items []schedule.PreviewItem
		if err := inTx(func(q *db.Queries) error {
			items, err = schedule.Preview(ctx, q, name, *n, nil)
			return err
		}); err != nil {
			return err
		}
		return printRows(stdout, c.json, items, items, "LOCAL\tUTC\tNOTE", func(out io.Writer, it schedule.PreviewItem) {
			note := it.Note
			if !it.Due.Equal(it.Nominal) {
				note = strings.TrimSpace(note + " due " + it.Due.UTC().Format("15:04:05.000Z") + " (jitter)")
			}
			fmt.Fprintf(out, "%s\t%s\t%s\n", it.Local, it.UTC, note)
		})
	}
}

func deref(s *string) string {
	if s == nil {
		return "-"
	}
	return *s
}

func calendarText(s schedule.Spec) string {
	if s.Cron != "" {
		return s.Cron
	}
	return "@every " + s.Interval.String()
}

func printSchedule(stdout io.Writer, asJSON bool, s schedule.Schedule) error {
	if asJSON {
		return json.NewEncoder(stdout).Encode(s)
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

func backfillCmd(ctx context.Context, args []string, env Env, stdout, stderr io.Writer) error {
	cmd, rest, err := sub(args, "backfill", "create", "list", "show", "pause", "resume", "cancel")
	if err != nil {
		return err
	}
	fs := newFlagSet("baton backfill "+cmd, stderr)
	var c common
	c.register(fs, env, true)
	inTx := func(fn func(q *db.Queries) error) error { return c.inTx(ctx, fn) }
	switch cmd {
	case "create":
		wf, rest, err := leadingArg(rest, "usage: baton backfill create WORKFLOW --from T --to T [--schedule S] ...")
		if err != nil {
			return err
		}
		from := fs.String("from", "", "first logical time (RFC 3339 or a date)")
		to := fs.String("to", "", "last logical time (RFC 3339 or a date)")
		sched := fs.String("schedule", "", "take the calendar (and params) of this schedule and share its ledger")
		cron := fs.String("cron", "", "calendar without a schedule (default @daily)")
		zone := fs.String("zone", "", "zone of --cron (default UTC)")
		parallel := fs.Int("parallel", 1, "at most this many runs at once")
		order := fs.String("order", "asc", "asc or desc")
		reprocess := fs.String("reprocess", "none", "times already in the ledger: none, failed, all")
		dry := fs.Bool("dry-run", false, "list what would run and what would be skipped; store nothing")
		var params multiFlag
		fs.Var(&params, "param", "run parameter k=v (repeatable)")
		if err := parseNoArgs(fs, rest); err != nil {
			return err
		}
		if *from == "" || *to == "" {
			return errors.New("backfill create: --from and --to are required")
		}
		f, err := parseTimeFlag("from", *from)
		if err != nil {
			return err
		}
		t, err := parseTimeFlag("to", *to)
		if err != nil {
			return err
		}
		spec := schedule.BackfillSpec{Workflow: wf, Schedule: *sched, Cron: *cron, Zone: *zone, From: *f, To: *t,
			Parallel: *parallel, Order: *order, Reprocess: *reprocess}
		if *sched != "" && wf == "-" {
			spec.Workflow = ""
		}
		if len(params) > 0 {
			spec.Params = map[string]any{}
			for _, kv := range params {
				k, v, ok := strings.Cut(kv, "=")
				if !ok {
					return fmt.Errorf("--param %q: write k=v", kv)
				}
				spec.Params[k] = v
			}
		}
		var b schedule.Backfill
		var plan []schedule.PlanItem
		if err := inTx(func(q *db.Queries) error {
			b, plan, err = schedule.CreateBackfill(ctx, q, spec, *dry)
			return err
		}); err != nil {
			return err
		}
		if *dry {
			if c.json {
				return json.NewEncoder(stdout).Encode(plan)
			}
			runs := 0
			for _, p := range plan {
				if p.Action != "skip" {
					runs++
				}
			}
			fmt.Fprintf(stdout, "dry run: %d logical times, %d would run, %d would be skipped; nothing stored\n", len(plan), runs, len(plan)-runs)
			return printRows(stdout, false, plan, plan, "LOGICAL TIME (UTC)\tACTION\tREASON\tRUN", func(out io.Writer, p schedule.PlanItem) {
				run := "-"
				if p.RunID != 0 {
					run = strconv.FormatInt(p.RunID, 10)
				}
				fmt.Fprintf(out, "%s\t%s\t%s\t%s\n", p.At.UTC().Format(time.RFC3339), p.Action, p.Reason, run)
			})
		}
		return printBackfill(stdout, c.json, b)
	case "list":
		if err := parseNoArgs(fs, rest); err != nil {
			return err
		}
		var bs []schedule.Backfill
		if err := inTx(func(q *db.Queries) error {
			bs, err = schedule.ListBackfills(ctx, q, 100)
			return err
		}); err != nil {
			return err
		}
		return printRows(stdout, c.json, bs, bs, "ID\tWORKFLOW\tSTATE\tFROM\tTO\tPARALLEL\tTOTAL\tSTARTED\tSKIPPED", func(out io.Writer, b schedule.Backfill) {
			fmt.Fprintf(out, "%d\t%s\t%s\t%s\t%s\t%d\t%d\t%d\t%d\n", b.ID, b.Workflow, b.State, b.From.UTC().Format(time.RFC3339),
				b.To.UTC().Format(time.RFC3339), b.Parallel, b.Total, b.Started, b.Skipped)
		})
	default:
		idText, rest, err := leadingArg(rest, fmt.Sprintf("usage: baton backfill %s ID", cmd))
		if err != nil {
			return err
		}
		id, err := strconv.ParseInt(idText, 10, 64)
		if err != nil {
			return fmt.Errorf("backfill id %q is not a number", idText)
		}
		if err := parseNoArgs(fs, rest); err != nil {
			return err
		}
		var b schedule.Backfill
		if err := inTx(func(q *db.Queries) error {
			switch cmd {
			case "pause":
				err = schedule.SetBackfillState(ctx, q, id, "paused")
			case "resume":
				err = schedule.SetBackfillState(ctx, q, id, "running")
			case "cancel":
				err = schedule.SetBackfillState(ctx, q, id, "canceled")
			}
			if err != nil {
				return err
			}
			b, err = schedule.GetBackfill(ctx, q, id)
			return err
		}); err != nil {
			return err
		}
		return printBackfill(stdout, c.json, b)
	}
}

func printBackfill(stdout io.Writer, asJSON bool, b schedule.Backfill) error {
	if asJSON {
		return json.NewEncoder(stdout).Encode(b)
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
