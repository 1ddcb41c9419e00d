package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/apimodel"
	"github.com/baton-scheduler/baton/internal/submit"
	"github.com/baton-scheduler/baton/internal/taskops"
)

var (
	taskStates  = []string{"scheduled", "queued", "dispatched", "running", "succeeded", "failed", "timed_out", "canceled"}
	cancelable  = []string{"queued", "dispatched", "running"}
	retryable   = []string{"failed", "timed_out", "canceled"}
	workerState = "alive, draining, dead or stopped"
)

func (s *Server) listTasks(w http.ResponseWriter, r *http.Request, _ taskops.Actor) error {
	q := r.URL.Query()
	limit, err := queryInt(r, "limit", listLimit, 1, 1000)
	if err != nil {
		return err
	}
	before, err := queryInt(r, "before_id", 0, 1, 1<<62)
	if err != nil {
		return err
	}
	state := q.Get("state")
	if state != "" && !slices.Contains(taskStates, state) {
		return errorf(http.StatusBadRequest, "unknown state %q: use one of %v", state, taskStates)
	}
	arg := db.TaskListPageParams{State: nilIfEmpty(state), GroupName: nilIfEmpty(q.Get("group")), Kind: nilIfEmpty(q.Get("kind")), MaxRows: int32(limit)}
	// tag (repeatable): tasks carrying every one of them.
	for _, tag := range q["tag"] {
		if !submit.ValidTag(tag) {
			return errorf(http.StatusBadRequest, "tag %q: want 1-128 of letters, digits, _ . : / - = starting with a letter or digit", tag)
		}
		arg.Tags = append(arg.Tags, tag)
	}
	if before > 0 {
		arg.BeforeID = &before
	}
	var rows []db.Task
	if err := s.tx(r.Context(), func(q *db.Queries) error {
		rows, err = taskops.ListPage(r.Context(), q, arg)
		return err
	}); err != nil {
		return fmt.Errorf("list tasks: %w", err)
	}
	page := apimodel.TaskPage{Tasks: apimodel.Tasks(rows)}
	if len(rows) == int(limit) {
		page.NextBeforeID = &rows[len(rows)-1].ID
	}
	writeJSON(w, http.StatusOK, page)
	return nil
}

// SubmitRequest is the body of POST /api/v1/tasks.
type SubmitRequest struct {
	Group        string                 `json:"group"`
	Kind         string                 `json:"kind"`
	Payload      json.RawMessage        `json:"payload"`
	Priority     int                    `json:"priority"`
	MaxRetries   int                    `json:"max_retries"`
	TimeoutMs    int64                  `json:"timeout_ms"`
	RetryBackoff *apimodel.RetryBackoff `json:"retry_backoff"`
	// Tags label the task (at most 16).
	Tags []string `json:"tags"`
	// RunAt, when in the future, keeps the task scheduled until then.
	RunAt *apimodel.Time `json:"run_at"`
}

func (s *Server) submitTask(w http.ResponseWriter, r *http.Request, who taskops.Actor) error {
	var req SubmitRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	if req.TimeoutMs < 0 || req.TimeoutMs > int64(24*time.Hour/time.Millisecond) {
		return errorf(http.StatusBadRequest, "timeout_ms %d is outside 0..86400000", req.TimeoutMs)
	}
	if string(req.Payload) == "null" {
		req.Payload = nil // stored as {}
	}
	spec := submit.Spec{Group: req.Group, Kind: req.Kind, Payload: req.Payload, Priority: req.Priority,
		MaxRetries: req.MaxRetries, Timeout: time.Duration(req.TimeoutMs) * time.Millisecond, Tags: req.Tags}
	if req.RunAt != nil {
		spec.RunAt = req.RunAt.Time
	}
	if b := req.RetryBackoff; b != nil {
		spec.Backoff = &submit.Backoff{Base: time.Duration(b.BaseMs) * time.Millisecond, Max: time.Duration(b.MaxMs) * time.Millisecond}
	}
	if err := spec.Validate(); err != nil {
		return err
	}
	p, err := submit.Params([]submit.Spec{spec})
	if err != nil {
		return err
	}
	var row db.Task
	err = s.tx(r.Context(), func(q *db.Queries) error {
		ok, err := q.GroupExists(r.Context(), req.Group)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("%w %q: create it (POST /api/v1/groups) or start a worker of that group first", submit.ErrUnknownGroup, req.Group)
		}
		ids, err := submit.Insert(r.Context(), q, p)
		if err != nil {
			return submit.InsertError(r.Context(), q, p, err, func(string) string { return "create it first" })
		}
		if row, err = q.TaskGet(r.Context(), ids[0]); err != nil {
			return err
		}
		if err := q.NotifyQueued(r.Context(), []string{req.Group}); err != nil {
			return err
		}
		return taskops.Audit(r.Context(), q, who, "task.submit", fmt.Sprint(row.ID), map[string]any{"group": req.Group, "kind": req.Kind})
	})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, apimodel.TaskFromRow(row))
	return nil
}

