package httpapi

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/apimodel"
	"github.com/baton-scheduler/baton/internal/schedule"
	"github.com/baton-scheduler/baton/internal/taskops"
	"github.com/baton-scheduler/baton/internal/workflow"
)

// workflowRoutes: workflows, runs, schedules and backfills — what `baton
// workflow|run|schedule|backfill` does, in the same model.
func (s *Server) workflowRoutes() {
	s.api("GET /api/v1/workflows", ScopeRead, s.listWorkflows)
	s.api("POST /api/v1/workflows", ScopeOperate, s.applyWorkflow)
	s.api("GET /api/v1/workflows/{name}", ScopeRead, s.getWorkflow)
	s.api("GET /api/v1/runs", ScopeRead, s.listRuns)
	s.api("POST /api/v1/runs", ScopeOperate, s.startRun)
	s.api("GET /api/v1/runs/{id}", ScopeRead, s.getRun)
	for _, c := range []string{"pause", "resume", "cancel", "stop"} {
		s.api("POST /api/v1/runs/{id}/"+c, ScopeOperate, s.controlRun(c))
	}
	s.api("POST /api/v1/runs/{id}/rerun", ScopeOperate, s.rerunRun)
	s.api("GET /api/v1/schedules", ScopeRead, s.listSchedules)
	s.api("GET /api/v1/schedules/{name}", ScopeRead, s.getSchedule)
	s.api("GET /api/v1/schedules/{name}/preview", ScopeRead, s.previewSchedule)
	s.api("POST /api/v1/schedules/{name}/pause", ScopeOperate, s.pauseSchedule(true))
	s.api("POST /api/v1/schedules/{name}/resume", ScopeOperate, s.pauseSchedule(false))
	s.api("POST /api/v1/schedules/{name}/trigger", ScopeOperate, s.triggerSchedule)
	s.api("GET /api/v1/backfills", ScopeRead, s.listBackfills)
	s.api("GET /api/v1/backfills/{id}", ScopeRead, s.getBackfill)
	for c, to := range map[string]string{"pause": "paused", "resume": "running", "cancel": "canceled"} {
		s.api("POST /api/v1/backfills/{id}/"+c, ScopeOperate, s.setBackfill(c, to))
	}
}

// workflowError maps the workflow and schedule packages' errors to statuses.
func workflowError(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, workflow.ErrNotFound), errors.Is(err, schedule.ErrNotFound):
		return errorf(http.StatusNotFound, "%v", err)
	case errors.Is(err, workflow.ErrInvalid), errors.Is(err, schedule.ErrInvalid):
		return errorf(http.StatusBadRequest, "%v", err)
	case errors.Is(err, workflow.ErrRunState), errors.Is(err, schedule.ErrState), errors.Is(err, schedule.ErrConflict):
		return errorf(http.StatusConflict, "%v", err)
	}
	return err
}

func (s *Server) listWorkflows(w http.ResponseWriter, r *http.Request, _ taskops.Actor) error {
	var rows []db.WorkflowListRow
	if err := s.tx(r.Context(), func(q *db.Queries) (err error) {
		rows, err = q.WorkflowList(r.Context())
		return err
	}); err != nil {
		return fmt.Errorf("list workflows: %w", err)
	}
	writeJSON(w, http.StatusOK, map[string]any{"workflows": apimodel.Workflows(rows)})
	return nil
}

// applyWorkflow stores a definition (the YAML of `baton workflow apply`, or
// the same as JSON): a new version only if it changed (201), else 200.
func (s *Server) applyWorkflow(w http.ResponseWriter, r *http.Request, who taskops.Actor) error {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return err
	}
	if len(body) == 0 {
		return errorf(http.StatusBadRequest, "request body is empty: send the workflow's YAML or JSON")
	}
	d, err := workflow.Parse(body)
	if err == nil {
		err = d.Validate()
	}
	if err != nil {
		return workflowError(err)
	}
	var a workflow.Applied
	if err := s.tx(r.Context(), func(q *db.Queries) (err error) {
		if a, err = workflow.Apply(r.Context(), q, d); err != nil {
			return err
		}
		return taskops.Audit(r.Context(), q, who, "workflow.apply", a.Name, map[string]any{"version": a.Version, "created": a.Created})
	}); err != nil {
		return workflowError(err)
	}
	status := http.StatusOK
	if a.Created {
		status = http.StatusCreated
	}
	writeJSON(w, status, apimodel.Applied{Name: a.Name, Version: a.Version, Created: a.Created})
	return nil
}

