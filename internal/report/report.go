// Package report writes attempt results fenced by (task, attempt, session): a
// superseded attempt's write changes nothing, and the refusal is recorded beside
// the outcome its attempt was closed with (refused_outcome).
package report

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/executor"
	"github.com/baton-scheduler/baton/internal/notify"
	"github.com/baton-scheduler/baton/internal/state"
	"github.com/baton-scheduler/baton/internal/store"
)

// Result is one attempt's outcome as its worker (or a master, for timeouts) reports it.
type Result struct {
	TaskID    int64
	Attempt   int32
	SessionID int64
	Outcome   string // succeeded, failed, timed_out, snoozed
	ExitCode  int32  // executor.NoExitCode when none
	Output    string
	Error     string
	Snooze    time.Duration // snoozed: run again after this long
	// StepOutputs is a succeeded shell task's $BATON_OUTPUT as a JSON object
	// ("" none): its workflow step's outputs.
	StepOutputs string
}

// Summary says what happened to a batch.
type Summary struct {
	Applied map[int64]string // task id -> new task state (of the applied attempt)
	Fenced  []Result         // superseded: refused (recorded as refused_outcome)
}

// Finish writes a batch of results in one transaction.
func Finish(ctx context.Context, pool *pgxpool.Pool, results []Result) (Summary, error) {
	var sum Summary
	if len(results) == 0 {
		return sum, nil
	}
	p := finishParams(results)
	// One statement, no explicit transaction: the completion is atomic on its own,
	// and recording refused results afterwards is audit, not a state change.
	q := db.New(pool)
	rows, err := q.TaskFinish(ctx, p)
	if err != nil {
		return sum, fmt.Errorf("finish %d tasks: %w", len(results), err)
	}
	sum.Applied = make(map[int64]string, len(rows))
	type key struct {
		id      int64
		attempt int32
	}
	applied := make(map[key]bool, len(rows))
	for _, r := range rows {
		sum.Applied[r.ID] = r.State
		applied[key{r.ID, r.Attempt}] = true
	}
	var f db.TaskAttemptMarkFencedParams
	for _, r := range results {
		if applied[key{r.TaskID, r.Attempt}] {
			continue
		}
		sum.Fenced = append(sum.Fenced, r)
		f.Ids = append(f.Ids, r.TaskID)
		f.Attempts = append(f.Attempts, r.Attempt)
		f.SessionIds = append(f.SessionIds, r.SessionID)
		f.Outcomes = append(f.Outcomes, r.Outcome)
	}
	if len(f.Ids) > 0 {
		if _, err := q.TaskAttemptMarkFenced(ctx, f); err != nil {
			return sum, fmt.Errorf("record %d fenced attempts: %w", len(f.Ids), err)
		}
	}
	return sum, nil
}

// TimeOutBatchSize bounds the overdue attempts one timeout transaction records.
const TimeOutBatchSize = 500

// TimeOutOverdue records running attempts past their timeout plus grace as
// timed_out (retrying them, after each task's own backoff, if allowed). The worker
// normally kills and reports them itself; this catches handlers that ignore
// cancellation and workers that hang. Each attempt is closed in task_attempt_log,
// so a late result of the worker is recorded there as refused. now replaces
// Postgres now() (tests only; nil in production).
func TimeOutOverdue(ctx context.Context, pool *pgxpool.Pool, grace time.Duration, now *time.Time) (int, error) {
	var results []Result
	err := store.WithTx(ctx, pool, func(q *db.Queries, _ pgx.Tx) error {
		results = results[:0]
		// A row a hung writer holds is skipped by the scan; anything else it holds
		// fails this pass after a second instead of stalling the sweep.
		if err := q.LockTimeoutLocal(ctx, time.Second.Milliseconds()); err != nil {
			return fmt.Errorf("set lock timeout: %w", err)
		}
		rows, err := q.TaskListTimedOut(ctx, db.TaskListTimedOutParams{GraceMs: grace.Milliseconds(), Now: now, MaxTasks: TimeOutBatchSize})
		if err != nil {
			return fmt.Errorf("list overdue tasks: %w", err)
		}
		if len(rows) == 0 {
			return nil
		}
		for _, r := range rows {
			results = append(results, Result{TaskID: r.ID, Attempt: r.Attempt, SessionID: r.WorkerSessionID, Outcome: state.OutcomeTimedOut,
				ExitCode: executor.NoExitCode, Error: "timed out: no result from the worker within timeout + grace"})
		}
		p := finishParams(results)
		p.LogAll = true
		if _, err := q.TaskFinish(ctx, p); err != nil {
			return fmt.Errorf("time out %d tasks: %w", len(rows), err)
		}
		return nil
	})
	return len(results), err
}

// finishParams lays results out as the column arrays TaskFinish unnests.
func finishParams(results []Result) db.TaskFinishParams {
	p := db.TaskFinishParams{NoExitCode: executor.NoExitCode, NotifyPayloadMax: notify.PayloadMax}
	for _, r := range results {
		p.Ids = append(p.Ids, r.TaskID)
		p.Attempts = append(p.Attempts, r.Attempt)
		p.SessionIds = append(p.SessionIds, r.SessionID)
		p.Outcomes = append(p.Outcomes, r.Outcome)
		p.ExitCodes = append(p.ExitCodes, r.ExitCode)
		p.Errors = append(p.Errors, r.Error)
		p.Outputs = append(p.Outputs, r.Output)
		p.SnoozesMs = append(p.SnoozesMs, r.Snooze.Milliseconds())
		p.StepOutputs = append(p.StepOutputs, r.StepOutputs)
	}
	return p
}
