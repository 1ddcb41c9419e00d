package workflow

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/baton-scheduler/baton/db"
)

// Applied says what Apply stored.
type Applied struct {
	Name    string `json:"name"`
	Version int    `json:"version"`
	// Created: a new version was stored (false: the content equals the latest
	// version's, nothing was written).
	Created bool   `json:"created"`
	Hash    string `json:"hash"`
}

// Apply validates d and, in the transaction of q, stores it as a new version of
// its workflow if its content differs from the latest version. On any error
// the caller must roll the transaction back: nothing is stored. Unknown worker
// groups are checked here, in the transaction.
func Apply(ctx context.Context, q *db.Queries, d Definition) (Applied, error) {
	if err := d.Validate(); err != nil {
		return Applied{}, err
	}
	canon, hash, err := d.Canonical()
	if err != nil {
		return Applied{}, err
	}
	out := Applied{Name: d.Name, Hash: hash}
	w, err := q.WorkflowLock(ctx, d.Name)
	if err != nil {
		return out, fmt.Errorf("apply workflow %s: %w", d.Name, err)
	}
	missing, err := q.WorkflowGroupsMissing(ctx, d.Groups())
	if err != nil {
		return out, fmt.Errorf("apply workflow %s: check groups: %w", d.Name, err)
	}
	if len(missing) > 0 {
		var probs []Problem
		for _, g := range missing {
			for i, s := range d.Steps {
				if s.Group == g {
					probs = append(probs, Problem{fmt.Sprintf("steps[%d] (%s).group", i, s.Name),
						fmt.Sprintf("unknown worker group %q (create it or start a worker of that group first)", g)})
				}
			}
		}
		return out, &ValidationError{Problems: probs}
	}
	if err := checkSubWorkflows(ctx, q, d); err != nil {
		return out, err
	}
	if w.LatestVersion > 0 {
		prev, err := q.WorkflowVersionHash(ctx, db.WorkflowVersionHashParams{WorkflowID: w.ID, Version: w.LatestVersion})
		if err != nil {
			return out, fmt.Errorf("apply workflow %s: read latest version: %w", d.Name, err)
		}
		if prev == hash {
			out.Version = int(w.LatestVersion)
			return out, nil
		}
	}
	version := w.LatestVersion + 1
	vid, err := q.WorkflowVersionInsert(ctx, db.WorkflowVersionInsertParams{WorkflowID: w.ID, Version: version, ContentHash: hash, Definition: canon})
	if err != nil {
		return out, fmt.Errorf("apply workflow %s: store version: %w", d.Name, err)
	}
	sp := db.WorkflowVersionStepsInsertParams{VersionID: vid}
	ep := db.WorkflowVersionEdgesInsertParams{VersionID: vid}
	for i, s := range d.Steps {
		payload, err := s.TaskPayload()
		if err != nil {
			return out, err
		}
		timeout, _ := duration(s.Timeout)
		base, maxB := int64(-1), int64(-1)
		if s.RetryBackoffBase != "" {
			b, _ := duration(s.RetryBackoffBase)
			m, _ := duration(s.RetryBackoffMax)
			base, maxB = b.Milliseconds(), m.Milliseconds()
		}
		sp.Names = append(sp.Names, s.Name)
		sp.Positions = append(sp.Positions, int32(i))
		sp.TriggerRules = append(sp.TriggerRules, s.Rule())
		sp.GroupNames = append(sp.GroupNames, s.Group)
		sp.Kinds = append(sp.Kinds, s.TaskKind())
		sp.Payloads = append(sp.Payloads, string(payload))
		sp.Priorities = append(sp.Priorities, int32(s.Priority))
		sp.MaxRetries = append(sp.MaxRetries, int32(s.MaxRetries))
		sp.TimeoutsMs = append(sp.TimeoutsMs, timeout.Milliseconds())
		sp.RetryBasesMs = append(sp.RetryBasesMs, base)
		sp.RetryMaxesMs = append(sp.RetryMaxesMs, maxB)
		over, maxItems, par := "", int32(0), int32(0)
		if s.Map != nil {
			over, maxItems, par = s.Map.Over, int32(s.Map.MaxItemsOrDefault()), int32(s.Map.Parallelism)
		}
		sp.MapOvers = append(sp.MapOvers, over)
		sp.MapMaxItems = append(sp.MapMaxItems, maxItems)
		sp.MapParallelisms = append(sp.MapParallelisms, par)
		sp.SubWorkflows = append(sp.SubWorkflows, s.Workflow)
		subParams := ""
		if s.Workflow != "" {
			params := s.Params
			if params == nil {
				params = map[string]string{} // {} not null
			}
			b, err := json.Marshal(params)
			if err != nil {
				return out, fmt.Errorf("apply workflow %s: encode params of step %s: %w", d.Name, s.Name, err)
			}
			subParams = string(b)
		}
		sp.SubParams = append(sp.SubParams, subParams)
		for _, dep := range s.DependsOn {
			ep.FromSteps = append(ep.FromSteps, dep)
			ep.ToSteps = append(ep.ToSteps, s.Name)
		}
	}
	if err := q.WorkflowVersionStepsInsert(ctx, sp); err != nil {
		return out, fmt.Errorf("apply workflow %s: store steps: %w", d.Name, err)
	}
	if len(ep.FromSteps) > 0 {
		if err := q.WorkflowVersionEdgesInsert(ctx, ep); err != nil {
			return out, fmt.Errorf("apply workflow %s: store dependencies: %w", d.Name, err)
		}
	}
	if err := q.WorkflowSetLatest(ctx, db.WorkflowSetLatestParams{ID: w.ID, Version: version}); err != nil {
		return out, fmt.Errorf("apply workflow %s: %w", d.Name, err)
	}
	out.Version, out.Created = int(version), true
	return out, nil
}