func (s *Server) getWorkflow(w http.ResponseWriter, r *http.Request, _ taskops.Actor) error {
	name := r.PathValue("name")
	version, err := queryInt(r, "version", 0, 1, 1<<31-1)
	if err != nil {
		return err
	}
	var v db.WorkflowVersionForStartRow
	if err := s.tx(r.Context(), func(q *db.Queries) (err error) {
		v, err = q.WorkflowVersionForStart(r.Context(), db.WorkflowVersionForStartParams{Name: name, Version: int32(version)})
		return err
	}); errors.Is(err, pgx.ErrNoRows) {
		if version > 0 {
			return errorf(http.StatusNotFound, "workflow %q has no version %d", name, version)
		}
		return errorf(http.StatusNotFound, "workflow %q not found", name)
	} else if err != nil {
		return fmt.Errorf("get workflow %s: %w", name, err)
	}
	writeJSON(w, http.StatusOK, apimodel.WorkflowVersion{Name: name, Version: int(v.Version), Definition: v.Definition})
	return nil
}

func (s *Server) listRuns(w http.ResponseWriter, r *http.Request, _ taskops.Actor) error {
	limit, err := queryInt(r, "limit", listLimit, 1, 1000)
	if err != nil {
		return err
	}
	before, err := queryInt(r, "before_id", 0, 1, 1<<62)
	if err != nil {
		return err
	}
	state := r.URL.Query().Get("state")
	if state != "" && !slices.Contains(runStates, state) {
		return errorf(http.StatusBadRequest, "unknown run state %q: use one of %v", state, runStates)
	}
	var runs []workflow.Run
	if err := s.tx(r.Context(), func(q *db.Queries) (err error) {
		runs, err = workflow.ListRuns(r.Context(), q, workflow.ListParams{Workflow: r.URL.Query().Get("workflow"),
			State: state, BeforeID: before, Limit: int(limit)})
		return err
	}); err != nil {
		return fmt.Errorf("list runs: %w", err)
	}
	page := map[string]any{"runs": apimodel.Runs(runs), "next_before_id": nil}
	if len(runs) == int(limit) {
		page["next_before_id"] = runs[len(runs)-1].ID
	}
	writeJSON(w, http.StatusOK, page)
	return nil
}

var runStates = []string{"running", "paused", "succeeded", "failed", "canceled", "stopped"}

// StartRunRequest is the body of POST /api/v1/runs.
type StartRunRequest struct {
	Workflow        string         `json:"workflow"`
	Version         int            `json:"version"`
	Params          map[string]any `json:"params"`
	FailureStrategy string         `json:"failure_strategy"`
	IdempotencyKey  string         `json:"idempotency_key"`
}

// startRun starts a run: 201, or 200 with created false when the idempotency
// key names an existing run.
func (s *Server) startRun(w http.ResponseWriter, r *http.Request, who taskops.Actor) error {
	var req StartRunRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	if req.Workflow == "" {
		return errorf(http.StatusBadRequest, "workflow is required")
	}
	if req.Params == nil {
		req.Params = map[string]any{}
	}
	var st workflow.Started
	if err := s.tx(r.Context(), func(q *db.Queries) (err error) {
		st, err = workflow.Start(r.Context(), q, workflow.StartParams{Workflow: req.Workflow, Version: req.Version,
			Params: req.Params, FailureStrategy: req.FailureStrategy, IdempotencyKey: req.IdempotencyKey})
		if err != nil || !st.Created {
			return err
		}
		return taskops.Audit(r.Context(), q, who, "run.start", fmt.Sprint(st.RunID), req)
	}); err != nil {
		return workflowError(err)
	}
	status := http.StatusCreated
	if !st.Created {
		status = http.StatusOK
	}
	writeJSON(w, status, apimodel.RunStarted{RunID: st.RunID, Created: st.Created})
	return nil
}

func (s *Server) getRun(w http.ResponseWriter, r *http.Request, _ taskops.Actor) error {
	id, err := pathID(r)
	if err != nil {
		return err
	}
	return s.writeRun(w, r, id)
}

func (s *Server) writeRun(w http.ResponseWriter, r *http.Request, id int64) error {
	var run workflow.Run
	if err := s.tx(r.Context(), func(q *db.Queries) (err error) {
		run, err = workflow.GetRun(r.Context(), q, id)
		return err
	}); err != nil {
		return workflowError(err)
	}
	writeJSON(w, http.StatusOK, apimodel.RunFrom(run))
	return nil
}

