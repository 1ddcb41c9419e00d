// Package schedule stores schedules, fires them through the ledger
// (schedule_fires, UNIQUE (schedule_id, nominal_time)) and runs backfills.
// Every function takes a *db.Queries and runs in the transaction it is bound
// to, except the passes (FirePass, AdmitBackfills), which own their
// transactions. Every decision is made on Postgres time, or on the "now" a test
// injects.
package schedule

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/calendar"
	"github.com/baton-scheduler/baton/internal/workflow"
)

// Overlap policies: what a fire does while a run of its schedule is active.
const (
	OverlapSkip        = "skip"
	OverlapBufferOne   = "buffer_one"
	OverlapBufferAll   = "buffer_all"
	OverlapCancelOther = "cancel_other"
	OverlapAllow       = "allow"
)

// Catch-up policies: what happens to fire times missed (due longer ago than
// OnTimeGrace when a master gets to them).
const (
	CatchupNone   = "none"
	CatchupLatest = "latest"
	CatchupAll    = "all"
)

// Defaults.
const (
	CatchupDefault       = CatchupLatest
	CatchupWindowDefault = 24 * time.Hour
	CatchupMaxDefault    = 10
	BufferMaxDefault     = 100
	// OnTimeGrace: a fire time due at most this long ago is on time; older
	// ones are missed and the catch-up policy decides.
	OnTimeGrace = time.Minute
)

// ErrNotFound: no such schedule or backfill.
var ErrNotFound = errors.New("not found")

// ErrExists: a schedule of that name exists.
var ErrExists = errors.New("schedule already exists")

// ErrState: the change does not apply to the backfill in its state.
var ErrState = errors.New("backfill state conflict")

// ErrInvalid is what every InvalidError matches with errors.Is.
var ErrInvalid = errors.New("invalid schedule or backfill")

// InvalidError lists what is wrong with a schedule or backfill, each problem
// naming its field; nothing was stored.
type InvalidError struct{ Problems []string }

func (e *InvalidError) Error() string { return "invalid: " + strings.Join(e.Problems, "; ") }

// Unwrap makes errors.Is(err, ErrInvalid) true.
func (e *InvalidError) Unwrap() error { return ErrInvalid }

// Spec is a schedule's definition (the JSON of the CLI and the Client).
type Spec struct {
	Name     string         `json:"name"`
	Workflow string         `json:"workflow"`
	Params   map[string]any `json:"params,omitempty"`
	// Cron is a 5-field expression, @hourly/@daily/@weekly/@monthly/@yearly or
	// "@every DURATION" (an interval); Interval is the same as @every.
	Cron     string        `json:"cron,omitempty"`
	Interval time.Duration `json:"interval,omitempty"`
	Zone     string        `json:"zone"`
	Start    *time.Time    `json:"start,omitempty"`
	End      *time.Time    `json:"end,omitempty"`
	Jitter   time.Duration `json:"jitter,omitempty"`
	Overlap  string        `json:"overlap"`
	// BufferMax bounds buffer_all.
	BufferMax      int           `json:"buffer_max"`
	MaxActiveRuns  int           `json:"max_active_runs"`
	Catchup        string        `json:"catchup"`
	CatchupWindow  time.Duration `json:"catchup_window"`
	CatchupMax     int           `json:"catchup_max"`
	PauseOnFailure bool          `json:"pause_on_failure"`
	DSTGap         string        `json:"dst_gap"`
	DSTFold        string        `json:"dst_fold"`
	Paused         bool          `json:"paused"`
}