// checkSubWorkflows checks, in the apply transaction, that each sub-workflow
// step names a stored workflow whose latest version knows the parameters it
// sets and gets every required one, and that no chain of sub-workflows (by
// latest versions) leads back to d. Runs start the child's latest version, so
// a later apply of the child is checked again when the child is applied.
func checkSubWorkflows(ctx context.Context, q *db.Queries, d Definition) error {
	var probs []Problem
	for i, s := range d.Steps {
		if s.Workflow == "" {
			continue
		}
		path := fmt.Sprintf("steps[%d] (%s).workflow", i, s.Name)
		child, err := latestDefinition(ctx, q, s.Workflow)
		if err != nil {
			return fmt.Errorf("apply workflow %s: %w", d.Name, err)
		}
		if child == nil {
			probs = append(probs, Problem{path, fmt.Sprintf("unknown workflow %q (apply it first)", s.Workflow)})
			continue
		}
		known := map[string]bool{}
		for _, p := range child.Params {
			known[p.Name] = true
			if _, set := s.Params[p.Name]; !set && p.Default == nil {
				probs = append(probs, Problem{fmt.Sprintf("steps[%d] (%s).params", i, s.Name),
					fmt.Sprintf("workflow %q requires parameter %q", s.Workflow, p.Name)})
			}
		}
		for _, k := range slices.Sorted(maps.Keys(s.Params)) {
			if !known[k] {
				probs = append(probs, Problem{fmt.Sprintf("steps[%d] (%s).params.%s", i, s.Name, k),
					fmt.Sprintf("workflow %q has no parameter %q", s.Workflow, k)})
			}
		}
		// A cycle: d -> child -> ... -> d, through latest versions.
		chain := []string{d.Name, s.Workflow}
		if cyc, err := subCycle(ctx, q, d.Name, *child, chain, 0); err != nil {
			return fmt.Errorf("apply workflow %s: %w", d.Name, err)
		} else if cyc != nil {
			probs = append(probs, Problem{path, "sub-workflow cycle: " + strings.Join(cyc, " -> ")})
		}
	}
	if len(probs) > 0 {
		return &ValidationError{Problems: probs}
	}
	return nil
}

// MaxSubWorkflowDepth bounds nested sub-workflow runs (checked when a child
// run starts too).
const MaxSubWorkflowDepth = 10

func subCycle(ctx context.Context, q *db.Queries, root string, d Definition, chain []string, depth int) ([]string, error) {
	if depth >= MaxSubWorkflowDepth {
		return nil, nil // deeper nesting fails at run time, naming the limit
	}
	for _, s := range d.Steps {
		if s.Workflow == "" {
			continue
		}
		next := append(slices.Clone(chain), s.Workflow)
		if s.Workflow == root {
			return next, nil
		}
		child, err := latestDefinition(ctx, q, s.Workflow)
		if err != nil || child == nil {
			return nil, err
		}
		if cyc, err := subCycle(ctx, q, root, *child, next, depth+1); cyc != nil || err != nil {
			return cyc, err
		}
	}
	return nil, nil
}