func (s *Server) getTask(w http.ResponseWriter, r *http.Request, _ taskops.Actor) error {
	id, err := pathID(r)
	if err != nil {
		return err
	}
	var d apimodel.TaskDetail
	err = s.tx(r.Context(), func(q *db.Queries) error {
		t, err := q.TaskGet(r.Context(), id)
		if errors.Is(err, pgx.ErrNoRows) {
			return errorf(http.StatusNotFound, "task %d not found", id)
		}
		if err != nil {
			return err
		}
		a, err := q.TaskAttemptList(r.Context(), id)
		if err != nil {
			return err
		}
		d = apimodel.TaskDetail{Task: apimodel.TaskFromRow(t), Attempts: apimodel.Attempts(a)}
		return nil
	})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, d)
	return nil
}

func (s *Server) cancelTask(w http.ResponseWriter, r *http.Request, who taskops.Actor) error {
	id, err := pathID(r)
	if err != nil {
		return err
	}
	row, err := s.cancelOne(r.Context(), id, who, "the HTTP API")
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, apimodel.TaskFromRow(row))
	return nil
}

// cancelOne cancels task id for who (through via: "the HTTP API", "the status
// page"), with its audit row, in one transaction: 404 if there is no such task,
// 409 if it already finished.
func (s *Server) cancelOne(ctx context.Context, id int64, who taskops.Actor, via string) (db.Task, error) {
	var row db.Task
	err := s.tx(ctx, func(q *db.Queries) error {
		var changed bool
		var err error
		row, changed, err = taskops.Cancel(ctx, q, id, "canceled through "+via+" by "+who.Name)
		if errors.Is(err, taskops.ErrNotFound) {
			return errorf(http.StatusNotFound, "task %d not found", id)
		}
		if err != nil {
			return err
		}
		if !changed {
			return errorf(http.StatusConflict, "task %d is already %s", id, row.State)
		}
		return taskops.Audit(ctx, q, who, "task.cancel", fmt.Sprint(id), map[string]any{"ids": []int64{id}})
	})
	return row, err
}

func (s *Server) retryTask(w http.ResponseWriter, r *http.Request, who taskops.Actor) error {
	id, err := pathID(r)
	if err != nil {
		return err
	}
	var row db.Task
	err = s.tx(r.Context(), func(q *db.Queries) error {
		done, err := taskops.Retry(r.Context(), q, []int64{id})
		if err != nil {
			return err
		}
		row, err = q.TaskGet(r.Context(), id)
		if errors.Is(err, pgx.ErrNoRows) {
			return errorf(http.StatusNotFound, "task %d not found", id)
		}
		if err != nil {
			return err
		}
		if len(done) == 0 {
			return errorf(http.StatusConflict, "task %d is %s: only failed, timed_out or canceled tasks outside workflow runs can be retried", id, row.State)
		}
		return taskops.Audit(r.Context(), q, who, "task.retry", fmt.Sprint(id), map[string]any{"ids": []int64{id}})
	})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, apimodel.TaskFromRow(row))
	return nil
}

// BulkRequest is the body of POST /api/v1/tasks/cancel and /retry: ids or a
// filter, not both; dry_run counts without changing anything.
type BulkRequest struct {
	IDs    []int64     `json:"ids"`
	Filter *BulkFilter `json:"filter"`
	DryRun bool        `json:"dry_run"`
}

// BulkFilter selects tasks by state (default: every state the action applies
// to), group and kind.
type BulkFilter struct {
	State string `json:"state"`
	Group string `json:"group"`
	Kind  string `json:"kind"`
}

func (s *Server) bulk(action string) apiHandler {
	return func(w http.ResponseWriter, r *http.Request, who taskops.Actor) error {
		var req BulkRequest
		if err := decode(r, &req); err != nil {
			return err
		}
		res, err := s.bulkApply(r.Context(), action, req, who, "the HTTP API")
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, res)
		return nil
	}
}