// WithDefaults fills zero fields.
func (s Spec) WithDefaults() Spec {
	if s.Zone == "" {
		s.Zone = "UTC"
	}
	if s.Overlap == "" {
		s.Overlap = OverlapSkip
	}
	if s.BufferMax == 0 {
		s.BufferMax = BufferMaxDefault
	}
	if s.Catchup == "" {
		s.Catchup = CatchupDefault
	}
	if s.CatchupWindow == 0 {
		s.CatchupWindow = CatchupWindowDefault
	}
	if s.CatchupMax == 0 {
		s.CatchupMax = CatchupMaxDefault
	}
	if s.DSTGap == "" {
		s.DSTGap = calendar.GapShift
	}
	if s.DSTFold == "" {
		s.DSTFold = calendar.FoldFirst
	}
	return s
}

// calendarOf builds the calendar of a spec; anchor is the interval's origin.
func (s Spec) calendar(anchor time.Time) (*calendar.Calendar, error) {
	cs := calendar.Spec{Cron: s.Cron, Interval: s.Interval, Zone: s.Zone, Anchor: anchor, Gap: s.DSTGap, Fold: s.DSTFold}
	if s.Start != nil {
		cs.Start = *s.Start
		cs.Anchor = *s.Start
	}
	if s.End != nil {
		cs.End = *s.End
	}
	return calendar.New(cs)
}

// validate checks everything but the workflow (checked in the transaction).
func (s Spec) validate() []string {
	var probs []string
	if !nameRE(s.Name) {
		probs = append(probs, fmt.Sprintf("name: %q is not a valid schedule name (letters, digits, _ . -; at most 128)", s.Name))
	}
	if s.Workflow == "" {
		probs = append(probs, "workflow: missing")
	}
	if _, err := s.calendar(time.Unix(0, 0)); err != nil {
		probs = append(probs, strings.Split(err.Error(), "\n")...)
	}
	switch s.Overlap {
	case OverlapSkip, OverlapBufferOne, OverlapBufferAll, OverlapCancelOther, OverlapAllow:
	default:
		probs = append(probs, fmt.Sprintf("overlap: unknown policy %q (skip, buffer_one, buffer_all, cancel_other, allow)", s.Overlap))
	}
	switch s.Catchup {
	case CatchupNone, CatchupLatest, CatchupAll:
	default:
		probs = append(probs, fmt.Sprintf("catchup: unknown policy %q (none, latest, all)", s.Catchup))
	}
	if s.BufferMax < 1 || s.BufferMax > 10000 {
		probs = append(probs, fmt.Sprintf("buffer_max: %d is outside 1..10000", s.BufferMax))
	}
	if s.MaxActiveRuns < 0 {
		probs = append(probs, fmt.Sprintf("max_active_runs: %d is negative (0: no cap)", s.MaxActiveRuns))
	}
	if s.CatchupWindow < 0 {
		probs = append(probs, fmt.Sprintf("catchup_window: %s is negative", s.CatchupWindow))
	}
	if s.CatchupMax < 1 {
		probs = append(probs, fmt.Sprintf("catchup_max: %d is below 1", s.CatchupMax))
	}
	if s.Jitter < 0 {
		probs = append(probs, fmt.Sprintf("jitter: %s is negative", s.Jitter))
	}
	return probs
}

func nameRE(n string) bool {
	if n == "" || len(n) > 128 {
		return false
	}
	for i, r := range n {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || (i > 0 && (r == '_' || r == '.' || r == '-'))
		if !ok {
			return false
		}
	}
	return true
}

// lookupWorkflow checks that the workflow exists and that params fit its
// latest definition.
func lookupWorkflow(ctx context.Context, q *db.Queries, name string, params map[string]any) (int64, json.RawMessage, error) {
	w, err := q.ScheduleWorkflowLookup(ctx, name)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, nil, &InvalidError{[]string{fmt.Sprintf("workflow: unknown workflow %q (apply it first)", name)}}
	}
	if err != nil {
		return 0, nil, fmt.Errorf("look up workflow %s: %w", name, err)
	}
	var d workflow.Definition
	if err := json.Unmarshal(w.Definition, &d); err != nil {
		return 0, nil, fmt.Errorf("decode workflow %s: %w", name, err)
	}
	if _, err := d.RunParams(params); err != nil {
		return 0, nil, &InvalidError{[]string{"params: " + err.Error()}}
	}
	raw, err := json.Marshal(params)
	if err != nil {
		return 0, nil, fmt.Errorf("params: %w", err)
	}
	if params == nil {
		raw = json.RawMessage(`{}`)
	}
	return w.ID, raw, nil
}

