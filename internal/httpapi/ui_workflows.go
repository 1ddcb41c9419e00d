package httpapi

import (
	"errors"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"time"

	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/schedule"
	"github.com/baton-scheduler/baton/internal/workflow"
)

// The status page's workflow views: runs, a run as a DAG (SVG drawn by the
// server) and a Gantt chart of its steps, schedules with their next and recent
// fires.

func (s *Server) uiWorkflowRoutes() {
	s.mux.HandleFunc("GET /ui/runs", s.page("runs.html", "runs", 5, s.uiRuns))
	s.mux.HandleFunc("GET /ui/runs/{id}", s.page("run.html", "run", 5, s.uiRun))
	s.mux.HandleFunc("GET /ui/schedules", s.page("schedules.html", "schedules", 10, s.uiSchedules))
	s.mux.HandleFunc("GET /ui/schedules/{name}", s.page("schedule.html", "schedule", 10, s.uiSchedule))
}

type runsPage struct {
	Workflow, State string
	States          []string
	Runs            []workflow.Run
	Next            string
}

func (s *Server) uiRuns(r *http.Request) (any, error) {
	q := r.URL.Query()
	p := runsPage{Workflow: q.Get("workflow"), State: q.Get("state"), States: runStates}
	if p.State != "" && !slices.Contains(runStates, p.State) {
		return nil, errorf(http.StatusBadRequest, "unknown run state %q", p.State)
	}
	before, err := queryInt(r, "before_id", 0, 1, 1<<62)
	if err != nil {
		return nil, err
	}
	const limit = 100
	err = s.tx(r.Context(), func(q *db.Queries) (err error) {
		p.Runs, err = workflow.ListRuns(r.Context(), q, workflow.ListParams{Workflow: p.Workflow, State: p.State, BeforeID: before, Limit: limit})
		return err
	})
	if len(p.Runs) == limit {
		v := url.Values{"workflow": {p.Workflow}, "state": {p.State}, "before_id": {strconv.FormatInt(p.Runs[limit-1].ID, 10)}}
		p.Next = v.Encode()
	}
	return p, err
}

// dagNode is a step placed on the drawing: its column is its depth (the
// longest path from a step without dependencies), its row its place there.
type dagNode struct {
	Name, Label, State string
	X, Y               int
}

type dagEdge struct{ X1, Y1, X2, Y2, MidX int }

type stepBar struct {
	Name, State, Span                      string
	WaitLeft, WaitWidth, RunLeft, RunWidth float64
}

type runPage struct {
	Run           workflow.Run
	Nodes         []dagNode
	Edges         []dagEdge
	Width, Height int
	TooLarge      bool
	Bars          []stepBar
}

// DAG drawing: a box per step, columns by depth.
const (
	dagBoxW, dagBoxH = 150, 30
	dagColW, dagRowH = 190, 44
	dagPad           = 16
	dagMaxSteps      = 400 // larger runs get the table and the chart only
)

func (s *Server) uiRun(r *http.Request) (any, error) {
	id, err := pathID(r)
	if err != nil {
		return nil, err
	}
	var p runPage
	var edges []db.UIRunEdgesRow
	var starts []db.UIRunStepStartsRow
	err = s.tx(r.Context(), func(q *db.Queries) (err error) {
		if p.Run, err = workflow.GetRun(r.Context(), q, id); err != nil {
			return err
		}
		if edges, err = q.UIRunEdges(r.Context(), id); err != nil {
			return err
		}
		starts, err = q.UIRunStepStarts(r.Context(), id)
		return err
	})
	if errors.Is(err, workflow.ErrNotFound) {
		return nil, errorf(http.StatusNotFound, "run %d not found", id)
	}
	if err != nil {
		return nil, err
	}
	if len(p.Run.Steps) > dagMaxSteps {
		p.TooLarge = true
	} else {
		p.Nodes, p.Edges, p.Width, p.Height = layoutDAG(p.Run.Steps, edges)
	}
	started := make(map[string]time.Time, len(starts))
	for _, st := range starts {
		if st.StartedAt != nil {
			started[st.Name] = *st.StartedAt
		}
	}
	p.Bars = stepBars(p.Run.Steps, started, time.Now())
	return p, nil
}