// bulkApply cancels or retries (action) the tasks req selects, at most MaxBulk
// (the newest), or only counts them (req.DryRun), in one audited transaction;
// via names the surface in the canceled tasks' reason.
func (s *Server) bulkApply(ctx context.Context, action string, req BulkRequest, who taskops.Actor, via string) (apimodel.BulkResult, error) {
	eligible := cancelable
	if action == "retry" {
		eligible = retryable
	}
	if (req.IDs == nil) == (req.Filter == nil) {
		return apimodel.BulkResult{}, errorf(http.StatusBadRequest, "give either ids or filter")
	}
	if len(req.IDs) > MaxBulk {
		return apimodel.BulkResult{}, errorf(http.StatusBadRequest, "%d ids: at most %d per call", len(req.IDs), MaxBulk)
	}
	arg := db.TaskSelectIDsParams{States: eligible, PlainOnly: action == "retry", MaxRows: MaxBulk}
	if req.IDs != nil {
		arg.Ids = req.IDs
	} else {
		f := req.Filter
		if f.State != "" {
			if !slices.Contains(eligible, f.State) {
				return apimodel.BulkResult{}, errorf(http.StatusBadRequest, "%s applies to tasks in state %v, not %q", action, eligible, f.State)
			}
			arg.States = []string{f.State}
		}
		arg.GroupName, arg.Kind = nilIfEmpty(f.Group), nilIfEmpty(f.Kind)
	}
	res := apimodel.BulkResult{DryRun: req.DryRun, IDs: []int64{}}
	err := s.tx(ctx, func(q *db.Queries) error {
		ids, err := q.TaskSelectIDs(ctx, arg)
		if err != nil {
			return err
		}
		res.Matched = len(ids)
		if req.DryRun {
			res.IDs = ids
			return nil
		}
		var done []int64
		if action == "retry" {
			done, err = taskops.Retry(ctx, q, ids)
		} else {
			done, err = taskops.CancelMany(ctx, q, ids, "canceled through "+via+" by "+who.Name)
		}
		if err != nil {
			return err
		}
		res.Changed, res.IDs = len(done), append(res.IDs, done...)
		return taskops.Audit(ctx, q, who, "task."+action, "bulk",
			map[string]any{"ids": req.IDs, "filter": req.Filter, "matched": res.Matched, "changed": res.Changed})
	})
	return res, err
}

func (s *Server) groups(r *http.Request, name string) ([]apimodel.Group, error) {
	var rows []db.GroupListRow
	err := s.tx(r.Context(), func(q *db.Queries) error {
		var err error
		rows, err = q.GroupList(r.Context(), db.GroupListParams{WorkerTimeoutMs: s.cfg.WorkerTimeout.Milliseconds(), Name: nilIfEmpty(name)})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("list groups: %w", err)
	}
	return apimodel.Groups(rows), nil
}

func (s *Server) listGroups(w http.ResponseWriter, r *http.Request, _ taskops.Actor) error {
	g, err := s.groups(r, "")
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]any{"groups": g})
	return nil
}

func (s *Server) getGroup(w http.ResponseWriter, r *http.Request, _ taskops.Actor) error {
	name := r.PathValue("name")
	g, err := s.groups(r, name)
	if err != nil {
		return err
	}
	if len(g) == 0 {
		return errorf(http.StatusNotFound, "group %q not found", name)
	}
	writeJSON(w, http.StatusOK, g[0])
	return nil
}

// GroupRequest is the body of POST /api/v1/groups.
type GroupRequest struct {
	Name        string `json:"name"`
	Description string `json:"description"`
}

func (s *Server) createGroup(w http.ResponseWriter, r *http.Request, who taskops.Actor) error {
	var req GroupRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	if err := (submit.Spec{Group: req.Name, Kind: "x"}).Validate(); err != nil {
		return errorf(http.StatusBadRequest, "group name %q must be 1-63 of letters, digits, _ . - starting with a letter or digit", req.Name)
	}
	err := s.tx(r.Context(), func(q *db.Queries) error {
		n, err := q.GroupCreate(r.Context(), db.GroupCreateParams{Name: req.Name, Description: req.Description})
		if err != nil {
			return err
		}
		if n == 0 {
			return errorf(http.StatusConflict, "group %q exists", req.Name)
		}
		return taskops.Audit(r.Context(), q, who, "group.create", req.Name, req)
	})
	if err != nil {
		return err
	}
	g, err := s.groups(r, req.Name)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, g[0])
	return nil
}

func (s *Server) pauseGroup(paused bool) apiHandler {
	action := "group.resume"
	if paused {
		action = "group.pause"
	}
	return func(w http.ResponseWriter, r *http.Request, who taskops.Actor) error {
		name := r.PathValue("name")
		err := s.tx(r.Context(), func(q *db.Queries) error {
			n, err := q.GroupSetPaused(r.Context(), db.GroupSetPausedParams{Name: name, Paused: paused})
			if err != nil {
				return err
			}
			if n == 0 {
				return errorf(http.StatusNotFound, "group %q not found", name)
			}
			if !paused { // its workers claim again now, not at their next poll
				if err := q.NotifyQueued(r.Context(), []string{name}); err != nil {
					return err
				}
			}
			return taskops.Audit(r.Context(), q, who, action, name, map[string]any{})
		})
		if err != nil {
			return err
		}
		return s.getGroup(w, r, who)
	}
}