// latestDefinition is the latest version of a workflow, nil if none.
func latestDefinition(ctx context.Context, q *db.Queries, name string) (*Definition, error) {
	raw, err := q.WorkflowLatestDefinition(ctx, name)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read workflow %s: %w", name, err)
	}
	var d Definition
	if err := json.Unmarshal(raw, &d); err != nil {
		return nil, fmt.Errorf("decode workflow %s: %w", name, err)
	}
	return &d, nil
}

// ChannelRunFinished is the NOTIFY channel on which a run's end is announced
// (payload: the run id); spelled in migrations/00005_workflows.sql.
const ChannelRunFinished = "baton_run_finished"

// ErrNotFound: no such workflow, version or run.
var ErrNotFound = errors.New("workflow not found")

// StartParams describes a run to start.
type StartParams struct {
	Workflow string
	// Version pins a version; 0 takes the latest.
	Version int
	Params  map[string]any
	// FailureStrategy overrides the definition's (continue or end).
	FailureStrategy string
	// IdempotencyKey: a second start with the same key returns the first run.
	IdempotencyKey string
}

// Started says which run a start returned.
type Started struct {
	RunID int64 `json:"run_id"`
	// Created is false when the idempotency key named an existing run.
	Created bool `json:"created"`
}

// Start starts a run in the transaction of q: the run exists only if that
// transaction commits. The steps without dependencies become claimable tasks
// (their workers are woken at commit).
func Start(ctx context.Context, q *db.Queries, p StartParams) (Started, error) {
	v, err := q.WorkflowVersionForStart(ctx, db.WorkflowVersionForStartParams{Name: p.Workflow, Version: int32(p.Version)})
	if errors.Is(err, pgx.ErrNoRows) {
		if p.Version > 0 {
			return Started{}, fmt.Errorf("%w: %s version %d", ErrNotFound, p.Workflow, p.Version)
		}
		return Started{}, fmt.Errorf("%w: %s (apply it first)", ErrNotFound, p.Workflow)
	}
	if err != nil {
		return Started{}, fmt.Errorf("start %s: %w", p.Workflow, err)
	}
	var d Definition
	if err := json.Unmarshal(v.Definition, &d); err != nil {
		return Started{}, fmt.Errorf("start %s: decode version %d: %w", p.Workflow, v.Version, err)
	}
	params, err := d.RunParams(p.Params)
	if err != nil {
		return Started{}, err
	}
	strategy := p.FailureStrategy
	if strategy == "" {
		strategy = d.Strategy()
	}
	if strategy != StrategyContinue && strategy != StrategyEnd {
		return Started{}, &ValidationError{Problems: []Problem{{"failure_strategy", fmt.Sprintf("unknown failure strategy %q (continue or end)", strategy)}}}
	}
	var key *string
	if p.IdempotencyKey != "" {
		key = &p.IdempotencyKey
	}
	row, err := q.WorkflowStart(ctx, db.WorkflowStartParams{VersionID: v.ID, Params: params, FailureStrategy: strategy, IdempotencyKey: key,
		TimeoutMs: d.RunTimeout().Milliseconds()})
	if err != nil {
		return Started{}, fmt.Errorf("start %s: %w", p.Workflow, err)
	}
	return Started{RunID: row.RunID, Created: row.Created}, nil
}

// RunState returns a run's state from its row alone (a waiter's poll; GetRun
// also reads every step), or ErrNotFound.
func RunState(ctx context.Context, q *db.Queries, id int64) (string, error) {
	r, err := runRow(ctx, q, id)
	return r.State, err
}

func runRow(ctx context.Context, q *db.Queries, id int64) (db.WorkflowRunGetRow, error) {
	r, err := q.WorkflowRunGet(ctx, id)
	if errors.Is(err, pgx.ErrNoRows) {
		return r, fmt.Errorf("%w: run %d", ErrNotFound, id)
	}
	if err != nil {
		return r, fmt.Errorf("get run %d: %w", id, err)
	}
	return r, nil
}