// layoutDAG places each step in the column of its depth (Kahn's order over the
// edges) and draws each edge from the right of its source to the left of its
// target.
func layoutDAG(steps []workflow.RunStep, edges []db.UIRunEdgesRow) ([]dagNode, []dagEdge, int, int) {
	index := make(map[string]int, len(steps))
	for i, st := range steps {
		index[st.Name] = i
	}
	succ := make([][]int, len(steps))
	indeg := make([]int, len(steps))
	for _, e := range edges {
		from, ok1 := index[e.FromStep]
		to, ok2 := index[e.ToStep]
		if ok1 && ok2 {
			succ[from] = append(succ[from], to)
			indeg[to]++
		}
	}
	depth := make([]int, len(steps))
	queue := make([]int, 0, len(steps))
	for i := range steps {
		if indeg[i] == 0 {
			queue = append(queue, i)
		}
	}
	for len(queue) > 0 {
		i := queue[0]
		queue = queue[1:]
		for _, j := range succ[i] {
			depth[j] = max(depth[j], depth[i]+1)
			if indeg[j]--; indeg[j] == 0 {
				queue = append(queue, j)
			}
		}
	}
	rows := map[int]int{}
	nodes := make([]dagNode, len(steps))
	width, height := 0, 0
	for i, st := range steps { // steps come in definition order: rows keep it
		x := dagPad + depth[i]*dagColW
		y := dagPad + rows[depth[i]]*dagRowH
		rows[depth[i]]++
		label := st.Name
		if len(label) > 20 {
			label = label[:19] + "…"
		}
		nodes[i] = dagNode{Name: st.Name, Label: label, State: st.State, X: x, Y: y}
		width, height = max(width, x+dagBoxW+dagPad), max(height, y+dagBoxH+dagPad)
	}
	var out []dagEdge
	for from, tos := range succ {
		for _, to := range tos {
			a, b := nodes[from], nodes[to]
			x1, y1, x2, y2 := a.X+dagBoxW, a.Y+dagBoxH/2, b.X, b.Y+dagBoxH/2
			out = append(out, dagEdge{X1: x1, Y1: y1, X2: x2, Y2: y2, MidX: (x1 + x2) / 2})
		}
	}
	return nodes, out, width, height
}

// stepBars lays the steps on one time axis, from the first ready to the last
// finish (or now), in percent: waiting (ready → started) and running.
func stepBars(steps []workflow.RunStep, started map[string]time.Time, now time.Time) []stepBar {
	var t0, t1 time.Time
	for _, st := range steps {
		if st.ReadyAt == nil {
			continue
		}
		end := now
		if st.FinishedAt != nil {
			end = *st.FinishedAt
		}
		if t0.IsZero() || st.ReadyAt.Before(t0) {
			t0 = *st.ReadyAt
		}
		if end.After(t1) {
			t1 = end
		}
	}
	total := t1.Sub(t0)
	if total <= 0 {
		total = time.Millisecond
	}
	pct := func(d time.Duration) float64 { return float64(max(d, 0)) * 100 / float64(total) }
	var out []stepBar
	for _, st := range steps {
		if st.ReadyAt == nil {
			continue
		}
		end := now
		if st.FinishedAt != nil {
			end = *st.FinishedAt
		}
		start, ok := started[st.Name]
		if !ok || start.After(end) {
			start = end // never started (skipped, canceled while queued)
		}
		out = append(out, stepBar{Name: st.Name, State: st.State, Span: end.Sub(*st.ReadyAt).Round(time.Millisecond).String(),
			WaitLeft: pct(st.ReadyAt.Sub(t0)), WaitWidth: pct(start.Sub(*st.ReadyAt)),
			RunLeft: pct(start.Sub(t0)), RunWidth: pct(end.Sub(start))})
	}
	return out
}

func (s *Server) uiSchedules(r *http.Request) (any, error) {
	var ss []schedule.Schedule
	err := s.tx(r.Context(), func(q *db.Queries) (err error) {
		ss, err = schedule.List(r.Context(), q, r.URL.Query().Get("workflow"), 1000)
		return err
	})
	return ss, err
}

type schedulePage struct {
	Schedule schedule.Schedule
	Next     []schedule.PreviewItem
	Recent   []db.UIScheduleRecentFiresRow
}

func (s *Server) uiSchedule(r *http.Request) (any, error) {
	name := r.PathValue("name")
	var p schedulePage
	err := s.tx(r.Context(), func(q *db.Queries) (err error) {
		if p.Schedule, err = schedule.Get(r.Context(), q, name); err != nil {
			return err
		}
		if p.Next, err = schedule.Preview(r.Context(), q, name, 10, nil); err != nil {
			return err
		}
		p.Recent, err = q.UIScheduleRecentFires(r.Context(), db.UIScheduleRecentFiresParams{ScheduleID: &p.Schedule.ID, MaxRows: 20})
		return err
	})
	if errors.Is(err, schedule.ErrNotFound) {
		return nil, errorf(http.StatusNotFound, "schedule %q not found", name)
	}
	return p, err
}
