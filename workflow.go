package baton

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/notify"
	"github.com/baton-scheduler/baton/internal/workflow"
)

// Workflow types: one model for Go, YAML and the CLI's JSON (docs/workflows.md).
type (
	// WorkflowDefinition is a workflow: steps (tasks) and their dependencies.
	WorkflowDefinition = workflow.Definition
	// WorkflowStep is one step of a definition.
	WorkflowStep = workflow.Step
	// WorkflowMap is what a map step fans out over (docs/workflows.md).
	WorkflowMap = workflow.Map
	// WorkflowParam is a run parameter of a definition.
	WorkflowParam = workflow.Param
	// WorkflowApplied says which version ApplyWorkflow stored or found.
	WorkflowApplied = workflow.Applied
	// RunSpec describes a run to start.
	RunSpec = workflow.StartParams
	// Run is a workflow run and its steps.
	Run = workflow.Run
	// RunStep is one step of a run.
	RunStep = workflow.RunStep
	// RunListParams filters ListRuns.
	RunListParams = workflow.ListParams
)

// Workflow errors to match with errors.Is.
var (
	// ErrInvalidWorkflow: a definition (or a run's parameters) failed
	// validation; the message lists each problem and its place. Nothing was
	// stored.
	ErrInvalidWorkflow = workflow.ErrInvalid
	// ErrWorkflowNotFound: no such workflow, version or run.
	ErrWorkflowNotFound = workflow.ErrNotFound
	// ErrRunState: the control does not apply to the run in its state.
	ErrRunState = workflow.ErrRunState
)

// ParseWorkflow reads a definition in YAML.
func ParseWorkflow(yaml []byte) (WorkflowDefinition, error) { return workflow.Parse(yaml) }

// ApplyWorkflow validates d (worker groups included) and stores it as a new
// immutable version of its workflow if its content differs from the latest
// version; otherwise it stores nothing and returns the latest version.
func (c *Client) ApplyWorkflow(ctx context.Context, d WorkflowDefinition) (WorkflowApplied, error) {
	var a WorkflowApplied
	err := c.inTx(ctx, func(q *db.Queries) error {
		var err error
		a, err = workflow.Apply(ctx, q, d)
		return err
	})
	return a, err
}

// StartRun starts a run of a workflow's latest version (or RunSpec.Version)
// and returns its id. With an IdempotencyKey already used, it returns that
// run's id and starts nothing.
func (c *Client) StartRun(ctx context.Context, spec RunSpec) (int64, error) {
	var s workflow.Started
	err := c.inTx(ctx, func(q *db.Queries) error {
		var err error
		s, err = workflow.Start(ctx, q, spec)
		return err
	})
	return s.RunID, err
}

// StartRunTx starts a run in the caller's transaction: the run, its steps and
// its first tasks exist only if that transaction commits (the workers are
// woken at commit). The transaction's search_path is switched to baton's
// schema for the statements and restored before StartRunTx returns. On a
// database error the transaction is aborted and must be rolled back.
func (c *Client) StartRunTx(ctx context.Context, tx pgx.Tx, spec RunSpec) (int64, error) {
	if tx == nil {
		return 0, errors.New("start run: transaction is nil")
	}
	q := db.New(tx)
	prev, err := q.SchemaSearchPath(ctx)
	if err != nil {
		return 0, fmt.Errorf("start run: read search_path: %w", err)
	}
	if err := q.SchemaSetLocalSearchPath(ctx, c.schema); err != nil {
		return 0, fmt.Errorf("start run: set search_path: %w", err)
	}
	s, err := workflow.Start(ctx, q, spec)
	if err != nil {
		_ = q.SchemaSetLocalSearchPath(ctx, prev)
		return 0, c.describe(err)
	}
	if err := q.SchemaSetLocalSearchPath(ctx, prev); err != nil {
		return 0, fmt.Errorf("start run: restore search_path: %w", err)
	}
	return s.RunID, nil
}

