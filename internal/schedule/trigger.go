package schedule

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/workflow"
)

// ErrConflict: a manual trigger's logical time is already in the ledger and
// may not run (now).
var ErrConflict = errors.New("logical time already in the ledger")

// Triggered is what a manual trigger started.
type Triggered struct {
	Schedule string    `json:"schedule"`
	Nominal  time.Time `json:"nominal_time"`
	FireID   int64     `json:"fire_id"`
	RunID    int64     `json:"run_id"`
	// Rerun: the row existed (its earlier runs are in previous_run_ids).
	Rerun bool `json:"rerun"`
}

// Trigger starts a run of a schedule's workflow for the logical time at (nil:
// now, Postgres time, to the second) through the fire ledger's key, in q's
// transaction. It locks the schedule's row first, so it serializes with the
// fire pass and backfill admission. The conflict rule is the backfill's (the
// first writer of a ledger row owns it):
//   - no row: a row with source manual is recorded and the run starts;
//   - a row whose run is active: ErrConflict (a logical time never runs twice
//     at once);
//   - a buffered row: ErrConflict (its schedule starts it);
//   - a skipped row (it never ran): the run starts in that row;
//   - a started row whose run ended: ErrConflict, unless rerun: a new run in the
//     same row (the earlier run's id goes to previous_run_ids).
//
// A manual trigger ignores pause, overlap and max_active_runs (it is
// explicit). A time at or after the schedule's next fire time, once in the
// ledger, is not fired again by the schedule: the manual run is that time's run.
// Nothing is stored when it fails.
func Trigger(ctx context.Context, q *db.Queries, name string, at *time.Time, rerun bool, now *time.Time) (Triggered, error) {
	r, err := q.ScheduleGetForUpdate(ctx, name)
	if errors.Is(err, pgx.ErrNoRows) {
		return Triggered{}, fmt.Errorf("%w: schedule %s", ErrNotFound, name)
	}
	if err != nil {
		return Triggered{}, fmt.Errorf("lock schedule %s: %w", name, err)
	}
	s := fromRow(db.ScheduleLockDueRow(r))
	var t time.Time
	if at != nil {
		t = at.UTC()
	} else {
		n, err := dbNow(ctx, q, now)
		if err != nil {
			return Triggered{}, err
		}
		t = n.Truncate(time.Second)
	}
	out := Triggered{Schedule: name, Nominal: t}
	fr, err := q.ScheduleFireGetForUpdate(ctx, db.ScheduleFireGetForUpdateParams{ScheduleID: &s.ID, WorkflowID: s.workflowID, NominalTime: t})
	exists := err == nil
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return out, fmt.Errorf("ledger row of %s at %s: %w", name, t.Format(time.RFC3339), err)
	}
	stamp := t.Format(time.RFC3339Nano)
	if exists {
		switch {
		case fr.RunActive:
			return out, fmt.Errorf("%w: %s at %s is running (run %d)", ErrConflict, name, stamp, deref(fr.RunID))
		case fr.Outcome == "buffered":
			return out, fmt.Errorf("%w: %s at %s is buffered; the schedule starts it when its active run ends", ErrConflict, name, stamp)
		case fr.Outcome == "started" && !rerun:
			return out, fmt.Errorf("%w: %s at %s already ran (run %d, %s); --rerun starts it again", ErrConflict, name, stamp,
				deref(fr.RunID), derefS(fr.RunState))
		}
		out.FireID, out.Rerun = fr.ID, fr.Outcome == "started"
	} else {
		out.FireID, err = q.ScheduleFireInsert(ctx, db.ScheduleFireInsertParams{ScheduleID: &s.ID, WorkflowID: s.workflowID,
			NominalTime: t, Source: "manual", Outcome: "skipped", Reason: ptr(reasonStarting), Now: now})
		if err != nil {
			return out, fmt.Errorf("record %s at %s: %w", name, stamp, err)
		}
	}
	// Unique per run of the row: a retried command finds the row started.
	key := fmt.Sprintf("baton-manual:%d:%d:%s", s.ID, out.FireID, time.Now().UTC().Format(time.RFC3339Nano))
	st, err := workflow.Start(ctx, q, workflow.StartParams{Workflow: s.Workflow, Params: s.Params, IdempotencyKey: key})
	if err != nil {
		return out, fmt.Errorf("trigger %s at %s: %w", name, stamp, err)
	}
	out.RunID = st.RunID
	if err := q.ScheduleFireSetRun(ctx, db.ScheduleFireSetRunParams{ID: out.FireID, RunID: &st.RunID, Now: now}); err != nil {
		return out, fmt.Errorf("record run %d of %s at %s: %w", st.RunID, name, stamp, err)
	}
	if err := q.ScheduleFireSetManual(ctx, out.FireID); err != nil {
		return out, fmt.Errorf("record run %d of %s at %s: %w", st.RunID, name, stamp, err)
	}
	return out, nil
}

func deref(p *int64) int64 {
	if p == nil {
		return 0
	}
	return *p
}

func derefS(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}
