package schedule

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/calendar"
)

// Reprocess policies of a backfill: what it does with a logical time already
// in the ledger.
const (
	ReprocessNone   = "none"   // leave it (skipped: exists)
	ReprocessFailed = "failed" // run it again if its run failed, was canceled or stopped
	ReprocessAll    = "all"    // run it again whatever its run's outcome
)

// Backfill limits.
const (
	BackfillMaxTimes      = 100000
	BackfillParallelMax   = 1000
	backfillAdmitPerPass  = 1000
	BackfillBatchDefault  = 20
	backfillReasonExists  = "exists"
	backfillReasonRunning = "running"
	backfillReasonBuffer  = "buffered"
)

// BackfillSpec describes a backfill.
type BackfillSpec struct {
	Workflow string `json:"workflow"`
	// Schedule takes the calendar (and params, unless Params is set) of a
	// schedule and shares its ledger key: a logical time the schedule fired or
	// will fire is the same ledger row.
	Schedule string `json:"schedule,omitempty"`
	// Cron and Zone are the calendar without a schedule (default @daily, UTC).
	Cron      string         `json:"cron,omitempty"`
	Zone      string         `json:"zone,omitempty"`
	Params    map[string]any `json:"params,omitempty"`
	From      time.Time      `json:"from"`
	To        time.Time      `json:"to"`
	Parallel  int            `json:"parallel"`
	Order     string         `json:"order"`     // asc (default) or desc
	Reprocess string         `json:"reprocess"` // none (default), failed, all
}

// PlanItem is one logical time of a backfill and what it would do.
type PlanItem struct {
	At     time.Time `json:"at"`
	Action string    `json:"action"` // run, rerun, skip
	Reason string    `json:"reason,omitempty"`
	RunID  int64     `json:"run_id,omitempty"` // the run already in the ledger
}

// Backfill is a stored backfill with its progress.
type Backfill struct {
	ID        int64      `json:"id"`
	Workflow  string     `json:"workflow"`
	Schedule  string     `json:"schedule,omitempty"`
	From      time.Time  `json:"from"`
	To        time.Time  `json:"to"`
	Parallel  int        `json:"parallel"`
	Order     string     `json:"order"`
	Reprocess string     `json:"reprocess"`
	State     string     `json:"state"`
	Total     int        `json:"total"`
	Started   int        `json:"started"`
	Skipped   int        `json:"skipped"`
	Running   int        `json:"running"`
	Succeeded int        `json:"succeeded"`
	Failed    int        `json:"failed"`
	Cursor    *time.Time `json:"cursor,omitempty"`
	CreatedAt time.Time  `json:"created_at"`
	Finished  *time.Time `json:"finished_at,omitempty"`
}

type backfillCal struct {
	cal        *calendar.Calendar
	scheduleID *int64
	workflowID int64
	params     json.RawMessage
	spec       BackfillSpec
}

func (b BackfillSpec) withDefaults() BackfillSpec {
	if b.Parallel == 0 {
		b.Parallel = 1
	}
	if b.Order == "" {
		b.Order = "asc"
	}
	if b.Reprocess == "" {
		b.Reprocess = ReprocessNone
	}
	return b
}

