package apimodel

import (
	"encoding/json"

	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/schedule"
	"github.com/baton-scheduler/baton/internal/workflow"
)

// Workflow is one stored workflow: its name and newest version.
type Workflow struct {
	Name          string `json:"name"`
	LatestVersion int    `json:"latest_version"`
	CreatedAt     Time   `json:"created_at"`
	UpdatedAt     Time   `json:"updated_at"`
}

// Workflows converts rows.
func Workflows(rows []db.WorkflowListRow) []Workflow {
	return each(rows, func(r db.WorkflowListRow) Workflow {
		return Workflow{Name: r.Name, LatestVersion: int(r.LatestVersion), CreatedAt: At(r.CreatedAt), UpdatedAt: At(r.UpdatedAt)}
	})
}

// WorkflowVersion is one version of a workflow with its definition (the
// canonical JSON of the YAML that was applied).
type WorkflowVersion struct {
	Name       string          `json:"name"`
	Version    int             `json:"version"`
	Definition json.RawMessage `json:"definition"`
}

// Applied says what applying a definition stored.
type Applied struct {
	Name    string `json:"name"`
	Version int    `json:"version"`
	// Created: a new version was stored (false: the content equals the
	// latest version's; nothing was written).
	Created bool `json:"created"`
}

// RunStarted says which run a start returned.
type RunStarted struct {
	RunID int64 `json:"run_id"`
	// Created is false when the idempotency key named an existing run.
	Created bool `json:"created"`
}

// Run is a workflow run; Steps only in a single run's answer.
type Run struct {
	ID              int64           `json:"id"`
	Workflow        string          `json:"workflow"`
	Version         int             `json:"version"`
	Params          json.RawMessage `json:"params"`
	State           string          `json:"state"`
	FailureStrategy string          `json:"failure_strategy"`
	IdempotencyKey  string          `json:"idempotency_key"`
	StepsLeft       int             `json:"steps_left"`
	CreatedAt       Time            `json:"created_at"`
	FinishedAt      *Time           `json:"finished_at"`
	Deadline        *Time           `json:"deadline"`
	Error           string          `json:"error"`
	// ParentRunID: a child run, started by a sub-workflow step of that run.
	ParentRunID *int64    `json:"parent_run_id"`
	Steps       []RunStep `json:"steps,omitempty"`
}

// RunStep is one step of a run.
type RunStep struct {
	Name        string `json:"name"`
	State       string `json:"state"`
	TriggerRule string `json:"trigger_rule"`
	// TaskID is the step's current task (null if it never got one); Tasks
	// counts the tasks it was given (reruns add one).
	TaskID     *int64          `json:"task_id"`
	Tasks      int             `json:"tasks"`
	Attempt    int             `json:"attempt"`
	Retries    int             `json:"retries"`
	Output     json.RawMessage `json:"output"`
	Error      string          `json:"error"`
	ReadyAt    *Time           `json:"ready_at"`
	FinishedAt *Time           `json:"finished_at"`
	// ChildRunID: a sub-workflow step's current child run.
	ChildRunID *int64 `json:"child_run_id"`
	// Items and ItemsDone: a map step's items and those ended (0 otherwise).
	Items     int `json:"items"`
	ItemsDone int `json:"items_done"`
}

// RunFrom converts a run.
func RunFrom(r workflow.Run) Run {
	out := Run{ID: r.ID, Workflow: r.Workflow, Version: r.Version, Params: orNull(r.Params), State: r.State,
		FailureStrategy: r.FailureStrategy, IdempotencyKey: r.IdempotencyKey, StepsLeft: r.StepsLeft,
		CreatedAt: At(r.CreatedAt), FinishedAt: AtPtr(r.FinishedAt), Deadline: AtPtr(r.Deadline), Error: r.Error,
		ParentRunID: nonZero(r.ParentRunID)}
	for _, s := range r.Steps {
		st := RunStep{Name: s.Name, State: s.State, TriggerRule: s.TriggerRule, Tasks: s.Tasks, Attempt: s.Attempt,
			Retries: s.Retries, Output: orNull(s.Output), Error: s.Error, ReadyAt: AtPtr(s.ReadyAt), FinishedAt: AtPtr(s.FinishedAt),
			TaskID: nonZero(s.TaskID), ChildRunID: nonZero(s.ChildRunID), Items: s.Items, ItemsDone: s.ItemsDone}
		out.Steps = append(out.Steps, st)
	}
	return out
}