// controlRun pauses, resumes, cancels or stops a run (409 when its state does
// not allow it) and answers with the run.
func (s *Server) controlRun(control string) apiHandler {
	return func(w http.ResponseWriter, r *http.Request, who taskops.Actor) error {
		id, err := pathID(r)
		if err != nil {
			return err
		}
		if err := s.tx(r.Context(), func(q *db.Queries) error {
			if _, err := workflow.GetRun(r.Context(), q, id); err != nil { // 404 before 409
				return err
			}
			var err error
			switch control {
			case "pause":
				err = workflow.Pause(r.Context(), q, id)
			case "resume":
				err = workflow.Resume(r.Context(), q, id)
			case "cancel":
				err = workflow.End(r.Context(), q, id, "canceled")
			case "stop":
				err = workflow.End(r.Context(), q, id, "stopped")
			}
			if err != nil {
				return err
			}
			return taskops.Audit(r.Context(), q, who, "run."+control, fmt.Sprint(id), map[string]any{})
		}); err != nil {
			return workflowError(err)
		}
		return s.writeRun(w, r, id)
	}
}

// RerunRequest is the body of POST /api/v1/runs/{id}/rerun: failed, or from.
type RerunRequest struct {
	// Failed reruns the failed, upstream_failed and canceled steps and what
	// depends on them.
	Failed bool `json:"failed"`
	// From reruns this step and everything downstream of it.
	From string `json:"from"`
}

func (s *Server) rerunRun(w http.ResponseWriter, r *http.Request, who taskops.Actor) error {
	id, err := pathID(r)
	if err != nil {
		return err
	}
	var req RerunRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	if req.Failed == (req.From != "") {
		return errorf(http.StatusBadRequest, `send {"failed": true} or {"from": "STEP"}, one of them`)
	}
	var n int
	if err := s.tx(r.Context(), func(q *db.Queries) error {
		if _, err := workflow.GetRun(r.Context(), q, id); err != nil {
			return err
		}
		var steps []string
		if req.From != "" {
			steps = []string{req.From}
		}
		var err error
		if n, err = workflow.Rerun(r.Context(), q, id, steps, req.Failed); err != nil {
			return err
		}
		return taskops.Audit(r.Context(), q, who, "run.rerun", fmt.Sprint(id), map[string]any{"request": req, "steps": n})
	}); err != nil {
		return workflowError(err)
	}
	writeJSON(w, http.StatusOK, map[string]any{"run_id": id, "steps": n})
	return nil
}

func (s *Server) listSchedules(w http.ResponseWriter, r *http.Request, _ taskops.Actor) error {
	limit, err := queryInt(r, "limit", 1000, 1, 10000)
	if err != nil {
		return err
	}
	var ss []schedule.Schedule
	if err := s.tx(r.Context(), func(q *db.Queries) (err error) {
		ss, err = schedule.List(r.Context(), q, r.URL.Query().Get("workflow"), int(limit))
		return err
	}); err != nil {
		return fmt.Errorf("list schedules: %w", err)
	}
	writeJSON(w, http.StatusOK, map[string]any{"schedules": apimodel.Schedules(ss)})
	return nil
}

func (s *Server) getSchedule(w http.ResponseWriter, r *http.Request, _ taskops.Actor) error {
	return s.writeSchedule(w, r, r.PathValue("name"))
}

func (s *Server) writeSchedule(w http.ResponseWriter, r *http.Request, name string) error {
	var sc schedule.Schedule
	if err := s.tx(r.Context(), func(q *db.Queries) (err error) {
		sc, err = schedule.Get(r.Context(), q, name)
		return err
	}); err != nil {
		return workflowError(err)
	}
	writeJSON(w, http.StatusOK, apimodel.ScheduleFrom(sc))
	return nil
}

// previewSchedule lists the next n (default 10, at most 1000) fire times.
func (s *Server) previewSchedule(w http.ResponseWriter, r *http.Request, _ taskops.Actor) error {
	n, err := queryInt(r, "n", 10, 1, 1000)
	if err != nil {
		return err
	}
	name := r.PathValue("name")
	var items []schedule.PreviewItem
	if err := s.tx(r.Context(), func(q *db.Queries) (err error) {
		items, err = schedule.Preview(r.Context(), q, name, int(n), nil)
		return err
	}); err != nil {
		return workflowError(err)
	}
	writeJSON(w, http.StatusOK, map[string]any{"schedule": name, "fires": apimodel.Fires(items)})
	return nil
}