// Schedule is a stored schedule with its state.
type Schedule struct {
	Spec
	ID            int64      `json:"id"`
	PausedReason  string     `json:"paused_reason,omitempty"`
	NextNominalAt *time.Time `json:"next_nominal_at,omitempty"`
	NextFireAt    *time.Time `json:"next_fire_at,omitempty"`
	ActiveRuns    int        `json:"active_runs"`
	Buffered      int        `json:"buffered"`
	CreatedAt     time.Time  `json:"created_at"`
	UpdatedAt     time.Time  `json:"updated_at"`
	anchor        time.Time
	workflowID    int64
}

func fromRow(r db.ScheduleLockDueRow) Schedule {
	s := Schedule{ID: r.ID, PausedReason: r.PausedReason, NextNominalAt: r.NextNominalAt, NextFireAt: r.NextFireAt,
		Buffered: int(r.Buffered), CreatedAt: r.CreatedAt, UpdatedAt: r.UpdatedAt, anchor: r.AnchorAt, workflowID: r.WorkflowID}
	s.Spec = Spec{Name: r.Name, Workflow: r.Workflow, Zone: r.Zone, Start: r.StartAt, End: r.EndAt,
		Jitter: time.Duration(r.JitterMs) * time.Millisecond, Overlap: r.Overlap, BufferMax: int(r.BufferMax),
		MaxActiveRuns: int(r.MaxActiveRuns), Catchup: r.Catchup, CatchupWindow: time.Duration(r.CatchupWindowMs) * time.Millisecond,
		CatchupMax: int(r.CatchupMax), PauseOnFailure: r.PauseOnFailure, DSTGap: r.DstGap, DSTFold: r.DstFold, Paused: r.Paused}
	if r.Cron != nil {
		s.Cron = *r.Cron
	}
	if r.IntervalMs != nil {
		s.Interval = time.Duration(*r.IntervalMs) * time.Millisecond
	}
	_ = json.Unmarshal(r.Params, &s.Params)
	return s
}

// Calendar is the schedule's calendar.
func (s Schedule) Calendar() (*calendar.Calendar, error) { return s.Spec.calendar(s.anchor) }

// next computes the next nominal and due instants strictly after t.
func next(id int64, cal *calendar.Calendar, jitter time.Duration, t time.Time) (nominal, due *time.Time) {
	f, ok := cal.Next(t)
	if !ok {
		return nil, nil
	}
	n := f.At
	d := n.Add(calendar.Jitter(id, n, jitter))
	return &n, &d
}

func dbNow(ctx context.Context, q *db.Queries, now *time.Time) (time.Time, error) {
	t, err := q.ScheduleNow(ctx, now)
	if err != nil {
		return time.Time{}, fmt.Errorf("read database time: %w", err)
	}
	return t.UTC(), nil
}