// prepare validates a backfill spec and resolves its calendar in q's transaction.
func prepareBackfill(ctx context.Context, q *db.Queries, spec BackfillSpec) (backfillCal, db.BackfillInsertParams, error) {
	spec = spec.withDefaults()
	var probs []string
	if spec.From.IsZero() || spec.To.IsZero() {
		probs = append(probs, "from/to: both are required")
	} else if spec.From.After(spec.To) {
		probs = append(probs, fmt.Sprintf("from: %s is after to %s", spec.From.Format(time.RFC3339), spec.To.Format(time.RFC3339)))
	}
	if spec.Parallel < 1 || spec.Parallel > BackfillParallelMax {
		probs = append(probs, fmt.Sprintf("parallel: %d is outside 1..%d", spec.Parallel, BackfillParallelMax))
	}
	if spec.Order != "asc" && spec.Order != "desc" {
		probs = append(probs, fmt.Sprintf("order: %q is not asc or desc", spec.Order))
	}
	switch spec.Reprocess {
	case ReprocessNone, ReprocessFailed, ReprocessAll:
	default:
		probs = append(probs, fmt.Sprintf("reprocess: unknown policy %q (none, failed, all)", spec.Reprocess))
	}
	var bc backfillCal
	arg := db.BackfillInsertParams{FromAt: spec.From, ToAt: spec.To, Parallel: int32(spec.Parallel), Descending: spec.Order == "desc",
		Reprocess: spec.Reprocess, Zone: "UTC", DstGap: calendar.GapShift, DstFold: calendar.FoldFirst, AnchorAt: spec.From}
	var calSpec Spec
	if spec.Schedule != "" {
		s, err := Get(ctx, q, spec.Schedule)
		if errors.Is(err, ErrNotFound) {
			return bc, arg, &InvalidError{append(probs, fmt.Sprintf("schedule: unknown schedule %q", spec.Schedule))}
		}
		if err != nil {
			return bc, arg, err
		}
		if spec.Workflow != "" && spec.Workflow != s.Workflow {
			probs = append(probs, fmt.Sprintf("schedule: %s starts workflow %s, not %s", s.Name, s.Workflow, spec.Workflow))
		}
		spec.Workflow = s.Workflow
		if spec.Params == nil {
			spec.Params = s.Params
		}
		if spec.Cron != "" || spec.Zone != "" {
			probs = append(probs, "cron/zone: a backfill of a schedule uses the schedule's calendar")
		}
		calSpec = s.Spec
		calSpec.Start, calSpec.End = nil, nil
		bc.scheduleID = &s.ID
		arg.ScheduleID = &s.ID
		arg.AnchorAt = s.anchor
		arg.Zone, arg.DstGap, arg.DstFold = s.Zone, s.DSTGap, s.DSTFold
		bc.cal, _ = calSpec.calendar(s.anchor)
	} else {
		if spec.Cron == "" {
			spec.Cron = "@daily"
		}
		if spec.Zone == "" {
			spec.Zone = "UTC"
		}
		calSpec = Spec{Cron: spec.Cron, Zone: spec.Zone}.WithDefaults()
		cal, err := calSpec.calendar(spec.From)
		if err != nil {
			probs = append(probs, err.Error())
		}
		bc.cal = cal
		arg.Zone = spec.Zone
	}
	arg.Cron, arg.IntervalMs = calendarColumns(calSpec)
	if spec.Workflow == "" {
		probs = append(probs, "workflow: missing")
	}
	if len(probs) > 0 {
		return bc, arg, &InvalidError{probs}
	}
	wid, params, err := lookupWorkflow(ctx, q, spec.Workflow, spec.Params)
	if err != nil {
		return bc, arg, err
	}
	bc.workflowID, bc.params, bc.spec = wid, params, spec
	arg.WorkflowID, arg.Params = wid, params
	n := 0
	for t := spec.From.Add(-time.Nanosecond); ; n++ {
		f, ok := bc.cal.Next(t)
		if !ok || f.At.After(spec.To) {
			break
		}
		if n >= BackfillMaxTimes {
			return bc, arg, &InvalidError{[]string{fmt.Sprintf("from/to: more than %d logical times in the range", BackfillMaxTimes)}}
		}
		t = f.At
	}
	if n == 0 {
		return bc, arg, &InvalidError{[]string{"from/to: the calendar has no logical time in the range"}}
	}
	arg.Total = int32(n)
	return bc, arg, nil
}

// decide says what a backfill does with a logical time given its ledger row.
func decide(reprocess string, exists bool, outcome string, runState *string, active bool) (action, reason string) {
	switch {
	case !exists:
		return "run", ""
	case active:
		return "skip", backfillReasonRunning
	case outcome == "buffered":
		return "skip", backfillReasonBuffer
	case outcome == "skipped":
		// The time never ran (the scheduler skipped it): a backfill runs it.
		return "rerun", ""
	case reprocess == ReprocessAll:
		return "rerun", ""
	case reprocess == ReprocessFailed && runState != nil && (*runState == "failed" || *runState == "canceled" || *runState == "stopped"):
		return "rerun", ""
	}
	return "skip", backfillReasonExists
}

// CreateBackfill validates and stores a backfill in q's transaction (nothing
// runs until a master admits it). With dryRun it stores nothing and returns
// the plan: every logical time with what would happen to it now.
func CreateBackfill(ctx context.Context, q *db.Queries, spec BackfillSpec, dryRun bool) (Backfill, []PlanItem, error) {
	bc, arg, err := prepareBackfill(ctx, q, spec)
	if err != nil {
		return Backfill{}, nil, err
	}
	if dryRun {
		rows, err := q.ScheduleFireInRange(ctx, db.ScheduleFireInRangeParams{ScheduleID: bc.scheduleID, WorkflowID: bc.workflowID,
			FromAt: arg.FromAt, ToAt: arg.ToAt})
		if err != nil {
			return Backfill{}, nil, fmt.Errorf("read ledger: %w", err)
		}
		have := map[int64]db.ScheduleFireInRangeRow{}
		for _, r := range rows {
			have[r.NominalTime.UnixNano()] = r
		}
		var plan []PlanItem
		for t := arg.FromAt.Add(-time.Nanosecond); ; {
			f, ok := bc.cal.Next(t)
			if !ok || f.At.After(arg.ToAt) {
				break
			}
			t = f.At
			r, exists := have[f.At.UnixNano()]
			action, reason := decide(bc.spec.Reprocess, exists, r.Outcome, r.RunState, r.RunActive)
			it := PlanItem{At: f.At, Action: action, Reason: reason}
			if r.RunID != nil {
				it.RunID = *r.RunID
			}
			plan = append(plan, it)
		}
		if arg.Descending {
			for i, j := 0, len(plan)-1; i < j; i, j = i+1, j-1 {
				plan[i], plan[j] = plan[j], plan[i]
			}
		}
		return Backfill{Workflow: bc.spec.Workflow, Schedule: bc.spec.Schedule, From: arg.FromAt, To: arg.ToAt, Parallel: int(arg.Parallel),
			Order: bc.spec.Order, Reprocess: arg.Reprocess, State: "dry-run", Total: int(arg.Total)}, plan, nil
	}
	id, err := q.BackfillInsert(ctx, arg)
	if err != nil {
		return Backfill{}, nil, fmt.Errorf("store backfill: %w", err)
	}
	b, err := GetBackfill(ctx, q, id)
	return b, nil, err
}

