package schedule

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/calendar"
	"github.com/baton-scheduler/baton/internal/logfield"
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
	FireBatchDefault          = 100
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
		res.More = res.More || len(rows) == cfg.Batch
		now, err := dbNow(ctx, q, cfg.Now)
		if err != nil {
			return err
		}
		scheds := make([]Schedule, len(rows))
		for i, r := range rows {
			scheds[i] = fromRow(r)
		}
		// The whole batch in a few statements, inside a savepoint; if it
		// fails, each schedule again in its own savepoint, so one schedule's
		// failure does not hold up the others.
		var bres FireResult
		err = pgx.BeginFunc(ctx, tx, func(sp pgx.Tx) error {
			var err error
			bres, err = fireBatch(ctx, db.New(sp), scheds, now, cfg, true)
			return err
		})
		if err == nil {
			res.add(bres)
			return nil
		}
		if ctx.Err() != nil {
			return err
		}
		cfg.Logger.Warn("fire batch failed; firing its schedules one by one", logfield.Count("schedules", len(scheds)), zap.Error(err))
		for _, s := range scheds {
			var sres FireResult
			err := pgx.BeginFunc(ctx, tx, func(sp pgx.Tx) error {
				var err error
				sres, err = fireBatch(ctx, db.New(sp), []Schedule{s}, now, cfg, false)
				return err
			})
			if err != nil {
				if ctx.Err() != nil {
					return err
				}
				cfg.Logger.Warn("fire schedule", zap.String("schedule", s.Name), zap.Error(err))
				continue
			}
			res.add(sres)
		}
		return nil
	})
	return res, err
}

func (r *FireResult) add(o FireResult) {
	r.Schedules += o.Schedules
	r.Started += o.Started
	r.Skipped += o.Skipped
	r.Buffered += o.Buffered
	r.Canceled += o.Canceled
	r.Paused += o.Paused
	r.More = r.More || o.More
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
	key := fireKey(s.ID, nominal)
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

// firePlan is what a pass does to one locked schedule: the ledger rows it
// records (skipped, buffered), the fire times it starts, the active runs it
// cancels (cancel_other) and its next fire time. planFires decides it from the
// schedule, Postgres's now, its active runs and the ledger rows already there;
// fireBatch carries out the plans of a batch in a few statements.
type firePlan struct {
	s       Schedule
	first   time.Time
	records []planned // skipped or buffered
	starts  []planned
	cancel  []int64
	next    *calendar.Fire
	nextDue time.Time
	delta   int32 // change of the schedule's buffered count
	more    bool
}

type planned struct {
	f       calendar.Fire
	outcome string // skipped, buffered (records)
	reason  string
}

// prepared is a workflow's latest version, decoded once per batch.
type prepared struct {
	versionID int64
	def       workflow.Definition
	err       error
}

// planFires decides the due fire times of one locked schedule (the policies of
// docs/schedules.md). existing holds the nominal times already in its ledger
// (a backfill's or a manual trigger's): their owner decided them, so they are
// neither recorded nor counted here.
func planFires(s Schedule, now time.Time, active []int64, existing map[int64]bool, wf prepared, cfg FireConfig) (firePlan, error) {
	p := firePlan{s: s}
	cal, err := s.Calendar()
	if err != nil {
		return p, fmt.Errorf("calendar of %s: %w", s.Name, err)
	}
	p.first = *s.NextNominalAt
	due := func(f calendar.Fire) time.Time { return f.At.Add(calendar.Jitter(s.ID, f.At, s.Jitter)) }
	f0, ok := cal.Next(p.first.Add(-time.Nanosecond))
	if !ok || !f0.At.Equal(p.first) {
		f0 = calendar.Fire{At: p.first}
	}
	// The due fire times, oldest first, at most MaxPerSchedule.
	items := []calendar.Fire{f0}
	for {
		nf, ok := cal.Next(items[len(items)-1].At)
		if !ok {
			break
		}
		if due(nf).After(now) || len(items) >= cfg.MaxPerSchedule {
			p.next, p.nextDue = &nf, due(nf)
			break
		}
		items = append(items, nf)
	}
	// How many due times follow this chunk (counted up to CatchupMax).
	after := 0
	if p.next != nil && !p.nextDue.After(now) {
		p.more = true
		for f, ok := *p.next, true; ok && !due(f).After(now) && after < s.CatchupMax; f, ok = cal.Next(f.At) {
			after++
		}
	}
	nActive := len(active)
	buffered := s.Buffered
	for i, f := range items {
		if existing[f.At.UnixNano()] {
			continue // already in the ledger: its owner decided
		}
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
		if reason == "" && (nActive > 0 || buffered > 0) {
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
				p.records = append(p.records, planned{f: f, outcome: "buffered"})
				buffered++
				p.delta++
				continue
			case OverlapCancelOther:
				// The runs active when the pass began are canceled; runs this
				// pass starts are never canceled by it.
				if len(p.cancel) == 0 && len(active) > 0 {
					p.cancel = active
				}
				nActive -= len(active)
				active = nil
			}
		}
		if reason == "" && s.MaxActiveRuns > 0 && nActive >= s.MaxActiveRuns {
			reason = ReasonMaxActiveRuns
		}
		if reason == "" && wf.err != nil {
			cfg.Logger.Warn("scheduled run refused", zap.String("schedule", s.Name), zap.Time("nominal", f.At), zap.Error(wf.err))
			reason = ReasonStartFailed
		}
		if reason != "" {
			p.records = append(p.records, planned{f: f, outcome: "skipped", reason: reason})
			continue
		}
		p.starts = append(p.starts, planned{f: f})
		nActive++
	}
	return p, nil
}