// Run is a run and its steps.
type Run struct {
	ID              int64           `json:"id"`
	Workflow        string          `json:"workflow"`
	Version         int             `json:"version"`
	Params          json.RawMessage `json:"params"`
	State           string          `json:"state"`
	FailureStrategy string          `json:"failure_strategy"`
	IdempotencyKey  string          `json:"idempotency_key,omitempty"`
	StepsLeft       int             `json:"steps_left"`
	CreatedAt       time.Time       `json:"created_at"`
	FinishedAt      *time.Time      `json:"finished_at,omitempty"`
	// Deadline is when the run times out (nil: no run timeout).
	Deadline *time.Time `json:"deadline,omitempty"`
	// Error says why a control or the run timeout ended the run.
	Error string `json:"error,omitempty"`
	// ParentRunID: a child run, started by a sub-workflow step of this run.
	ParentRunID int64     `json:"parent_run_id,omitempty"`
	Steps       []RunStep `json:"steps,omitempty"`
}

// RunStep is one step of a run.
type RunStep struct {
	Name        string `json:"name"`
	State       string `json:"state"`
	TriggerRule string `json:"trigger_rule"`
	// TaskID is the step's current task (0 if it never got one); Tasks counts
	// the tasks it was given (reruns add one).
	TaskID int64 `json:"task_id,omitempty"`
	Tasks  int   `json:"tasks"`
	// Attempt and Retries are those of the current task.
	Attempt    int             `json:"attempt"`
	Retries    int             `json:"retries"`
	Output     json.RawMessage `json:"output,omitempty"`
	Error      string          `json:"error,omitempty"`
	ReadyAt    *time.Time      `json:"ready_at,omitempty"`
	FinishedAt *time.Time      `json:"finished_at,omitempty"`
	// ChildRunID: a sub-workflow step's current child run.
	ChildRunID int64 `json:"child_run_id,omitempty"`
	// Items and ItemsDone: a map step's items and those ended.
	Items     int `json:"items,omitempty"`
	ItemsDone int `json:"items_done,omitempty"`
}

// Terminal reports whether a run state is final.
func Terminal(state string) bool {
	switch state {
	case "succeeded", "failed", "canceled", "stopped":
		return true
	}
	return false
}

// GetRun reads a run with its steps.
func GetRun(ctx context.Context, q *db.Queries, id int64) (Run, error) {
	r, err := runRow(ctx, q, id)
	if err != nil {
		return Run{}, err
	}
	run := runFromRow(db.WorkflowRunListRow(r))
	steps, err := q.WorkflowRunSteps(ctx, id)
	if err != nil {
		return Run{}, fmt.Errorf("get steps of run %d: %w", id, err)
	}
	for _, s := range steps {
		rs := RunStep{Name: s.Name, State: s.State, TriggerRule: s.TriggerRule, Tasks: int(s.TaskCount),
			Attempt: int(s.Attempt), Retries: int(s.Retries), Output: s.Output, Error: s.Error,
			ReadyAt: s.ReadyAt, FinishedAt: s.FinishedAt}
		if s.TaskID != nil {
			rs.TaskID = *s.TaskID
		}
		if s.ChildRunID != nil {
			rs.ChildRunID = *s.ChildRunID
		}
		rs.Items, rs.ItemsDone = int(s.Items), int(s.ItemsDone)
		run.Steps = append(run.Steps, rs)
	}
	return run, nil
}

func runFromRow(r db.WorkflowRunListRow) Run {
	run := Run{ID: r.ID, Workflow: r.Workflow, Version: int(r.Version), Params: r.Params, State: r.State,
		FailureStrategy: r.FailureStrategy, StepsLeft: int(r.StepsLeft), CreatedAt: r.CreatedAt, FinishedAt: r.FinishedAt,
		Deadline: r.Deadline, Error: r.Error}
	if r.ParentRunID != nil {
		run.ParentRunID = *r.ParentRunID
	}
	if r.IdempotencyKey != nil {
		run.IdempotencyKey = *r.IdempotencyKey
	}
	return run
}

// ListParams filters ListRuns; zero fields do not filter.
type ListParams struct {
	Workflow string
	State    string
	BeforeID int64
	Limit    int // default 100, at most 10000
}

// ListRuns returns runs newest first (without steps).
func ListRuns(ctx context.Context, q *db.Queries, p ListParams) ([]Run, error) {
	limit := p.Limit
	if limit <= 0 {
		limit = 100
	}
	arg := db.WorkflowRunListParams{MaxRows: int32(min(limit, 10000))}
	if p.Workflow != "" {
		arg.Workflow = &p.Workflow
	}
	if p.State != "" {
		arg.State = &p.State
	}
	if p.BeforeID > 0 {
		arg.BeforeID = &p.BeforeID
	}
	rows, err := q.WorkflowRunList(ctx, arg)
	if err != nil {
		return nil, fmt.Errorf("list runs: %w", err)
	}
	out := make([]Run, 0, len(rows))
	for _, r := range rows {
		out = append(out, runFromRow(r))
	}
	return out, nil
}

