package baton

import (
	"context"
	"time"

	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/schedule"
)

// Schedule types: one model for Go and the CLI's JSON (docs/schedules.md).
type (
	// ScheduleSpec defines a schedule: a workflow and its params, a cron
	// expression in a zone or an interval, bounds, jitter and policies.
	ScheduleSpec = schedule.Spec
	// Schedule is a stored schedule with its next fire time and state.
	Schedule = schedule.Schedule
	// SchedulePreviewItem is one upcoming fire time, local and UTC.
	SchedulePreviewItem = schedule.PreviewItem
	// BackfillSpec describes a backfill.
	BackfillSpec = schedule.BackfillSpec
	// Backfill is a stored backfill and its progress.
	Backfill = schedule.Backfill
	// BackfillPlanItem is one logical time of a dry run and what would happen.
	BackfillPlanItem = schedule.PlanItem
	// ScheduleTriggered is what a manual trigger started.
	ScheduleTriggered = schedule.Triggered
)

// Schedule errors to match with errors.Is.
var (
	// ErrInvalidSchedule: a schedule or backfill failed validation (invalid
	// cron, unknown zone, unknown workflow, --from after --to, ...); the
	// message names each field. Nothing was stored.
	ErrInvalidSchedule = schedule.ErrInvalid
	// ErrScheduleNotFound: no such schedule or backfill.
	ErrScheduleNotFound = schedule.ErrNotFound
	// ErrScheduleExists: a schedule of that name exists.
	ErrScheduleExists = schedule.ErrExists
	// ErrScheduleConflict: a manual trigger's logical time is running, buffered,
	// or already ran (without rerun). Nothing was stored.
	ErrScheduleConflict = schedule.ErrConflict
)

// CreateSchedule validates and stores a schedule; its first fire time is the
// first after now (Postgres time). Any master fires it.
func (c *Client) CreateSchedule(ctx context.Context, spec ScheduleSpec) (Schedule, error) {
	var s Schedule
	err := c.inTx(ctx, func(q *db.Queries) error {
		var err error
		s, err = schedule.Create(ctx, q, spec, nil)
		return err
	})
	return s, err
}

// UpdateSchedule changes a schedule: change edits its current spec under the
// schedule's row lock. The next fire time follows the new calendar.
func (c *Client) UpdateSchedule(ctx context.Context, name string, change func(*ScheduleSpec)) (Schedule, error) {
	var s Schedule
	err := c.inTx(ctx, func(q *db.Queries) error {
		var err error
		s, err = schedule.Update(ctx, q, name, nil, change)
		return err
	})
	return s, err
}

// GetSchedule reads a schedule.
func (c *Client) GetSchedule(ctx context.Context, name string) (Schedule, error) {
	var s Schedule
	err := c.inTx(ctx, func(q *db.Queries) error {
		var err error
		s, err = schedule.Get(ctx, q, name)
		return err
	})
	return s, err
}

// ListSchedules lists schedules by name; workflow "" lists all.
func (c *Client) ListSchedules(ctx context.Context, workflow string) ([]Schedule, error) {
	var ss []Schedule
	err := c.inTx(ctx, func(q *db.Queries) error {
		var err error
		ss, err = schedule.List(ctx, q, workflow, 0)
		return err
	})
	return ss, err
}

// PauseSchedule pauses a schedule: its due times are recorded as skipped
// (reason paused) until ResumeSchedule.
func (c *Client) PauseSchedule(ctx context.Context, name, reason string) error {
	return c.inTx(ctx, func(q *db.Queries) error { return schedule.SetPaused(ctx, q, name, true, reason) })
}

// ResumeSchedule resumes a paused schedule (times skipped while paused are not
// caught up).
func (c *Client) ResumeSchedule(ctx context.Context, name string) error {
	return c.inTx(ctx, func(q *db.Queries) error { return schedule.SetPaused(ctx, q, name, false, "") })
}

// DeleteSchedule deletes a schedule and its ledger; runs it started go on.
func (c *Client) DeleteSchedule(ctx context.Context, name string) error {
	return c.inTx(ctx, func(q *db.Queries) error { return schedule.Delete(ctx, q, name) })
}

// PreviewSchedule lists the next n fire times of a schedule, local and UTC,
// with daylight-saving notes: what the masters will record, in order.
func (c *Client) PreviewSchedule(ctx context.Context, name string, n int) ([]SchedulePreviewItem, error) {
	var items []SchedulePreviewItem
	err := c.inTx(ctx, func(q *db.Queries) error {
		var err error
		items, err = schedule.Preview(ctx, q, name, n, nil)
		return err
	})
	return items, err
}

// TriggerSchedule starts a run of a schedule for the logical time at (nil:
// now, Postgres time, to the second) through the fire ledger's key, whatever
// the schedule's pause and overlap policy. A time in the ledger is refused
// with ErrScheduleConflict while its run is active or buffered, and once it
// ran unless rerun (a new run in the same ledger row). A future fire time
// triggered by hand is not fired again by the schedule (docs/schedules.md).
func (c *Client) TriggerSchedule(ctx context.Context, name string, at *time.Time, rerun bool) (ScheduleTriggered, error) {
	var t ScheduleTriggered
	err := c.inTx(ctx, func(q *db.Queries) error {
		var err error
		t, err = schedule.Trigger(ctx, q, name, at, rerun, nil)
		return err
	})
	return t, err
}

// CreateBackfill validates and stores a backfill; masters admit its runs
// lazily, at most spec.Parallel at once.
func (c *Client) CreateBackfill(ctx context.Context, spec BackfillSpec) (Backfill, error) {
	var b Backfill
	err := c.inTx(ctx, func(q *db.Queries) error {
		var err error
		b, _, err = schedule.CreateBackfill(ctx, q, spec, false)
		return err
	})
	return b, err
}

// PlanBackfill is a dry run: it validates spec and lists every logical time
// with what a backfill would do with it now; it stores nothing.
func (c *Client) PlanBackfill(ctx context.Context, spec BackfillSpec) ([]BackfillPlanItem, error) {
	var plan []BackfillPlanItem
	err := c.inTx(ctx, func(q *db.Queries) error {
		var err error
		_, plan, err = schedule.CreateBackfill(ctx, q, spec, true)
		return err
	})
	return plan, err
}

// GetBackfill reads a backfill with its progress.
func (c *Client) GetBackfill(ctx context.Context, id int64) (Backfill, error) {
	var b Backfill
	err := c.inTx(ctx, func(q *db.Queries) error {
		var err error
		b, err = schedule.GetBackfill(ctx, q, id)
		return err
	})
	return b, err
}

// PauseBackfill stops admitting runs of a backfill until ResumeBackfill.
func (c *Client) PauseBackfill(ctx context.Context, id int64) error {
	return c.inTx(ctx, func(q *db.Queries) error { return schedule.SetBackfillState(ctx, q, id, "paused") })
}

// ResumeBackfill resumes a paused backfill.
func (c *Client) ResumeBackfill(ctx context.Context, id int64) error {
	return c.inTx(ctx, func(q *db.Queries) error { return schedule.SetBackfillState(ctx, q, id, "running") })
}

// CancelBackfill ends a backfill: nothing more is admitted; runs already
// started go on.
func (c *Client) CancelBackfill(ctx context.Context, id int64) error {
	return c.inTx(ctx, func(q *db.Queries) error { return schedule.SetBackfillState(ctx, q, id, "canceled") })
}