// fireBatch fires a batch of locked schedules in q's transaction: it reads
// their active runs, the ledger rows already there and their workflows (three
// statements), plans each, then cancels what cancel_other cancels, records the
// skipped and buffered times (one statement), claims and starts the rest (one
// statement: schedule_fire_start_many; setBased inserts all runs, steps, first
// tasks and ledger rows set-based, else one workflow_start per fire) and
// advances every schedule (one statement, re-checking each next nominal time).
func fireBatch(ctx context.Context, q *db.Queries, scheds []Schedule, now time.Time, cfg FireConfig, setBased bool) (FireResult, error) {
	var res FireResult
	ids := make([]int64, len(scheds))
	firsts := make([]time.Time, len(scheds))
	wfIDs := []int64{}
	seenWF := map[int64]bool{}
	for i, s := range scheds {
		ids[i], firsts[i] = s.ID, *s.NextNominalAt
		if !seenWF[s.workflowID] {
			seenWF[s.workflowID] = true
			wfIDs = append(wfIDs, s.workflowID)
		}
	}
	actRows, err := q.ScheduleActiveRunsMany(ctx, ids)
	if err != nil {
		return res, fmt.Errorf("active runs of %d schedules: %w", len(ids), err)
	}
	active := map[int64][]int64{}
	for _, r := range actRows {
		active[r.ScheduleID] = append(active[r.ScheduleID], r.RunID)
	}
	exRows, err := q.ScheduleFireExistingMany(ctx, db.ScheduleFireExistingManyParams{ScheduleIds: ids, FromNominals: firsts, Until: now})
	if err != nil {
		return res, fmt.Errorf("ledger rows of %d schedules: %w", len(ids), err)
	}
	existing := map[int64]map[int64]bool{}
	for _, r := range exRows {
		if existing[r.ScheduleID] == nil {
			existing[r.ScheduleID] = map[int64]bool{}
		}
		existing[r.ScheduleID][r.NominalTime.UnixNano()] = true
	}
	vRows, err := q.ScheduleWorkflowVersions(ctx, wfIDs)
	if err != nil {
		return res, fmt.Errorf("workflows of %d schedules: %w", len(ids), err)
	}
	wfs := map[int64]prepared{}
	for _, r := range vRows {
		p := prepared{versionID: r.VersionID}
		if err := json.Unmarshal(r.Definition, &p.def); err != nil {
			p.err = fmt.Errorf("decode workflow %d version %d: %w", r.WorkflowID, r.VersionID, err)
		}
		wfs[r.WorkflowID] = p
	}
	rec := db.ScheduleFireRecordManyParams{Now: cfg.Now}
	st := db.ScheduleFireStartManyParams{Now: cfg.Now, SetBased: setBased}
	adv := db.ScheduleAdvanceManyParams{}
	for _, s := range scheds {
		wf, ok := wfs[s.workflowID]
		if !ok {
			wf.err = fmt.Errorf("%w: workflow %s has no version", workflow.ErrNotFound, s.Workflow)
		}
		// Run parameters are checked once per schedule, as workflow.Start
		// checks them: a refusal is recorded as skipped/start_failed.
		var params json.RawMessage
		if wf.err == nil {
			if params, err = wf.def.RunParams(s.Params); err != nil {
				wf.err = err
			}
		}
		p, err := planFires(s, now, active[s.ID], existing[s.ID], wf, cfg)
		if err != nil {
			return res, err
		}
		for _, run := range p.cancel {
			if err := workflow.End(ctx, q, run, "canceled"); err != nil && !errors.Is(err, workflow.ErrRunState) {
				return res, fmt.Errorf("cancel run %d of %s: %w", run, s.Name, err)
			}
			res.Canceled++
		}
		for _, r := range p.records {
			rec.ScheduleIds = append(rec.ScheduleIds, s.ID)
			rec.WorkflowIds = append(rec.WorkflowIds, s.workflowID)
			rec.NominalTimes = append(rec.NominalTimes, r.f.At)
			rec.Outcomes = append(rec.Outcomes, r.outcome)
			rec.Reasons = append(rec.Reasons, r.reason)
			rec.Kinds = append(rec.Kinds, r.f.Kind)
			if r.outcome == "buffered" {
				res.Buffered++
			} else {
				res.Skipped++
			}
		}
		for _, r := range p.starts {
			st.ScheduleIds = append(st.ScheduleIds, s.ID)
			st.WorkflowIds = append(st.WorkflowIds, s.workflowID)
			st.NominalTimes = append(st.NominalTimes, r.f.At)
			st.Kinds = append(st.Kinds, r.f.Kind)
			st.VersionIds = append(st.VersionIds, wf.versionID)
			st.Params = append(st.Params, params)
			st.Strategies = append(st.Strategies, wf.def.Strategy())
			st.Keys = append(st.Keys, fireKey(s.ID, r.f.At))
			st.TimeoutsMs = append(st.TimeoutsMs, wf.def.RunTimeout().Milliseconds())
		}
		adv.Ids = append(adv.Ids, s.ID)
		adv.FromNominals = append(adv.FromNominals, p.first)
		adv.HasNext = append(adv.HasNext, p.next != nil)
		if p.next != nil {
			adv.NextNominals = append(adv.NextNominals, p.next.At)
			adv.NextFires = append(adv.NextFires, p.nextDue)
		} else {
			adv.NextNominals = append(adv.NextNominals, time.Time{})
			adv.NextFires = append(adv.NextFires, time.Time{})
		}
		adv.Deltas = append(adv.Deltas, p.delta)
		res.More = res.More || p.more
	}
	if len(rec.ScheduleIds) > 0 {
		n, err := q.ScheduleFireRecordMany(ctx, rec)
		if err != nil {
			return res, fmt.Errorf("record %d skipped or buffered fires: %w", len(rec.ScheduleIds), err)
		}
		if int(n) != len(rec.ScheduleIds) {
			// Not expected: every writer of a schedule's ledger holds its row
			// lock, and the rows already there were read above. The rows there
			// keep their owner (the buffered count repairs itself in
			// startBuffered).
			cfg.Logger.Warn("fire times already in the ledger", logfield.Count("rows", len(rec.ScheduleIds)-int(n)))
			res.Skipped -= len(rec.ScheduleIds) - int(n)
		}
	}
	if len(st.ScheduleIds) > 0 {
		rows, err := q.ScheduleFireStartMany(ctx, st)
		if err != nil {
			return res, fmt.Errorf("start %d fires: %w", len(st.ScheduleIds), err)
		}
		if len(rows) != len(st.ScheduleIds) {
			cfg.Logger.Warn("fire times already in the ledger", logfield.Count("rows", len(st.ScheduleIds)-len(rows)))
		}
		res.Started += len(rows)
	}
	moved, err := q.ScheduleAdvanceMany(ctx, adv)
	if err != nil {
		return res, fmt.Errorf("advance %d schedules: %w", len(adv.Ids), err)
	}
	if int(moved) != len(adv.Ids) {
		return res, fmt.Errorf("advance schedules: %d of %d had their next fire time changed under the lock", len(adv.Ids)-int(moved), len(adv.Ids))
	}
	res.Schedules = len(scheds)
	return res, nil
}

// fireKey is the idempotency key of a scheduled fire's run, a second guard
// behind the ledger's key.
func fireKey(id int64, nominal time.Time) string {
	return fmt.Sprintf("baton-schedule:%d:%s", id, nominal.UTC().Format(time.RFC3339Nano))
}

func ptr[T any](v T) *T { return &v }
