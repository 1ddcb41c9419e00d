package httpapi

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/apimodel"
	"github.com/baton-scheduler/baton/internal/taskops"
)

// The status page: Go templates and embedded CSS, no JavaScript toolchain.
// Pages poll (meta refresh); the overview's counts come from a cache refreshed
// in the background, never from a query per request.

//go:embed ui/*.html ui/static/*
var uiFS embed.FS

var uiTemplates = template.Must(template.New("").ParseFS(uiFS, "ui/*.html"))

// uiCookie holds the page's token (HttpOnly, SameSite=Strict).
const uiCookie = "baton_token"

// OverviewEvery is how often the overview's counts are re-read.
const OverviewEvery = 5 * time.Second

type overviewGroup struct {
	Name                        string
	Paused                      bool
	Queued, Dispatched, Running int64
	Oldest                      string
	Alive, Draining             int64
	Heartbeat                   string
	Stale                       bool
}

type overview struct {
	Groups             []overviewGroup
	Masters, Failovers int64
	Age, Every         string
	at                 time.Time
}

// overviewCache is refreshed by one background goroutine at a time, started by
// a request that finds it older than OverviewEvery; requests never wait for it
// except the very first.
type overviewCache struct {
	mu         sync.Mutex
	data       overview
	refreshing bool
	wg         sync.WaitGroup
	ctx        context.Context
	cancel     context.CancelFunc
}

func (s *Server) uiRoutes() {
	s.cache.ctx, s.cache.cancel = context.WithCancel(context.Background())
	static, _ := fs.Sub(uiFS, "ui/static")
	s.mux.Handle("GET /ui/static/", http.StripPrefix("/ui/static/", http.FileServerFS(static)))
	s.mux.HandleFunc("GET /ui/login", func(w http.ResponseWriter, r *http.Request) { s.render(w, r, "login.html", "sign in", 0, "") })
	s.mux.HandleFunc("POST /ui/login", s.uiLogin)
	s.mux.HandleFunc("GET /ui/{$}", s.page("overview.html", "overview", 5, s.uiOverview))
	s.mux.HandleFunc("GET /ui/workers", s.page("workers.html", "workers", 5, s.uiWorkers))
	s.mux.HandleFunc("GET /ui/failovers", s.page("failovers.html", "failover timeline", 5, s.uiFailovers))
	s.mux.HandleFunc("GET /ui/tasks", s.page("tasks.html", "tasks", 0, s.uiTasks))
	s.mux.HandleFunc("GET /ui/tasks/{id}", s.page("task.html", "task", 5, s.uiTask))
	s.uiBulkRoutes() // before /ui/tasks/{id}: "bulk" is no id
	s.mux.HandleFunc("GET /ui/tasks/{id}/cancel", s.page("cancel.html", "cancel task", 0, s.uiCancelConfirm))
	s.mux.HandleFunc("POST /ui/tasks/{id}/cancel", s.uiCancel)
	s.uiWorkflowRoutes()
	s.mux.HandleFunc("GET /ui/events", s.uiEvents)
	s.mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, s.cfg.BasePath+"/ui/", http.StatusFound)
	})
}

// Close stops the page's background refresh and waits for it.
func (s *Server) Close() {
	s.cache.cancel()
	s.cache.wg.Wait()
	s.live.wg.Wait()
}

// errNotSignedIn: the request carries no status-page cookie.
var errNotSignedIn = errors.New("not signed in")

// cookieAuth authenticates the status page's signed-in token (its cookie) for
// scope, as the API authenticates a bearer token.
func (s *Server) cookieAuth(r *http.Request, scope string) (taskops.Actor, error) {
	c, err := r.Cookie(uiCookie)
	if err != nil {
		return taskops.Actor{}, errNotSignedIn
	}
	r.Header.Set("Authorization", "Bearer "+c.Value)
	return s.authenticate(r, scope)
}

type pageData struct {
	Title, Base, Now string
	Refresh          int
	Data             any
}

func (s *Server) render(w http.ResponseWriter, r *http.Request, name, title string, refresh int, data any) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Content-Security-Policy", "default-src 'self'; style-src 'self' 'unsafe-inline'")
	err := uiTemplates.ExecuteTemplate(w, name, pageData{Title: title, Base: s.cfg.BasePath, Now: time.Now().UTC().Format(time.RFC3339), Refresh: refresh, Data: data})
	if err != nil {
		s.log.Warn("render " + name + ": " + err.Error())
	}
}