// Create stores a schedule in q's transaction. Its first fire time is the
// first after now (Postgres time, or now when a test sets it).
func Create(ctx context.Context, q *db.Queries, spec Spec, now *time.Time) (Schedule, error) {
	spec = spec.WithDefaults()
	if probs := spec.validate(); len(probs) > 0 {
		return Schedule{}, &InvalidError{probs}
	}
	wid, params, err := lookupWorkflow(ctx, q, spec.Workflow, spec.Params)
	if err != nil {
		return Schedule{}, err
	}
	t, err := dbNow(ctx, q, now)
	if err != nil {
		return Schedule{}, err
	}
	anchor := t.Truncate(time.Second)
	arg := insertParams(spec, wid, params, anchor)
	id, err := q.ScheduleInsert(ctx, arg)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23505" {
		return Schedule{}, fmt.Errorf("%w: %s", ErrExists, spec.Name)
	}
	if err != nil {
		return Schedule{}, fmt.Errorf("store schedule %s: %w", spec.Name, err)
	}
	cal, _ := spec.calendar(anchor)
	nominal, due := next(id, cal, spec.Jitter, t)
	if _, err := q.ScheduleAdvanceInit(ctx, db.ScheduleAdvanceInitParams{ID: id, NextNominalAt: nominal, NextFireAt: due}); err != nil {
		return Schedule{}, fmt.Errorf("store schedule %s: %w", spec.Name, err)
	}
	return Get(ctx, q, spec.Name)
}

func insertParams(spec Spec, wid int64, params json.RawMessage, anchor time.Time) db.ScheduleInsertParams {
	arg := db.ScheduleInsertParams{Name: spec.Name, WorkflowID: wid, Params: params, Zone: spec.Zone, StartAt: spec.Start,
		EndAt: spec.End, AnchorAt: anchor, JitterMs: spec.Jitter.Milliseconds(), Overlap: spec.Overlap,
		BufferMax: int32(spec.BufferMax), MaxActiveRuns: int32(spec.MaxActiveRuns), Catchup: spec.Catchup,
		CatchupWindowMs: spec.CatchupWindow.Milliseconds(), CatchupMax: int32(spec.CatchupMax),
		PauseOnFailure: spec.PauseOnFailure, DstGap: spec.DSTGap, DstFold: spec.DSTFold, Paused: spec.Paused}
	cron, interval := calendarColumns(spec)
	arg.Cron, arg.IntervalMs = cron, interval
	return arg
}

// calendarColumns stores "@every D" as an interval.
func calendarColumns(spec Spec) (*string, *int64) {
	c := strings.TrimSpace(spec.Cron)
	if strings.HasPrefix(c, "@every") {
		d, _ := time.ParseDuration(strings.TrimSpace(strings.TrimPrefix(c, "@every")))
		ms := d.Milliseconds()
		return nil, &ms
	}
	if c != "" {
		return &c, nil
	}
	ms := spec.Interval.Milliseconds()
	return nil, &ms
}

// Update changes a schedule in q's transaction: change edits its current spec
// (the name cannot change). The next fire time is recomputed from the new
// calendar; a time already due and not yet fired stays due.
func Update(ctx context.Context, q *db.Queries, name string, now *time.Time, change func(*Spec)) (Schedule, error) {
	r, err := q.ScheduleGetForUpdate(ctx, name)
	if errors.Is(err, pgx.ErrNoRows) {
		return Schedule{}, fmt.Errorf("%w: schedule %s", ErrNotFound, name)
	}
	if err != nil {
		return Schedule{}, fmt.Errorf("update schedule %s: %w", name, err)
	}
	cur := fromRow(db.ScheduleLockDueRow(r))
	spec := cur.Spec
	change(&spec)
	spec.Name = name
	spec = spec.WithDefaults()
	if probs := spec.validate(); len(probs) > 0 {
		return Schedule{}, &InvalidError{probs}
	}
	wid, params, err := lookupWorkflow(ctx, q, spec.Workflow, spec.Params)
	if err != nil {
		return Schedule{}, err
	}
	t, err := dbNow(ctx, q, now)
	if err != nil {
		return Schedule{}, err
	}
	cal, _ := spec.calendar(r.AnchorAt)
	from := t
	if r.NextNominalAt != nil && r.NextNominalAt.Before(t) {
		from = r.NextNominalAt.Add(-time.Nanosecond)
	}
	nominal, due := next(r.ID, cal, spec.Jitter, from)
	ins := insertParams(spec, wid, params, r.AnchorAt)
	if err := q.ScheduleUpdate(ctx, db.ScheduleUpdateParams{ID: r.ID, WorkflowID: wid, Params: params, Cron: ins.Cron,
		IntervalMs: ins.IntervalMs, Zone: ins.Zone, StartAt: ins.StartAt, EndAt: ins.EndAt, AnchorAt: r.AnchorAt,
		JitterMs: ins.JitterMs, Overlap: ins.Overlap, BufferMax: ins.BufferMax, MaxActiveRuns: ins.MaxActiveRuns,
		Catchup: ins.Catchup, CatchupWindowMs: ins.CatchupWindowMs, CatchupMax: ins.CatchupMax,
		PauseOnFailure: ins.PauseOnFailure, DstGap: ins.DstGap, DstFold: ins.DstFold,
		NextNominalAt: nominal, NextFireAt: due}); err != nil {
		return Schedule{}, fmt.Errorf("update schedule %s: %w", name, err)
	}
	return Get(ctx, q, name)
}