// Runs converts runs.
func Runs(rs []workflow.Run) []Run { return each(rs, RunFrom) }

// Schedule is a schedule with its next fire; durations in milliseconds.
type Schedule struct {
	ID       int64          `json:"id"`
	Name     string         `json:"name"`
	Workflow string         `json:"workflow"`
	Params   map[string]any `json:"params"`
	// Cron is the expression, or "" for an interval schedule (IntervalMs > 0).
	Cron            string `json:"cron"`
	IntervalMs      int64  `json:"interval_ms"`
	Zone            string `json:"zone"`
	Start           *Time  `json:"start"`
	End             *Time  `json:"end"`
	JitterMs        int64  `json:"jitter_ms"`
	Overlap         string `json:"overlap"`
	BufferMax       int    `json:"buffer_max"`
	MaxActiveRuns   int    `json:"max_active_runs"`
	Catchup         string `json:"catchup"`
	CatchupWindowMs int64  `json:"catchup_window_ms"`
	CatchupMax      int    `json:"catchup_max"`
	PauseOnFailure  bool   `json:"pause_on_failure"`
	DSTGap          string `json:"dst_gap"`
	DSTFold         string `json:"dst_fold"`
	Paused          bool   `json:"paused"`
	PausedReason    string `json:"paused_reason"`
	// NextNominalAt is the next fire time by the calendar; NextFireAt adds
	// the jitter (null: the schedule has ended).
	NextNominalAt *Time `json:"next_nominal_at"`
	NextFireAt    *Time `json:"next_fire_at"`
	ActiveRuns    int   `json:"active_runs"`
	Buffered      int   `json:"buffered"`
	CreatedAt     Time  `json:"created_at"`
	UpdatedAt     Time  `json:"updated_at"`
}

// ScheduleFrom converts a schedule.
func ScheduleFrom(s schedule.Schedule) Schedule {
	params := s.Params
	if params == nil {
		params = map[string]any{}
	}
	return Schedule{ID: s.ID, Name: s.Name, Workflow: s.Workflow, Params: params, Cron: s.Cron,
		IntervalMs: s.Interval.Milliseconds(), Zone: s.Zone, Start: AtPtr(s.Start), End: AtPtr(s.End),
		JitterMs: s.Jitter.Milliseconds(), Overlap: s.Overlap, BufferMax: s.BufferMax, MaxActiveRuns: s.MaxActiveRuns,
		Catchup: s.Catchup, CatchupWindowMs: s.CatchupWindow.Milliseconds(), CatchupMax: s.CatchupMax,
		PauseOnFailure: s.PauseOnFailure, DSTGap: s.DSTGap, DSTFold: s.DSTFold, Paused: s.Paused,
		PausedReason: s.PausedReason, NextNominalAt: AtPtr(s.NextNominalAt), NextFireAt: AtPtr(s.NextFireAt),
		ActiveRuns: s.ActiveRuns, Buffered: s.Buffered, CreatedAt: At(s.CreatedAt), UpdatedAt: At(s.UpdatedAt)}
}

// Schedules converts schedules.
func Schedules(ss []schedule.Schedule) []Schedule { return each(ss, ScheduleFrom) }

// Fire is one coming fire time of a schedule (a preview).
type Fire struct {
	// Nominal is the calendar's time; Due adds the jitter.
	Nominal Time `json:"nominal"`
	// Local is the nominal time in the schedule's zone, with its offset.
	Local string `json:"local"`
	Due   Time   `json:"due"`
	// Kind and Note name a daylight-saving adjustment, if any.
	Kind string `json:"kind"`
	Note string `json:"note"`
}

// Fires converts a preview.
func Fires(items []schedule.PreviewItem) []Fire {
	return each(items, func(p schedule.PreviewItem) Fire {
		return Fire{Nominal: At(p.Nominal), Local: p.Local, Due: At(p.Due), Kind: p.Kind, Note: p.Note}
	})
}

// Triggered is what a manual trigger of a schedule started.
type Triggered struct {
	Schedule    string `json:"schedule"`
	NominalTime Time   `json:"nominal_time"`
	RunID       int64  `json:"run_id"`
	// Rerun: the time was in the ledger already; its earlier runs are kept.
	Rerun bool `json:"rerun"`
}