// page wraps a page: signed in (a read token in the cookie) or sent to the login form.
func (s *Server) page(name, title string, refresh int, load func(r *http.Request) (any, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if _, err := s.cookieAuth(r, ScopeRead); err != nil {
			http.Redirect(w, r, s.cfg.BasePath+"/ui/login", http.StatusSeeOther)
			return
		}
		data, err := load(r)
		var he *httpError
		if errors.As(err, &he) {
			w.WriteHeader(he.status)
			s.render(w, r, "login.html", title, 0, he.msg)
			return
		}
		if err != nil {
			s.log.Warn("page " + name + ": " + err.Error())
			http.Error(w, "internal error (logged by the server)", http.StatusInternalServerError)
			return
		}
		s.render(w, r, name, title, refresh, data)
	}
}

func (s *Server) uiLogin(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		w.WriteHeader(http.StatusBadRequest)
		s.render(w, r, "login.html", "sign in", 0, "malformed form")
		return
	}
	tok := r.PostForm.Get("token")
	r.Header.Set("Authorization", "Bearer "+tok)
	if _, err := s.authenticate(r, ScopeRead); err != nil {
		w.WriteHeader(http.StatusUnauthorized)
		s.render(w, r, "login.html", "sign in", 0, err.Error())
		return
	}
	http.SetCookie(w, &http.Cookie{Name: uiCookie, Value: tok, Path: s.cfg.BasePath + "/ui/", HttpOnly: true,
		SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil, MaxAge: 12 * 3600})
	http.Redirect(w, r, s.cfg.BasePath+"/ui/", http.StatusSeeOther)
}

func (s *Server) uiOverview(r *http.Request) (any, error) {
	c := &s.cache
	c.mu.Lock()
	data, stale := c.data, time.Since(c.data.at) > OverviewEvery
	first := c.data.at.IsZero()
	if stale && !c.refreshing && !first {
		c.refreshing = true
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			s.refreshOverview(c.ctx)
		}()
	}
	c.mu.Unlock()
	if first { // nothing cached yet: read once, in the request
		c.mu.Lock()
		c.refreshing = true
		c.mu.Unlock()
		s.refreshOverview(r.Context())
		c.mu.Lock()
		data = c.data
		c.mu.Unlock()
	}
	data.Age = time.Since(data.at).Round(time.Second).String()
	data.Every = OverviewEvery.String()
	return data, nil
}

// refreshOverview reads the counts (the index-backed statements of /metrics).
func (s *Server) refreshOverview(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var o overview
	err := s.tx(ctx, func(q *db.Queries) error {
		groups, err := q.GroupList(ctx, db.GroupListParams{WorkerTimeoutMs: s.cfg.WorkerTimeout.Milliseconds()})
		if err != nil {
			return err
		}
		tasks, err := q.MetricsTasksUnfinished(ctx)
		if err != nil {
			return err
		}
		oldest, err := q.MetricsOldestRunnable(ctx)
		if err != nil {
			return err
		}
		workers, err := q.MetricsWorkers(ctx)
		if err != nil {
			return err
		}
		cl, err := q.MetricsCluster(ctx)
		if err != nil {
			return err
		}
		var pgNow time.Time
		if pgNow, err = q.MetricsNow(ctx); err != nil {
			return err
		}
		byGroup := map[string]*overviewGroup{}
		for _, g := range groups {
			o.Groups = append(o.Groups, overviewGroup{Name: g.Name, Paused: g.Paused, Oldest: "-", Heartbeat: "never"})
		}
		for i := range o.Groups {
			byGroup[o.Groups[i].Name] = &o.Groups[i]
		}
		for _, t := range tasks {
			if g := byGroup[t.GroupName]; g != nil {
				switch t.State {
				case "queued":
					g.Queued = t.Tasks
				case "dispatched":
					g.Dispatched = t.Tasks
				case "running":
					g.Running = t.Tasks
				}
			}
		}
		for _, t := range oldest {
			if g := byGroup[t.GroupName]; g != nil && t.AgeSeconds > 0 {
				g.Oldest = (time.Duration(t.AgeSeconds) * time.Second).String()
			}
		}
		for _, wk := range workers {
			if g := byGroup[wk.GroupName]; g != nil {
				g.Alive, g.Draining = wk.Alive, wk.Draining
				if wk.LastHeartbeat > 0 {
					age := pgNow.Sub(time.UnixMilli(int64(wk.LastHeartbeat * 1000))).Round(100 * time.Millisecond)
					g.Heartbeat, g.Stale = age.String()+" ago", age > s.cfg.WorkerTimeout
				}
			}
		}
		o.Masters, o.Failovers = cl.MastersAlive, cl.FailoversUnfinished
		return nil
	})
	c := &s.cache
	c.mu.Lock()
	defer c.mu.Unlock()
	c.refreshing = false
	if err != nil {
		if ctx.Err() == nil {
			s.log.Warn("status page: read overview: " + err.Error())
		}
		return
	}
	o.at = time.Now()
	c.data = o
}