// Control errors.
var (
	// ErrRunState: the control does not apply to the run in its state (pause
	// of a run that is not running, rerun of a run that has not ended, ...).
	ErrRunState = errors.New("run is not in a state that allows this")
)

// Pause pauses a running run in q's transaction.
func Pause(ctx context.Context, q *db.Queries, id int64) error {
	ok, err := q.WorkflowRunPause(ctx, id)
	if err != nil {
		return fmt.Errorf("pause run %d: %w", id, err)
	}
	if !ok {
		return fmt.Errorf("%w: pause run %d: it is not running", ErrRunState, id)
	}
	return nil
}

// Resume resumes a paused run in q's transaction.
func Resume(ctx context.Context, q *db.Queries, id int64) error {
	ok, err := q.WorkflowRunResume(ctx, id)
	if err != nil {
		return fmt.Errorf("resume run %d: %w", id, err)
	}
	if !ok {
		return fmt.Errorf("%w: resume run %d: it is not paused", ErrRunState, id)
	}
	return nil
}

// End ends a running or paused run as "canceled" or "stopped" in q's
// transaction: its pending steps end canceled and its live tasks are canceled
// through the task cancel path (TaskCancel), whose trigger ends their steps.
func End(ctx context.Context, q *db.Queries, id int64, state string) error {
	if state != "canceled" && state != "stopped" {
		return fmt.Errorf("end run %d: state %q is not canceled or stopped", id, state)
	}
	reason := "run canceled"
	if state == "stopped" {
		reason = "run stopped"
	}
	return end(ctx, q, id, state, reason)
}

// TimeOut ends a run past its deadline as failed ("run timed out"), like End.
// The caller found it overdue (WorkflowRunsOverdue); a run that ended
// meanwhile is left alone (ErrRunState).
func TimeOut(ctx context.Context, q *db.Queries, id int64) error {
	return end(ctx, q, id, "failed", "run timed out")
}

func end(ctx context.Context, q *db.Queries, id int64, state, reason string) error {
	r, err := q.WorkflowRunGet(ctx, id)
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("%w: run %d", ErrNotFound, id)
	}
	if err != nil {
		return fmt.Errorf("end run %d: %w", id, err)
	}
	if Terminal(r.State) {
		return fmt.Errorf("%w: run %d is already %s", ErrRunState, id, r.State)
	}
	// workflow_end re-checks the state under the run's lock.
	tasks, err := q.WorkflowRunEnd(ctx, db.WorkflowRunEndParams{ID: id, State: state, Reason: reason})
	if err != nil {
		return fmt.Errorf("end run %d: %w", id, err)
	}
	for _, t := range tasks {
		if _, err := q.TaskCancelLockTask(ctx, t); err != nil {
			return fmt.Errorf("end run %d: lock task %d: %w", id, t, err)
		}
		if _, err := q.TaskCancel(ctx, db.TaskCancelParams{ID: t, Reason: reason}); err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("end run %d: cancel task %d: %w", id, t, err)
		}
	}
	return nil
}

// Rerun reruns, in the same run, the steps named (or, with failed, the failed,
// upstream_failed and canceled ones) and everything downstream of them. The
// run must have ended. It returns how many steps were reset.
func Rerun(ctx context.Context, q *db.Queries, id int64, steps []string, failed bool) (int, error) {
	if failed {
		s, err := q.WorkflowRunFailedSteps(ctx, id)
		if err != nil {
			return 0, fmt.Errorf("rerun run %d: %w", id, err)
		}
		steps = s
		if len(steps) == 0 {
			return 0, fmt.Errorf("%w: rerun run %d: no failed step", ErrRunState, id)
		}
	}
	n, err := q.WorkflowRunRerun(ctx, db.WorkflowRunRerunParams{ID: id, Steps: steps})
	if err != nil {
		return 0, fmt.Errorf("rerun run %d: %w", id, err)
	}
	if n == 0 {
		return 0, fmt.Errorf("%w: rerun run %d: it has not ended, or no step matched %v", ErrRunState, id, steps)
	}
	return int(n), nil
}