func (s *Server) listWorkers(w http.ResponseWriter, r *http.Request, _ taskops.Actor) error {
	all, err := queryBool(r, "all")
	if err != nil {
		return err
	}
	limit, err := queryInt(r, "limit", 1000, 1, 10000)
	if err != nil {
		return err
	}
	var rows []db.WorkerSessionListRow
	err = s.tx(r.Context(), func(q *db.Queries) error {
		rows, err = q.WorkerSessionList(r.Context(), db.WorkerSessionListParams{GroupName: nilIfEmpty(r.URL.Query().Get("group")), IncludeEnded: all, MaxRows: int32(limit)})
		return err
	})
	if err != nil {
		return fmt.Errorf("list workers: %w", err)
	}
	writeJSON(w, http.StatusOK, map[string]any{"workers": apimodel.Workers(rows)})
	return nil
}

// drainWorker marks a live worker session draining: it claims nothing more and
// failover sends it nothing; its running tasks finish. The process keeps
// heartbeating until it is stopped (SIGTERM).
func (s *Server) drainWorker(w http.ResponseWriter, r *http.Request, who taskops.Actor) error {
	id, err := pathID(r)
	if err != nil {
		return err
	}
	var row db.WorkerSessionShowRow
	err = s.tx(r.Context(), func(q *db.Queries) error {
		n, err := q.WorkerSessionDrain(r.Context(), id)
		if err != nil {
			return err
		}
		row, err = q.WorkerSessionShow(r.Context(), id)
		if errors.Is(err, pgx.ErrNoRows) {
			return errorf(http.StatusNotFound, "worker session %d not found", id)
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return errorf(http.StatusConflict, "worker session %d is %s: only an alive session can be drained (states: %s)", id, row.State, workerState)
		}
		return taskops.Audit(r.Context(), q, who, "worker.drain", fmt.Sprint(id), map[string]any{"group": row.GroupName})
	})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, apimodel.Workers([]db.WorkerSessionListRow{db.WorkerSessionListRow(row)})[0])
	return nil
}

func (s *Server) listMasters(w http.ResponseWriter, r *http.Request, _ taskops.Actor) error {
	all, err := queryBool(r, "all")
	if err != nil {
		return err
	}
	var rows []db.MasterSession
	err = s.tx(r.Context(), func(q *db.Queries) error {
		rows, err = q.MasterSessionList(r.Context(), db.MasterSessionListParams{IncludeEnded: all, MaxRows: 1000})
		return err
	})
	if err != nil {
		return fmt.Errorf("list masters: %w", err)
	}
	out := make([]apimodel.Master, 0, len(rows))
	for _, m := range rows {
		out = append(out, apimodel.MasterFromRow(m))
	}
	writeJSON(w, http.StatusOK, map[string]any{"masters": out})
	return nil
}

func (s *Server) listFailovers(w http.ResponseWriter, r *http.Request, _ taskops.Actor) error {
	limit, err := queryInt(r, "limit", listLimit, 1, 10000)
	if err != nil {
		return err
	}
	kind := r.URL.Query().Get("kind")
	if kind != "" && kind != "worker" && kind != "master" {
		return errorf(http.StatusBadRequest, "kind %q: use worker or master", kind)
	}
	var rows []db.FailoverEvent
	err = s.tx(r.Context(), func(q *db.Queries) error {
		rows, err = q.FailoverEventList(r.Context(), db.FailoverEventListParams{Kind: nilIfEmpty(kind), MaxRows: int32(limit)})
		return err
	})
	if err != nil {
		return fmt.Errorf("list failovers: %w", err)
	}
	writeJSON(w, http.StatusOK, map[string]any{"failovers": apimodel.FailoverEvents(rows)})
	return nil
}

func (s *Server) listAudit(w http.ResponseWriter, r *http.Request, _ taskops.Actor) error {
	limit, err := queryInt(r, "limit", listLimit, 1, 10000)
	if err != nil {
		return err
	}
	var rows []db.AuditLog
	err = s.tx(r.Context(), func(q *db.Queries) error {
		rows, err = q.AuditList(r.Context(), int32(limit))
		return err
	})
	if err != nil {
		return fmt.Errorf("list audit log: %w", err)
	}
	writeJSON(w, http.StatusOK, map[string]any{"entries": apimodel.AuditEntries(rows)})
	return nil
}