func (s *Server) uiWorkers(r *http.Request) (any, error) {
	var rows []db.WorkerSessionListRow
	err := s.tx(r.Context(), func(q *db.Queries) error {
		var err error
		rows, err = q.WorkerSessionList(r.Context(), db.WorkerSessionListParams{IncludeEnded: true, MaxRows: 200})
		return err
	})
	return apimodel.Workers(rows), err
}

func (s *Server) uiFailovers(r *http.Request) (any, error) {
	var rows []db.FailoverEvent
	err := s.tx(r.Context(), func(q *db.Queries) error {
		var err error
		rows, err = q.FailoverEventList(r.Context(), db.FailoverEventListParams{MaxRows: 200})
		return err
	})
	return apimodel.FailoverEvents(rows), err
}

type tasksPage struct {
	States             []string
	State, Group, Kind string
	Tasks              []apimodel.Task
	Next               string
}

func (s *Server) uiTasks(r *http.Request) (any, error) {
	q := r.URL.Query()
	p := tasksPage{States: taskStates, State: q.Get("state"), Group: q.Get("group"), Kind: q.Get("kind")}
	arg := db.TaskListPageParams{State: nilIfEmpty(p.State), GroupName: nilIfEmpty(p.Group), Kind: nilIfEmpty(p.Kind), MaxRows: 100}
	if b, err := strconv.ParseInt(q.Get("before_id"), 10, 64); err == nil && b > 0 {
		arg.BeforeID = &b
	}
	var rows []db.Task
	err := s.tx(r.Context(), func(qq *db.Queries) error {
		var err error
		rows, err = taskops.ListPage(r.Context(), qq, arg)
		return err
	})
	p.Tasks = apimodel.Tasks(rows)
	if len(rows) == int(arg.MaxRows) {
		v := url.Values{"state": {p.State}, "group": {p.Group}, "kind": {p.Kind}, "before_id": {fmt.Sprint(rows[len(rows)-1].ID)}}
		p.Next = v.Encode()
	}
	return p, err
}

// finished reports whether a task state is terminal (nothing to cancel).
func finished(state string) bool {
	switch state {
	case "succeeded", "failed", "timed_out", "canceled":
		return true
	}
	return false
}

type cancelPage struct {
	Task  apimodel.Task
	Error string
}