// Get reads a schedule.
func Get(ctx context.Context, q *db.Queries, name string) (Schedule, error) {
	r, err := q.ScheduleGet(ctx, name)
	if errors.Is(err, pgx.ErrNoRows) {
		return Schedule{}, fmt.Errorf("%w: schedule %s", ErrNotFound, name)
	}
	if err != nil {
		return Schedule{}, fmt.Errorf("get schedule %s: %w", name, err)
	}
	s := fromRow(db.ScheduleLockDueRow{ID: r.ID, Name: r.Name, WorkflowID: r.WorkflowID, Params: r.Params, Cron: r.Cron,
		IntervalMs: r.IntervalMs, Zone: r.Zone, StartAt: r.StartAt, EndAt: r.EndAt, AnchorAt: r.AnchorAt, JitterMs: r.JitterMs,
		Overlap: r.Overlap, BufferMax: r.BufferMax, MaxActiveRuns: r.MaxActiveRuns, Catchup: r.Catchup,
		CatchupWindowMs: r.CatchupWindowMs, CatchupMax: r.CatchupMax, PauseOnFailure: r.PauseOnFailure, DstGap: r.DstGap,
		DstFold: r.DstFold, Paused: r.Paused, PausedReason: r.PausedReason, NextNominalAt: r.NextNominalAt,
		NextFireAt: r.NextFireAt, Buffered: r.Buffered, CreatedAt: r.CreatedAt, UpdatedAt: r.UpdatedAt, Workflow: r.Workflow})
	s.ActiveRuns = int(r.ActiveRuns)
	return s, nil
}

// List lists schedules by name (of one workflow if given).
func List(ctx context.Context, q *db.Queries, wf string, limit int) ([]Schedule, error) {
	if limit <= 0 {
		limit = 1000
	}
	arg := db.ScheduleListParams{MaxRows: int32(min(limit, 100000))}
	if wf != "" {
		arg.Workflow = &wf
	}
	rows, err := q.ScheduleList(ctx, arg)
	if err != nil {
		return nil, fmt.Errorf("list schedules: %w", err)
	}
	out := make([]Schedule, 0, len(rows))
	for _, r := range rows {
		s := fromRow(db.ScheduleLockDueRow{ID: r.ID, Name: r.Name, WorkflowID: r.WorkflowID, Params: r.Params, Cron: r.Cron,
			IntervalMs: r.IntervalMs, Zone: r.Zone, StartAt: r.StartAt, EndAt: r.EndAt, AnchorAt: r.AnchorAt, JitterMs: r.JitterMs,
			Overlap: r.Overlap, BufferMax: r.BufferMax, MaxActiveRuns: r.MaxActiveRuns, Catchup: r.Catchup,
			CatchupWindowMs: r.CatchupWindowMs, CatchupMax: r.CatchupMax, PauseOnFailure: r.PauseOnFailure, DstGap: r.DstGap,
			DstFold: r.DstFold, Paused: r.Paused, PausedReason: r.PausedReason, NextNominalAt: r.NextNominalAt,
			NextFireAt: r.NextFireAt, Buffered: r.Buffered, CreatedAt: r.CreatedAt, UpdatedAt: r.UpdatedAt, Workflow: r.Workflow})
		s.ActiveRuns = int(r.ActiveRuns)
		out = append(out, s)
	}
	return out, nil
}

