package schedule

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/calendar"
	"github.com/baton-scheduler/baton/internal/workflow"
)

// Skip reasons recorded in the ledger.
const (
	ReasonOverlap           = "overlap"
	ReasonBufferFull        = "buffer_full"
	ReasonMaxActiveRuns     = "max_active_runs"
	ReasonPaused            = "paused"
	ReasonOutsideWindow     = "outside_catchup_window"
	ReasonCatchupNone       = "catchup_none"
	ReasonCatchupSuperseded = "catchup_superseded"
	ReasonCatchupBound      = "catchup_bound"
	ReasonDSTGap            = "dst_gap"
	ReasonStartFailed       = "start_failed"
	reasonStarting          = "starting" // never committed: replaced by the run in the same transaction
)

// Defaults of a pass.
const (
	FireBatchDefault          = 50
	FireMaxPerScheduleDefault = 1000
)

// FireConfig configures FirePass.
type FireConfig struct {
	// Now replaces Postgres time in every decision (tests); nil in production.
	Now *time.Time
	// Batch is how many schedules one transaction locks and fires.
	Batch int
	// MaxPerSchedule bounds the ledger rows one schedule writes per
	// transaction (after long downtime the rest follow in the next ones).
	MaxPerSchedule int
	Logger         *zap.Logger
}

func (c FireConfig) withDefaults() FireConfig {
	if c.Batch <= 0 {
		c.Batch = FireBatchDefault
	}
	if c.MaxPerSchedule <= 0 {
		c.MaxPerSchedule = FireMaxPerScheduleDefault
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	return c
}

// FireResult counts what a pass did.
type FireResult struct {
	Schedules int // schedules fired (due ones locked)
	Started   int // runs started (buffered ones included)
	Skipped   int // ledger rows recorded as skipped
	Buffered  int
	Canceled  int // runs canceled by cancel_other
	Paused    int // schedules paused by pause_on_failure
	// More: a batch was full or a schedule has more due times; run again.
	More bool
}

// FirePass runs one pass: pauses schedules whose runs failed
// (pause_on_failure), starts buffered fires whose schedule has no active run,
// and fires one batch of due schedules. Each step is one transaction that locks
// its schedules (SKIP LOCKED: another master's are left to it); a schedule's
// ledger rows, runs and next fire time commit together, inside a savepoint so
// one schedule's failure does not undo the others'.
func FirePass(ctx context.Context, pool *pgxpool.Pool, cfg FireConfig) (FireResult, error) {
	cfg = cfg.withDefaults()
	var res FireResult
	if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		q := db.New(tx)
		ids, err := q.ScheduleLockFailed(ctx, int32(cfg.Batch))
		if err != nil {
			return fmt.Errorf("lock schedules with failed runs: %w", err)
		}
		for _, id := range ids {
			run, err := q.SchedulePauseOnFailure(ctx, id)
			if errors.Is(err, pgx.ErrNoRows) {
				continue
			}
			if err != nil {
				return fmt.Errorf("pause schedule %d on failure: %w", id, err)
			}
			res.Paused++
			cfg.Logger.Info("schedule paused: a run failed", zap.Int64("schedule_id", id), zap.Int64("run_id", run))
		}
		return nil
	}); err != nil {
		return res, err
	}
	if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		q := db.New(tx)
		rows, err := q.ScheduleLockBuffered(ctx, int32(cfg.Batch))
		if err != nil {
			return fmt.Errorf("lock schedules with buffered fires: %w", err)
		}
		for _, r := range rows {
			s := fromRow(db.ScheduleLockDueRow(r))
			err := pgx.BeginFunc(ctx, tx, func(sp pgx.Tx) error { return startBuffered(ctx, db.New(sp), s, cfg, &res) })
			if err != nil {
				cfg.Logger.Warn("start buffered fire", zap.String("schedule", s.Name), zap.Error(err))
			}
		}
		res.More = res.More || len(rows) == cfg.Batch
		return nil
	}); err != nil {
		return res, err
	}
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		q := db.New(tx)
		rows, err := q.ScheduleLockDue(ctx, db.ScheduleLockDueParams{Now: cfg.Now, MaxRows: int32(cfg.Batch)})
		if err != nil {
			return fmt.Errorf("lock due schedules: %w", err)
		}
		if len(rows) == 0 {
			return nil
		}
		now, err := dbNow(ctx, q, cfg.Now)
		if err != nil {
			return err
		}
		for _, r := range rows {
			s := fromRow(r)
			var sres FireResult
			err := pgx.BeginFunc(ctx, tx, func(sp pgx.Tx) error {
				var err error
				sres, err = fireSchedule(ctx, db.New(sp), s, now, cfg)
				return err
			})
			if err != nil {
				if ctx.Err() != nil {
					return err
				}
				cfg.Logger.Warn("fire schedule", zap.String("schedule", s.Name), zap.Error(err))
				continue
			}
			res.Schedules++
			res.Started += sres.Started
			res.Skipped += sres.Skipped
			res.Buffered += sres.Buffered
			res.Canceled += sres.Canceled
			res.More = res.More || sres.More
		}
		res.More = res.More || len(rows) == cfg.Batch
		return nil
	})
	return res, err
}