// uiCancelConfirm asks before a cancel: the task, what cancel does, and a
// form that posts it (no JavaScript: the confirmation is this page).
func (s *Server) uiCancelConfirm(r *http.Request) (any, error) {
	id, err := pathID(r)
	if err != nil {
		return nil, err
	}
	var t db.Task
	err = s.tx(r.Context(), func(q *db.Queries) error {
		t, err = q.TaskGet(r.Context(), id)
		return err
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, errorf(http.StatusNotFound, "task %d not found", id)
	}
	if err != nil {
		return nil, err
	}
	p := cancelPage{Task: apimodel.TaskFromRow(t)}
	if finished(t.State) {
		p.Error = fmt.Sprintf("task %d is already %s: there is nothing to cancel", id, t.State)
	}
	return p, nil
}

// uiCancel cancels a task from the confirmation form, as the API's POST
// /api/v1/tasks/{id}/cancel does: the signed-in token needs scope operate,
// and the change is audited under its name. A cross-site form is refused
// (the cookie is SameSite=Strict as well). Then back to the task.
func (s *Server) uiCancel(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r)
	if err == nil && r.Header.Get("Sec-Fetch-Site") == "cross-site" {
		err = errorf(http.StatusForbidden, "a cancel must come from the status page itself")
	}
	if err == nil {
		if perr := r.ParseForm(); perr != nil || r.PostForm.Get("confirm") != fmt.Sprint(id) {
			err = errorf(http.StatusBadRequest, "the cancel was not confirmed: use the form of the confirmation page")
		}
	}
	var who taskops.Actor
	if err == nil {
		if who, err = s.cookieAuth(r, ScopeOperate); errors.Is(err, errNotSignedIn) {
			http.Redirect(w, r, s.cfg.BasePath+"/ui/login", http.StatusSeeOther)
			return
		}
	}
	if err == nil {
		_, err = s.cancelOne(r.Context(), id, who, "the status page")
	}
	var he *httpError
	switch {
	case err == nil:
		http.Redirect(w, r, fmt.Sprintf("%s/ui/tasks/%d", s.cfg.BasePath, id), http.StatusSeeOther)
	case errors.As(err, &he):
		p := cancelPage{Task: apimodel.Task{ID: id}, Error: he.msg}
		if he.status == http.StatusForbidden && strings.Contains(he.msg, "scope") {
			p.Error += " (sign in with an operate token: baton token create --scope operate)"
		}
		w.WriteHeader(he.status)
		s.render(w, r, "cancel.html", "cancel task", 0, p)
	default:
		s.log.Warn("status page: cancel: " + err.Error())
		http.Error(w, "internal error (logged by the server)", http.StatusInternalServerError)
	}
}

type attemptBar struct {
	Attempt                                int
	Reason, Outcome, Span                  string
	Worker                                 int64
	WaitLeft, WaitWidth, RunLeft, RunWidth float64
}

type taskPage struct {
	Task       apimodel.Task
	Bars       []attemptBar
	Cancelable bool
}

func (s *Server) uiTask(r *http.Request) (any, error) {
	id, err := pathID(r)
	if err != nil {
		return nil, err
	}
	var t db.Task
	var as []db.TaskAttempt
	err = s.tx(r.Context(), func(q *db.Queries) error {
		var err error
		if t, err = q.TaskGet(r.Context(), id); err != nil {
			return err
		}
		as, err = q.TaskAttemptList(r.Context(), id)
		return err
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, errorf(http.StatusNotFound, "task %d not found", id)
	}
	if err != nil {
		return nil, err
	}
	return taskPage{Task: apimodel.TaskFromRow(t), Bars: bars(as, time.Now()), Cancelable: !finished(t.State)}, nil
}

// bars lays the attempts on one time axis, from the first dispatch to the last
// finish (or now), in percent.
func bars(as []db.TaskAttempt, now time.Time) []attemptBar {
	if len(as) == 0 {
		return nil
	}
	t0, t1 := as[0].DispatchedAt, as[0].DispatchedAt
	end := func(a db.TaskAttempt) time.Time {
		if a.FinishedAt != nil {
			return *a.FinishedAt
		}
		return now
	}
	for _, a := range as {
		t0 = minTime(t0, a.DispatchedAt)
		if e := end(a); e.After(t1) {
			t1 = e
		}
	}
	total := t1.Sub(t0)
	if total <= 0 {
		total = time.Millisecond
	}
	pct := func(d time.Duration) float64 { return float64(d) * 100 / float64(total) }
	out := make([]attemptBar, 0, len(as))
	for _, a := range as {
		start := a.DispatchedAt
		if a.StartedAt != nil {
			start = *a.StartedAt
		}
		outcome := "in flight"
		if a.Outcome != nil {
			outcome = *a.Outcome
		}
		out = append(out, attemptBar{Attempt: int(a.Attempt), Reason: a.Reason, Outcome: outcome, Worker: a.WorkerSessionID,
			WaitLeft: pct(a.DispatchedAt.Sub(t0)), WaitWidth: pct(start.Sub(a.DispatchedAt)),
			RunLeft: pct(start.Sub(t0)), RunWidth: pct(end(a).Sub(start)),
			Span: end(a).Sub(a.DispatchedAt).Round(time.Millisecond).String()})
	}
	return out
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}