// GetBackfill reads a backfill with its progress.
func GetBackfill(ctx context.Context, q *db.Queries, id int64) (Backfill, error) {
	r, err := q.BackfillGet(ctx, id)
	if errors.Is(err, pgx.ErrNoRows) {
		return Backfill{}, fmt.Errorf("%w: backfill %d", ErrNotFound, id)
	}
	if err != nil {
		return Backfill{}, fmt.Errorf("get backfill %d: %w", id, err)
	}
	return backfillFromRow(r), nil
}

func backfillFromRow(r db.BackfillGetRow) Backfill {
	b := Backfill{ID: r.ID, Workflow: r.Workflow, From: r.FromAt, To: r.ToAt, Parallel: int(r.Parallel), Order: "asc",
		Reprocess: r.Reprocess, State: r.State, Total: int(r.Total), Started: int(r.Started), Skipped: int(r.Skipped),
		Running: int(r.Running), Succeeded: int(r.Succeeded), Failed: int(r.Failed), Cursor: r.CursorAt, CreatedAt: r.CreatedAt,
		Finished: r.FinishedAt}
	if r.Descending {
		b.Order = "desc"
	}
	if r.Schedule != nil {
		b.Schedule = *r.Schedule
	}
	return b
}

// ListBackfills lists backfills, newest first.
func ListBackfills(ctx context.Context, q *db.Queries, limit int) ([]Backfill, error) {
	if limit <= 0 {
		limit = 100
	}
	rows, err := q.BackfillList(ctx, int32(limit))
	if err != nil {
		return nil, fmt.Errorf("list backfills: %w", err)
	}
	var out []Backfill
	for _, r := range rows {
		out = append(out, backfillFromRow(db.BackfillGetRow(r)))
	}
	return out, nil
}

// SetBackfillState pauses (running → paused), resumes (paused → running) or
// cancels (running or paused → canceled: nothing more is admitted; runs
// already started go on) a backfill.
func SetBackfillState(ctx context.Context, q *db.Queries, id int64, to string) error {
	var from []string
	switch to {
	case "paused":
		from = []string{"running"}
	case "running":
		from = []string{"paused"}
	case "canceled":
		from = []string{"running", "paused"}
	default:
		return fmt.Errorf("backfill %d: unknown state %q", id, to)
	}
	_, err := q.BackfillSetState(ctx, db.BackfillSetStateParams{ID: id, ToState: to, FromStates: from})
	if errors.Is(err, pgx.ErrNoRows) {
		b, gerr := GetBackfill(ctx, q, id)
		if gerr != nil {
			return gerr
		}
		return fmt.Errorf("%w: backfill %d is %s: cannot make it %s", ErrState, id, b.State, to)
	}
	if err != nil {
		return fmt.Errorf("backfill %d: %w", id, err)
	}
	return nil
}

// AdmitResult counts what an admission pass did.
type AdmitResult struct {
	Backfills, Started, Skipped, Finished int
	More                                  bool
}

// AdmitBackfills admits runs of running backfills: each backfill row is
// locked (SKIP LOCKED) while its active runs are counted and new logical times
// are materialized up to its parallel, so concurrent masters never exceed it.
// A backfill of a schedule also locks the schedule's row, which serializes it
// with the schedule's fire pass on the shared ledger key.
func AdmitBackfills(ctx context.Context, pool *pgxpool.Pool, now *time.Time, batch int) (AdmitResult, error) {
	if batch <= 0 {
		batch = BackfillBatchDefault
	}
	var res AdmitResult
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		q := db.New(tx)
		rows, err := q.BackfillLockRunning(ctx, int32(batch))
		if err != nil {
			return fmt.Errorf("lock backfills: %w", err)
		}
		res.More = len(rows) == batch
		for _, r := range rows {
			if err := pgx.BeginFunc(ctx, tx, func(sp pgx.Tx) error { return admit(ctx, db.New(sp), r, now, &res) }); err != nil {
				return fmt.Errorf("backfill %d: %w", r.ID, err)
			}
			res.Backfills++
		}
		return nil
	})
	return res, err
}