func (s *Server) pauseSchedule(paused bool) apiHandler {
	action := "schedule.resume"
	if paused {
		action = "schedule.pause"
	}
	return func(w http.ResponseWriter, r *http.Request, who taskops.Actor) error {
		name := r.PathValue("name")
		if err := s.tx(r.Context(), func(q *db.Queries) error {
			reason := ""
			if paused {
				reason = "paused through the HTTP API by " + who.Name
			}
			if err := schedule.SetPaused(r.Context(), q, name, paused, reason); err != nil {
				return err
			}
			return taskops.Audit(r.Context(), q, who, action, name, map[string]any{})
		}); err != nil {
			return workflowError(err)
		}
		return s.writeSchedule(w, r, name)
	}
}

// TriggerRequest is the body of POST /api/v1/schedules/{name}/trigger.
type TriggerRequest struct {
	// At is the logical time (RFC 3339); absent: now, to the second.
	At *time.Time `json:"at"`
	// Rerun starts a time whose run already ended again.
	Rerun bool `json:"rerun"`
}

// triggerSchedule runs a schedule's workflow for a logical time through the
// fire ledger's key (schedule.Trigger): 201 with the run, 409 when that time is
// running, buffered, or ran (without rerun).
func (s *Server) triggerSchedule(w http.ResponseWriter, r *http.Request, who taskops.Actor) error {
	name := r.PathValue("name")
	var req TriggerRequest
	if r.ContentLength != 0 {
		if err := decode(r, &req); err != nil {
			return err
		}
	}
	var tr schedule.Triggered
	if err := s.tx(r.Context(), func(q *db.Queries) (err error) {
		if tr, err = schedule.Trigger(r.Context(), q, name, req.At, req.Rerun, nil); err != nil {
			return err
		}
		return taskops.Audit(r.Context(), q, who, "schedule.trigger", name, map[string]any{"request": req, "run_id": tr.RunID})
	}); err != nil {
		return workflowError(err)
	}
	writeJSON(w, http.StatusCreated, apimodel.Triggered{Schedule: tr.Schedule, NominalTime: apimodel.At(tr.Nominal),
		RunID: tr.RunID, Rerun: tr.Rerun})
	return nil
}

func (s *Server) listBackfills(w http.ResponseWriter, r *http.Request, _ taskops.Actor) error {
	limit, err := queryInt(r, "limit", listLimit, 1, 100)
	if err != nil {
		return err
	}
	var bs []schedule.Backfill
	if err := s.tx(r.Context(), func(q *db.Queries) (err error) {
		bs, err = schedule.ListBackfills(r.Context(), q, int(limit))
		return err
	}); err != nil {
		return fmt.Errorf("list backfills: %w", err)
	}
	writeJSON(w, http.StatusOK, map[string]any{"backfills": apimodel.Backfills(bs)})
	return nil
}

func (s *Server) getBackfill(w http.ResponseWriter, r *http.Request, _ taskops.Actor) error {
	id, err := pathID(r)
	if err != nil {
		return err
	}
	return s.writeBackfill(w, r, id)
}

func (s *Server) writeBackfill(w http.ResponseWriter, r *http.Request, id int64) error {
	var b schedule.Backfill
	if err := s.tx(r.Context(), func(q *db.Queries) (err error) {
		b, err = schedule.GetBackfill(r.Context(), q, id)
		return err
	}); err != nil {
		return workflowError(err)
	}
	writeJSON(w, http.StatusOK, apimodel.BackfillFrom(b))
	return nil
}

func (s *Server) setBackfill(control, to string) apiHandler {
	return func(w http.ResponseWriter, r *http.Request, who taskops.Actor) error {
		id, err := pathID(r)
		if err != nil {
			return err
		}
		if err := s.tx(r.Context(), func(q *db.Queries) error {
			if err := schedule.SetBackfillState(r.Context(), q, id, to); err != nil {
				return err
			}
			return taskops.Audit(r.Context(), q, who, "backfill."+control, fmt.Sprint(id), map[string]any{})
		}); err != nil {
			return workflowError(err)
		}
		return s.writeBackfill(w, r, id)
	}
}
