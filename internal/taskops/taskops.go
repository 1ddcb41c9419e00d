// Package taskops holds the operator actions that the CLI, the HTTP API and the
// Client share: cancel and retry of tasks (one or many), and the audit record
// every mutating operator call writes in the same transaction as its change.
package taskops

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"

	"github.com/baton-scheduler/baton/db"
)

// ErrNotFound: no task with that id.
var ErrNotFound = errors.New("not found")

// Cancel cancels task id unless it finished. It returns the task's row after
// the call and whether the cancel changed it (false: it had finished). Run it in
// a transaction: the task row is locked first (the order dispatch and failover
// take: task, then its dispatch row), so no dispatch row is created for it before
// TaskCancel, whose snapshot is taken once the lock is held, deletes them.
func Cancel(ctx context.Context, q *db.Queries, id int64, reason string) (db.Task, bool, error) {
	locked, err := q.TaskCancelLockTask(ctx, id)
	if err != nil {
		return db.Task{}, false, fmt.Errorf("cancel task %d: %w", id, err)
	}
	if len(locked) == 0 {
		return db.Task{}, false, fmt.Errorf("%w: task %d", ErrNotFound, id)
	}
	_, err = q.TaskCancel(ctx, db.TaskCancelParams{ID: id, Reason: reason})
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return db.Task{}, false, fmt.Errorf("cancel task %d: %w", id, err)
	}
	changed := err == nil
	row, err := q.TaskGet(ctx, id)
	if err != nil {
		return db.Task{}, false, fmt.Errorf("cancel task %d: %w", id, err)
	}
	return row, changed, nil
}

// CancelMany cancels each unfinished task of ids (in id order, so two bulk
// cancels lock in the same order) and returns the ids it canceled; unknown and
// finished ids are skipped.
func CancelMany(ctx context.Context, q *db.Queries, ids []int64, reason string) ([]int64, error) {
	var done []int64
	for _, id := range sortedUnique(ids) {
		_, changed, err := Cancel(ctx, q, id, reason)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if changed {
			done = append(done, id)
		}
	}
	return done, nil
}

// Retry puts failed, timed-out and canceled tasks of ids (not workflow steps)
// back in the queue and wakes their groups' workers at commit; it returns the ids
// it requeued.
func Retry(ctx context.Context, q *db.Queries, ids []int64) ([]int64, error) {
	rows, err := q.TaskRetry(ctx, sortedUnique(ids))
	if err != nil {
		return nil, fmt.Errorf("retry tasks: %w", err)
	}
	done := make([]int64, 0, len(rows))
	groups := map[string]bool{}
	var names []string
	for _, r := range rows {
		done = append(done, r.ID)
		if !groups[r.GroupName] {
			groups[r.GroupName] = true
			names = append(names, r.GroupName)
		}
	}
	if len(names) > 0 {
		if err := q.NotifyQueued(ctx, names); err != nil {
			return nil, fmt.Errorf("retry tasks: wake workers: %w", err)
		}
	}
	return done, nil
}

// Actor is who makes an audited change.
type Actor struct {
	// TokenID is the API token used (0 for the CLI).
	TokenID int64
	// Name is "token:<name>" or "cli".
	Name string
}

// Audit records a mutating call; call it in the transaction of the change.
func Audit(ctx context.Context, q *db.Queries, who Actor, action, target string, detail any) error {
	b, err := json.Marshal(detail)
	if err != nil {
		return fmt.Errorf("audit %s: %w", action, err)
	}
	var tok *int64
	if who.TokenID != 0 {
		tok = &who.TokenID
	}
	if err := q.AuditInsert(ctx, db.AuditInsertParams{TokenID: tok, Actor: who.Name, Action: action, Target: target, Detail: b}); err != nil {
		return fmt.Errorf("audit %s: %w", action, err)
	}
	return nil
}

func sortedUnique(ids []int64) []int64 {
	seen := make(map[int64]bool, len(ids))
	out := make([]int64, 0, len(ids))
	for _, id := range ids {
		if !seen[id] {
			seen[id] = true
			out = append(out, id)
		}
	}
	slices.Sort(out) // concurrent bulk calls lock rows in one order
	return out
}

// ListPage reads a page of tasks, newest first, planned with its filters'
// values (a generic plan scanned the whole table for a group, a rare state or a
// deep page). A page of one group is read one range per state
// (TaskListPageByGroup: the same rows, in the same order), not by reading the
// primary key backwards until the group's rows fill it, which read the whole
// table for a group with few tasks. q must be in a transaction: the planner
// settings are local to it.
func ListPage(ctx context.Context, q *db.Queries, arg db.TaskListPageParams) ([]db.Task, error) {
	if err := q.TxListPlanning(ctx); err != nil {
		return nil, fmt.Errorf("list tasks: %w", err)
	}
	if arg.GroupName == nil {
		return q.TaskListPage(ctx, arg)
	}
	return q.TaskListPageByGroup(ctx, db.TaskListPageByGroupParams{GroupName: *arg.GroupName, State: arg.State,
		BeforeID: arg.BeforeID, Kind: arg.Kind, Tags: arg.Tags, MaxRows: arg.MaxRows})
}