// NextDueIn is how long until the earliest schedule is due (Postgres time);
// false if none is.
func NextDueIn(ctx context.Context, q *db.Queries, now *time.Time) (time.Duration, bool, error) {
	r, err := q.ScheduleNextDueIn(ctx, now)
	if err != nil {
		return 0, false, fmt.Errorf("next due schedule: %w", err)
	}
	if len(r) == 0 {
		return 0, false, nil
	}
	return time.Duration(r[0] * float64(time.Second)), true, nil
}

func startBuffered(ctx context.Context, q *db.Queries, s Schedule, cfg FireConfig, res *FireResult) error {
	f, err := q.ScheduleFireOldestBuffered(ctx, &s.ID)
	if errors.Is(err, pgx.ErrNoRows) {
		// The counter drifted (a fire row deleted by hand): repair it.
		n, err := q.ScheduleFireBufferedCount(ctx, &s.ID)
		if err != nil {
			return err
		}
		return q.ScheduleBufferedDelta(ctx, db.ScheduleBufferedDeltaParams{ID: s.ID, Delta: n - int32(s.Buffered)})
	}
	if err != nil {
		return fmt.Errorf("oldest buffered fire: %w", err)
	}
	if err := startRun(ctx, q, s, f.ID, f.NominalTime, nil, cfg); err != nil {
		if !isStartRefused(err) {
			return err
		}
		if err := q.ScheduleFireSetSkipped(ctx, db.ScheduleFireSetSkippedParams{ID: f.ID, Reason: ptr(ReasonStartFailed)}); err != nil {
			return err
		}
		res.Skipped++
	} else {
		res.Started++
	}
	return q.ScheduleBufferedDelta(ctx, db.ScheduleBufferedDeltaParams{ID: s.ID, Delta: -1})
}

// isStartRefused: the workflow refused the run (gone, or params no longer
// valid); nothing was written.
func isStartRefused(err error) bool {
	var v *workflow.ValidationError
	return errors.Is(err, workflow.ErrNotFound) || errors.As(err, &v)
}

// startRun starts the schedule's workflow for nominal time and records the run
// on ledger row fireID (which this transaction inserted or holds).
func startRun(ctx context.Context, q *db.Queries, s Schedule, fireID int64, nominal time.Time, backfillID *int64, cfg FireConfig) error {
	key := fmt.Sprintf("baton-schedule:%d:%s", s.ID, nominal.UTC().Format(time.RFC3339Nano))
	if backfillID != nil {
		key = fmt.Sprintf("baton-backfill:%d:%d:%s", *backfillID, fireID, nominal.UTC().Format(time.RFC3339Nano))
	}
	st, err := workflow.Start(ctx, q, workflow.StartParams{Workflow: s.Workflow, Params: s.Params, IdempotencyKey: key})
	if err != nil {
		return err
	}
	if !st.Created {
		return fmt.Errorf("start %s for %s: run %d already holds key %s", s.Workflow, nominal, st.RunID, key)
	}
	if err := q.ScheduleFireSetRun(ctx, db.ScheduleFireSetRunParams{ID: fireID, RunID: &st.RunID, Now: cfg.Now, BackfillID: backfillID}); err != nil {
		return fmt.Errorf("record run %d of fire %d: %w", st.RunID, fireID, err)
	}
	return nil
}