// GetRun returns a run with its steps, or ErrWorkflowNotFound.
func (c *Client) GetRun(ctx context.Context, id int64) (Run, error) {
	var r Run
	err := c.inTx(ctx, func(q *db.Queries) error {
		var err error
		r, err = workflow.GetRun(ctx, q, id)
		return err
	})
	return r, err
}

// ListRuns returns runs newest first, without their steps.
func (c *Client) ListRuns(ctx context.Context, p RunListParams) ([]Run, error) {
	var out []Run
	err := c.single(ctx, func(q *db.Queries) error {
		var err error
		out, err = workflow.ListRuns(ctx, q, p)
		return err
	})
	return out, err
}

// WaitRun returns the run once it has ended (succeeded, failed, canceled,
// stopped), or ctx's error. It listens for the notification a run's end sends
// (one connection of the pool while it waits) and re-reads the run's row every
// WaitPollInterval in case one is lost; the steps are read once, at the end.
func (c *Client) WaitRun(ctx context.Context, id int64) (Run, error) {
	woken := notify.NewSignal()
	lctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	mine := strconv.FormatInt(id, 10)
	l := &notify.Listener{Pool: c.pool, Channels: []string{workflow.ChannelRunFinished}, Logger: c.cfg.Logger,
		OnNotify: func(_, payload string) {
			if payload == mine {
				woken.Wake()
			}
		}}
	go func() { defer close(done); l.Run(lctx) }()
	defer func() { stop(); <-done }()
	timer := time.NewTimer(c.cfg.WaitPollInterval)
	defer timer.Stop()
	for {
		// The run's row alone: a run of 1,000 steps read whole at each poll
		// cost its workers a core's worth of Postgres time.
		var state string
		err := c.single(ctx, func(q *db.Queries) error {
			var err error
			state, err = workflow.RunState(ctx, q, id)
			return err
		})
		if err != nil {
			if ctx.Err() != nil {
				return Run{}, fmt.Errorf("wait for run %d: %w", id, context.Cause(ctx))
			}
			return Run{}, fmt.Errorf("wait for run %d: %w", id, err)
		}
		if workflow.Terminal(state) {
			return c.GetRun(ctx, id)
		}
		timer.Reset(c.cfg.WaitPollInterval)
		select {
		case <-ctx.Done():
			return Run{}, fmt.Errorf("wait for run %d: %w", id, context.Cause(ctx))
		case <-woken:
		case <-timer.C:
		}
	}
}

// PauseRun pauses a running run: its queued tasks are held and no step
// becomes claimable until ResumeRun; running steps finish.
func (c *Client) PauseRun(ctx context.Context, id int64) error {
	return c.inTx(ctx, func(q *db.Queries) error { return workflow.Pause(ctx, q, id) })
}

// ResumeRun resumes a paused run: held tasks become claimable and steps that
// became ready while it was paused start.
func (c *Client) ResumeRun(ctx context.Context, id int64) error {
	return c.inTx(ctx, func(q *db.Queries) error { return workflow.Resume(ctx, q, id) })
}

// CancelRun ends a run as canceled: nothing new starts, pending steps end
// canceled and the tasks of running steps are canceled (as Cancel does).
func (c *Client) CancelRun(ctx context.Context, id int64) error {
	return c.inTx(ctx, func(q *db.Queries) error { return workflow.End(ctx, q, id, "canceled") })
}

// StopRun ends a run as stopped, like CancelRun; a stopped run is meant to be
// rerun (RerunRun).
func (c *Client) StopRun(ctx context.Context, id int64) error {
	return c.inTx(ctx, func(q *db.Queries) error { return workflow.End(ctx, q, id, "stopped") })
}

// RerunRun reruns an ended run in place: the steps named in from (or, with
// failed, its failed, upstream_failed and canceled steps) and everything
// downstream of them run again. It returns how many steps were reset.
func (c *Client) RerunRun(ctx context.Context, id int64, from []string, failed bool) (int, error) {
	var n int
	err := c.inTx(ctx, func(q *db.Queries) error {
		var err error
		n, err = workflow.Rerun(ctx, q, id, from, failed)
		return err
	})
	return n, err
}