// SetPaused pauses or resumes a schedule. While paused, each of its due fire
// times is recorded as skipped (reason paused); resuming does not catch them up.
func SetPaused(ctx context.Context, q *db.Queries, name string, paused bool, reason string) error {
	if paused && reason == "" {
		reason = "paused by an operator"
	}
	if !paused {
		reason = ""
	}
	_, err := q.ScheduleSetPaused(ctx, db.ScheduleSetPausedParams{Name: name, Paused: paused, Reason: reason})
	if errors.Is(err, pgx.ErrNoRows) {
		if _, err := q.ScheduleIDByName(ctx, name); errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("%w: schedule %s", ErrNotFound, name)
		}
		return nil // already in that state
	}
	if err != nil {
		return fmt.Errorf("pause schedule %s: %w", name, err)
	}
	return nil
}

// Delete deletes a schedule and its ledger; runs it started keep running.
func Delete(ctx context.Context, q *db.Queries, name string) error {
	n, err := q.ScheduleDelete(ctx, name)
	if err != nil {
		return fmt.Errorf("delete schedule %s: %w", name, err)
	}
	if n == 0 {
		return fmt.Errorf("%w: schedule %s", ErrNotFound, name)
	}
	return nil
}

// PreviewItem is one upcoming fire time.
type PreviewItem struct {
	Nominal time.Time `json:"nominal"`
	Local   string    `json:"local"`
	UTC     string    `json:"utc"`
	Due     time.Time `json:"due"`
	Kind    string    `json:"kind,omitempty"`
	Note    string    `json:"note,omitempty"`
}

// Preview lists the next n fire times of a schedule from its next one (what the
// fire pass will record, in order).
func Preview(ctx context.Context, q *db.Queries, name string, n int, now *time.Time) ([]PreviewItem, error) {
	s, err := Get(ctx, q, name)
	if err != nil {
		return nil, err
	}
	cal, err := s.Calendar()
	if err != nil {
		return nil, err
	}
	from, err := dbNow(ctx, q, now)
	if err != nil {
		return nil, err
	}
	if s.NextNominalAt != nil {
		from = s.NextNominalAt.Add(-time.Nanosecond)
	}
	return PreviewCalendar(cal, s.ID, s.Jitter, from, n), nil
}

// PreviewCalendar lists n fire times after from.
func PreviewCalendar(cal *calendar.Calendar, id int64, jitter time.Duration, from time.Time, n int) []PreviewItem {
	var out []PreviewItem
	for _, f := range cal.Upcoming(from, n) {
		it := PreviewItem{Nominal: f.At, Local: f.At.In(cal.Location()).Format("2006-01-02 15:04:05 MST -07:00 Mon"),
			UTC: f.At.UTC().Format("2006-01-02 15:04:05Z"), Due: f.At.Add(calendar.Jitter(id, f.At, jitter)), Kind: f.Kind}
		wall := f.Wall.Format("15:04")
		switch f.Kind {
		case calendar.KindGapShifted:
			it.Note = "daylight saving: " + wall + " does not exist that day; shifted forward by the gap"
		case calendar.KindGapSkipped:
			it.Note = "daylight saving: " + wall + " does not exist that day; skipped (dst_gap)"
		case calendar.KindFoldFirst:
			it.Note = "daylight saving: " + wall + " occurs twice that day; first occurrence"
		case calendar.KindFoldSecond:
			it.Note = "daylight saving: " + wall + " occurs twice that day; second occurrence"
		}
		out = append(out, it)
	}
	return out
}