// Backfill is a backfill with its progress.
type Backfill struct {
	ID         int64  `json:"id"`
	Workflow   string `json:"workflow"`
	Schedule   string `json:"schedule"`
	From       Time   `json:"from"`
	To         Time   `json:"to"`
	Parallel   int    `json:"parallel"`
	Order      string `json:"order"`
	Reprocess  string `json:"reprocess"`
	State      string `json:"state"`
	Total      int    `json:"total"`
	Started    int    `json:"started"`
	Skipped    int    `json:"skipped"`
	Running    int    `json:"running"`
	Succeeded  int    `json:"succeeded"`
	Failed     int    `json:"failed"`
	Cursor     *Time  `json:"cursor"`
	CreatedAt  Time   `json:"created_at"`
	FinishedAt *Time  `json:"finished_at"`
}

// BackfillFrom converts a backfill.
func BackfillFrom(b schedule.Backfill) Backfill {
	return Backfill{ID: b.ID, Workflow: b.Workflow, Schedule: b.Schedule, From: At(b.From), To: At(b.To),
		Parallel: b.Parallel, Order: b.Order, Reprocess: b.Reprocess, State: b.State, Total: b.Total,
		Started: b.Started, Skipped: b.Skipped, Running: b.Running, Succeeded: b.Succeeded, Failed: b.Failed,
		Cursor: AtPtr(b.Cursor), CreatedAt: At(b.CreatedAt), FinishedAt: AtPtr(b.Finished)}
}

// Backfills converts backfills.
func Backfills(bs []schedule.Backfill) []Backfill { return each(bs, BackfillFrom) }

// nonZero is an id, or nil (JSON null) for none.
func nonZero(id int64) *int64 {
	if id == 0 {
		return nil
	}
	return &id
}

// orNull keeps an absent JSON value as null (a nil RawMessage would not encode).
func orNull(m json.RawMessage) json.RawMessage {
	if len(m) == 0 {
		return json.RawMessage("null")
	}
	return m
}

// LedgerEntry is one row of a schedule's fire ledger: a nominal time and what
// became of it (a run started, or skipped with a reason).
type LedgerEntry struct {
	ID      int64 `json:"id"`
	Nominal Time  `json:"nominal"`
	// Source is schedule, backfill or manual.
	Source     string `json:"source"`
	BackfillID *int64 `json:"backfill_id"`
	// Outcome is started, skipped or buffered; Reason says why a time was skipped.
	Outcome string  `json:"outcome"`
	Reason  *string `json:"reason"`
	// Kind names a daylight-saving adjustment (dst_gap_shifted, dst_gap,
	// dst_fold_first, dst_fold_second) or is empty.
	Kind       string  `json:"kind"`
	RunID      *int64  `json:"run_id"`
	RunState   *string `json:"run_state"`
	RecordedAt Time    `json:"recorded_at"`
	StartedAt  *Time   `json:"started_at"`
	// LagMs is how late the run started after its due time.
	LagMs *int64 `json:"lag_ms"`
}

// LedgerEntries converts rows.
func LedgerEntries(rows []db.ScheduleFireListRow) []LedgerEntry {
	return each(rows, func(r db.ScheduleFireListRow) LedgerEntry {
		return LedgerEntry{ID: r.ID, Nominal: At(r.NominalTime), Source: r.Source, BackfillID: r.BackfillID,
			Outcome: r.Outcome, Reason: r.Reason, Kind: r.Kind, RunID: r.RunID, RunState: r.RunState,
			RecordedAt: At(r.RecordedAt), StartedAt: AtPtr(r.StartedAt), LagMs: r.LagMs}
	})
}

// ScheduleDetail is a schedule with its latest ledger rows, newest first.
type ScheduleDetail struct {
	Schedule Schedule      `json:"schedule"`
	Fires    []LedgerEntry `json:"fires"`
}

// PlanItem is one logical time of a backfill's dry run and what it would do.
type PlanItem struct {
	At Time `json:"at"`
	// Action is run, rerun or skip.
	Action string `json:"action"`
	Reason string `json:"reason"`
	// RunID is the run already in the ledger for this time (null: none).
	RunID *int64 `json:"run_id"`
}

// Plan converts a dry run.
func Plan(items []schedule.PlanItem) []PlanItem {
	return each(items, func(p schedule.PlanItem) PlanItem {
		return PlanItem{At: At(p.At), Action: p.Action, Reason: p.Reason, RunID: nonZero(p.RunID)}
	})
}