func admit(ctx context.Context, q *db.Queries, r db.BackfillLockRunningRow, now *time.Time, res *AdmitResult) error {
	if r.ScheduleID != nil {
		if _, err := q.ScheduleLockByID(ctx, *r.ScheduleID); errors.Is(err, pgx.ErrNoRows) {
			return nil // being fired right now: next pass
		} else if err != nil {
			return err
		}
	}
	s := Spec{Zone: r.Zone, DSTGap: r.DstGap, DSTFold: r.DstFold}
	if r.Cron != nil {
		s.Cron = *r.Cron
	} else if r.IntervalMs != nil {
		s.Interval = time.Duration(*r.IntervalMs) * time.Millisecond
	}
	cal, err := s.calendar(r.AnchorAt)
	if err != nil {
		return err
	}
	active, err := q.BackfillActiveRuns(ctx, &r.ID)
	if err != nil {
		return err
	}
	sched := Schedule{ID: 0, Spec: Spec{Workflow: r.Workflow}}
	if r.ScheduleID != nil {
		sched.ID = *r.ScheduleID
	}
	_ = json.Unmarshal(r.Params, &sched.Params)
	cursor := r.CursorAt
	exhausted := r.Exhausted
	started, skipped := 0, 0
	for i := 0; !exhausted && int(active) < int(r.Parallel) && i < backfillAdmitPerPass; i++ {
		var at time.Time
		var ok bool
		if r.Descending {
			at, ok = prevTime(cal, cursor, r.FromAt, r.ToAt)
		} else {
			from := r.FromAt.Add(-time.Nanosecond)
			if cursor != nil {
				from = *cursor
			}
			var f calendar.Fire
			f, ok = cal.Next(from)
			at = f.At
			ok = ok && !at.After(r.ToAt)
		}
		if !ok {
			exhausted = true
			break
		}
		cursor = &at
		fr, err := q.ScheduleFireGetForUpdate(ctx, db.ScheduleFireGetForUpdateParams{ScheduleID: r.ScheduleID, WorkflowID: r.WorkflowID, NominalTime: at})
		exists := err == nil
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		action, _ := decide(r.Reprocess, exists, fr.Outcome, fr.RunState, fr.RunActive)
		if action == "skip" {
			skipped++
			continue
		}
		fireID := fr.ID
		if !exists {
			fireID, err = q.ScheduleFireInsert(ctx, db.ScheduleFireInsertParams{ScheduleID: r.ScheduleID, WorkflowID: r.WorkflowID,
				NominalTime: at, Source: "backfill", BackfillID: &r.ID, Outcome: "skipped", Reason: ptr(reasonStarting), Now: now})
			if err != nil {
				return fmt.Errorf("record logical time %s: %w", at, err)
			}
		}
		if err := startRun(ctx, q, sched, fireID, at, &r.ID, FireConfig{Now: now}); err != nil {
			if !isStartRefused(err) {
				return err
			}
			if err := q.ScheduleFireSetSkipped(ctx, db.ScheduleFireSetSkippedParams{ID: fireID, Reason: ptr(ReasonStartFailed)}); err != nil {
				return err
			}
			skipped++
			continue
		}
		started++
		active++
	}
	if err := q.BackfillAdvance(ctx, db.BackfillAdvanceParams{ID: r.ID, CursorAt: cursor, Exhausted: exhausted,
		Started: int32(started), Skipped: int32(skipped)}); err != nil {
		return err
	}
	res.Started += started
	res.Skipped += skipped
	if exhausted && active == 0 {
		if err := q.BackfillFinish(ctx, r.ID); err != nil {
			return err
		}
		res.Finished++
	}
	return nil
}

// prevTime is the latest fire time of cal in [from, before) (before: the cursor,
// or just past to when nil), searching back in widening windows.
func prevTime(cal *calendar.Calendar, cursor *time.Time, from, to time.Time) (time.Time, bool) {
	end := to.Add(time.Nanosecond)
	if cursor != nil {
		end = *cursor
	}
	for span := time.Hour; ; span *= 2 {
		lo := end.Add(-span)
		if lo.Before(from) {
			lo = from
		}
		var last time.Time
		found := false
		for t := lo.Add(-time.Nanosecond); ; {
			f, ok := cal.Next(t)
			if !ok || !f.At.Before(end) {
				break
			}
			last, found, t = f.At, true, f.At
		}
		if found {
			return last, true
		}
		if !lo.After(from) {
			return time.Time{}, false
		}
	}
}