// fireSchedule records the due fire times of one locked schedule, starts its
// runs and advances it, in q's transaction.
func fireSchedule(ctx context.Context, q *db.Queries, s Schedule, now time.Time, cfg FireConfig) (FireResult, error) {
	var res FireResult
	cal, err := s.Calendar()
	if err != nil {
		return res, fmt.Errorf("calendar of %s: %w", s.Name, err)
	}
	first := *s.NextNominalAt
	due := func(f calendar.Fire) time.Time { return f.At.Add(calendar.Jitter(s.ID, f.At, s.Jitter)) }
	f0, ok := cal.Next(first.Add(-time.Nanosecond))
	if !ok || !f0.At.Equal(first) {
		f0 = calendar.Fire{At: first}
	}
	// The due fire times, oldest first, at most MaxPerSchedule.
	items := []calendar.Fire{f0}
	var nextF *calendar.Fire
	for {
		nf, ok := cal.Next(items[len(items)-1].At)
		if !ok {
			break
		}
		if due(nf).After(now) || len(items) >= cfg.MaxPerSchedule {
			nextF = &nf
			break
		}
		items = append(items, nf)
	}
	// How many due times follow this chunk (counted up to CatchupMax).
	after := 0
	if nextF != nil && !due(*nextF).After(now) {
		res.More = true
		for f, ok := *nextF, true; ok && !due(f).After(now) && after < s.CatchupMax; f, ok = cal.Next(f.At) {
			after++
		}
	}
	active, err := q.ScheduleActiveRuns(ctx, &s.ID)
	if err != nil {
		return res, fmt.Errorf("active runs of %s: %w", s.Name, err)
	}
	buffered := s.Buffered
	skip := db.ScheduleFireSkipManyParams{ScheduleID: &s.ID, WorkflowID: 0, Now: cfg.Now}
	addSkip := func(f calendar.Fire, reason string) {
		skip.NominalTimes = append(skip.NominalTimes, f.At)
		skip.Reasons = append(skip.Reasons, reason)
		skip.Kinds = append(skip.Kinds, f.Kind)
	}
	wid := s.workflowID
	skip.WorkflowID = wid
	bufferedDelta := int32(0)
	for i, f := range items {
		later := len(items) - 1 - i + after
		late := now.Sub(due(f))
		reason := ""
		switch {
		case s.Paused:
			reason = ReasonPaused
		case f.Skip():
			reason = ReasonDSTGap
		case late > OnTimeGrace && late > s.CatchupWindow:
			reason = ReasonOutsideWindow
		case late > OnTimeGrace && s.Catchup == CatchupNone:
			reason = ReasonCatchupNone
		case late > OnTimeGrace && s.Catchup == CatchupLatest && later > 0:
			reason = ReasonCatchupSuperseded
		case late > OnTimeGrace && s.Catchup == CatchupAll && later >= s.CatchupMax:
			reason = ReasonCatchupBound
		}
		if reason == "" && (len(active) > 0 || buffered > 0) {
			switch s.Overlap {
			case OverlapSkip:
				reason = ReasonOverlap
			case OverlapBufferOne, OverlapBufferAll:
				limit := 1
				if s.Overlap == OverlapBufferAll {
					limit = s.BufferMax
				}
				if buffered >= limit {
					reason = ReasonBufferFull
					break
				}
				if _, err := q.ScheduleFireInsert(ctx, db.ScheduleFireInsertParams{ScheduleID: &s.ID, WorkflowID: wid,
					NominalTime: f.At, Source: "schedule", Outcome: "buffered", Kind: f.Kind, Now: cfg.Now}); err != nil {
					if errors.Is(err, pgx.ErrNoRows) {
						continue // already in the ledger (a backfill): its owner decided
					}
					return res, fmt.Errorf("buffer fire %s of %s: %w", f.At, s.Name, err)
				}
				buffered++
				bufferedDelta++
				res.Buffered++
				continue
			case OverlapCancelOther:
				for _, run := range active {
					if err := workflow.End(ctx, q, run, "canceled"); err != nil && !errors.Is(err, workflow.ErrRunState) {
						return res, fmt.Errorf("cancel run %d of %s: %w", run, s.Name, err)
					}
					res.Canceled++
				}
				active = active[:0]
			}
		}
		if reason == "" && s.MaxActiveRuns > 0 && len(active) >= s.MaxActiveRuns {
			reason = ReasonMaxActiveRuns
		}
		if reason != "" {
			addSkip(f, reason)
			continue
		}
		// Claim the time, then start its run: a row already there (a
		// backfill's) keeps its owner and nothing starts.
		id, err := q.ScheduleFireInsert(ctx, db.ScheduleFireInsertParams{ScheduleID: &s.ID, WorkflowID: wid, NominalTime: f.At,
			Source: "schedule", Outcome: "skipped", Reason: ptr(reasonStarting), Kind: f.Kind, Now: cfg.Now})
		if errors.Is(err, pgx.ErrNoRows) {
			continue
		}
		if err != nil {
			return res, fmt.Errorf("record fire %s of %s: %w", f.At, s.Name, err)
		}
		if err := startRun(ctx, q, s, id, f.At, nil, cfg); err != nil {
			if !isStartRefused(err) {
				return res, err
			}
			cfg.Logger.Warn("scheduled run refused", zap.String("schedule", s.Name), zap.Time("nominal", f.At), zap.Error(err))
			if err := q.ScheduleFireSetSkipped(ctx, db.ScheduleFireSetSkippedParams{ID: id, Reason: ptr(ReasonStartFailed)}); err != nil {
				return res, err
			}
			res.Skipped++
			continue
		}
		res.Started++
		active = append(active, 0) // counts; a run started now is never canceled by this pass
	}
	if len(skip.NominalTimes) > 0 {
		n, err := q.ScheduleFireSkipMany(ctx, skip)
		if err != nil {
			return res, fmt.Errorf("record skipped fires of %s: %w", s.Name, err)
		}
		res.Skipped += int(n)
	}
	arg := db.ScheduleAdvanceParams{ID: s.ID, FromNominal: &first, BufferedDelta: bufferedDelta}
	if nextF != nil {
		n, d := nextF.At, due(*nextF)
		arg.NextNominalAt, arg.NextFireAt = &n, &d
	}
	moved, err := q.ScheduleAdvance(ctx, arg)
	if err != nil {
		return res, fmt.Errorf("advance %s: %w", s.Name, err)
	}
	if moved != 1 {
		return res, fmt.Errorf("advance %s: its next fire time changed under the lock", s.Name)
	}
	return res, nil
}

func ptr[T any](v T) *T { return &v }
