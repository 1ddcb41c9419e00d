package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/baton-scheduler/baton/batontest"
	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/apimodel"
)

var srv *batontest.Server

func TestMain(m *testing.M) {
	os.Exit(batontest.MainNoLeaks(m, func(s *batontest.Server) { srv = s }))
}

// loadDoc loads and validates docs/openapi.yaml.
func loadDoc(t *testing.T) (*openapi3.T, routers.Router) {
	t.Helper()
	doc, err := openapi3.NewLoader().LoadFromFile("../../docs/openapi.yaml")
	if err != nil {
		t.Fatalf("load openapi.yaml: %v", err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		t.Fatalf("openapi.yaml is not a valid OpenAPI document: %v", err)
	}
	router, err := legacy.NewRouter(doc)
	if err != nil {
		t.Fatal(err)
	}
	return doc, router
}

// api is a server on a fresh database with three tokens.
type api struct {
	t                      *testing.T
	pool                   *pgxpool.Pool
	url                    string
	router                 routers.Router
	read, operate, revoked string
	seen                   map[string]bool // "METHOD path status" answered and validated
	srv                    *Server
}

func newAPI(t *testing.T) *api {
	t.Helper()
	pool, _ := srv.NewPool(t)
	_, router := loadDoc(t)
	s, err := New(Config{Pool: pool, Metrics: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprintln(w, "up 1")
	})})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s)
	t.Cleanup(s.Close)
	t.Cleanup(ts.Close)
	a := &api{t: t, pool: pool, url: ts.URL, router: router, seen: map[string]bool{}, srv: s}
	q := db.New(pool)
	mk := func(name, scope string) string {
		tok, hash, err := NewToken()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := q.TokenCreate(context.Background(), db.TokenCreateParams{Name: name, Scope: scope, TokenSha256: hash}); err != nil {
			t.Fatal(err)
		}
		return tok
	}
	a.read, a.operate, a.revoked = mk("reader", ScopeRead), mk("operator", ScopeOperate), mk("old", ScopeOperate)
	if _, err := pool.Exec(context.Background(), `UPDATE api_tokens SET revoked_at = now() WHERE name = 'old'`); err != nil {
		t.Fatal(err)
	}
	return a
}

// do sends a request and checks its response against the OpenAPI document.
func (a *api) do(method, path, token string, body any) (int, []byte) {
	a.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		j, _ := json.Marshal(b)
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, a.url+path, rd)
	if err != nil {
		a.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		a.t.Fatal(err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	route, params, err := a.router.FindRoute(req)
	if err != nil {
		a.t.Fatalf("%s %s: not in openapi.yaml: %v", method, path, err)
	}
	in := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route},
		Status:                 resp.StatusCode, Header: resp.Header, Body: io.NopCloser(bytes.NewReader(out)),
		Options: &openapi3filter.Options{IncludeResponseStatus: true},
	}
	if err := openapi3filter.ValidateResponse(context.Background(), in); err != nil {
		a.t.Errorf("%s %s -> %d %s: response does not match openapi.yaml: %v", method, path, resp.StatusCode, out, err)
	}
	a.seen[fmt.Sprintf("%s %s %d", method, route.Path, resp.StatusCode)] = true
	return resp.StatusCode, out
}

// want sends a request, wants status, and decodes the body into v (if not nil).
func (a *api) want(status int, method, path, token string, body, v any) {
	a.t.Helper()
	got, out := a.do(method, path, token, body)
	if got != status {
		a.t.Fatalf("%s %s: %d %s, want %d", method, path, got, out, status)
	}
	if v != nil {
		if err := json.Unmarshal(out, v); err != nil {
			a.t.Fatalf("%s %s: %v in %s", method, path, err, out)
		}
	}
}

// wantErr wants an error status whose message contains msg.
func (a *api) wantErr(status int, msg, method, path, token string, body any) {
	a.t.Helper()
	var e struct{ Error string }
	a.want(status, method, path, token, body, &e)
	if !strings.Contains(e.Error, msg) {
		a.t.Fatalf("%s %s: error %q, want it to say %q", method, path, e.Error, msg)
	}
}

// Every route the router serves is in openapi.yaml, and every operation there is served.
func TestOpenAPIMatchesRoutes(t *testing.T) {
	t.Parallel()
	doc, _ := loadDoc(t)
	pool, _ := srv.NewPool(t)
	s, err := New(Config{Pool: pool, Metrics: http.NotFoundHandler()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var served, documented []string
	for _, r := range s.Routes() {
		served = append(served, r.Method+" "+r.Path)
	}
	for path, item := range doc.Paths.Map() {
		for method := range item.Operations() {
			documented = append(documented, method+" "+path)
		}
	}
	sort.Strings(served)
	sort.Strings(documented)
	if !slices.Equal(served, documented) {
		t.Fatalf("routes and openapi.yaml differ:\nserved:     %v\ndocumented: %v", served, documented)
	}
	// Scopes: GET needs read (except health and metrics), everything else operate.
	for _, r := range s.Routes() {
		want := ScopeOperate
		switch {
		case !strings.HasPrefix(r.Path, "/api/"):
			want = ""
		case r.Method == "GET" && r.Path != "/api/v1/audit":
			want = ScopeRead
		}
		if r.Scope != want {
			t.Errorf("%s %s needs scope %q, want %q", r.Method, r.Path, r.Scope, want)
		}
	}
}

func TestAPI(t *testing.T) {
	t.Parallel()
	a := newAPI(t)
	ctx := context.Background()
	q := db.New(a.pool)

	// Health and metrics take no token.
	a.want(200, "GET", "/livez", "", nil, nil)
	a.want(200, "GET", "/readyz", "", nil, nil)
	a.want(200, "GET", "/metrics", "", nil, nil)

	// Tokens: none, unknown, revoked, wrong scope.
	a.wantErr(401, "missing bearer token", "GET", "/api/v1/tasks", "", nil)
	a.wantErr(401, "unknown or revoked token", "GET", "/api/v1/tasks", "baton_nope", nil)
	a.wantErr(401, "unknown or revoked token", "GET", "/api/v1/tasks", a.revoked, nil)
	a.wantErr(403, "needs operate", "POST", "/api/v1/groups", a.read, GroupRequest{Name: "g"})
	a.wantErr(403, "needs operate", "GET", "/api/v1/audit", a.read, nil)

	// Every API route refuses a request without a token, and every operate
	// route a read token.
	s, _ := New(Config{Pool: a.pool})
	defer s.Close()
	for _, r := range s.Routes() {
		path := strings.NewReplacer("{id}", "1", "{name}", "g").Replace(r.Path)
		if r.Scope == "" {
			continue
		}
		a.wantErr(401, "missing bearer token", r.Method, path, "", nil)
		if r.Scope == ScopeOperate {
			a.wantErr(403, "needs operate", r.Method, path, a.read, nil)
		}
		if strings.Contains(r.Path, "{id}") {
			a.wantErr(400, "not a positive integer", r.Method, strings.Replace(r.Path, "{id}", "x", 1), a.operate, nil)
		}
	}

	// Groups.
	a.want(201, "POST", "/api/v1/groups", a.operate, GroupRequest{Name: "g", Description: "demo"}, nil)
	a.wantErr(409, `group "g" exists`, "POST", "/api/v1/groups", a.operate, GroupRequest{Name: "g"})
	a.wantErr(400, "must be 1-63", "POST", "/api/v1/groups", a.operate, GroupRequest{Name: "no spaces"})
	a.wantErr(400, "unknown field", "POST", "/api/v1/groups", a.operate, `{"name":"h","colour":"red"}`)
	a.wantErr(400, "request body is empty", "POST", "/api/v1/groups", a.operate, "")
	a.want(200, "GET", "/api/v1/groups", a.read, nil, nil)
	a.want(200, "GET", "/api/v1/groups/g", a.read, nil, nil)
	a.wantErr(404, `group "nope" not found`, "GET", "/api/v1/groups/nope", a.read, nil)

	// Submit.
	var task struct {
		ID    int64
		State string
	}
	a.want(201, "POST", "/api/v1/tasks", a.operate, SubmitRequest{Group: "g", Kind: "mail.send", Payload: json.RawMessage(`{"to":"x"}`), Priority: 3}, &task)
	if task.ID == 0 || task.State != "queued" {
		t.Fatalf("submitted %+v", task)
	}
	a.wantErr(422, `unknown worker group "nope"`, "POST", "/api/v1/tasks", a.operate, SubmitRequest{Group: "nope", Kind: "k"})
	a.wantErr(400, "kind", "POST", "/api/v1/tasks", a.operate, SubmitRequest{Group: "g", Kind: "bad kind"})
	a.wantErr(400, "request body: invalid character", "POST", "/api/v1/tasks", a.operate, `{"group":"g","kind":"k","payload":{x}`)
	a.wantErr(400, "data after the JSON object", "POST", "/api/v1/tasks", a.operate, `{"group":"g","kind":"k"} {}`)
	a.wantErr(400, "timeout_ms", "POST", "/api/v1/tasks", a.operate, SubmitRequest{Group: "g", Kind: "k", TimeoutMs: -1})
	big := `{"group":"g","kind":"k","payload":"` + strings.Repeat("a", MaxBodyBytesDefault) + `"}`
	a.wantErr(413, "larger than the limit", "POST", "/api/v1/tasks", a.operate, big)
	for range 4 {
		a.want(201, "POST", "/api/v1/tasks", a.operate, SubmitRequest{Group: "g", Kind: "k"}, nil)
	}

	// List with filters and keyset paging: 5 tasks in pages of 2.
	var ids []int64
	path := "/api/v1/tasks?group=g&limit=2"
	for pages := 0; ; pages++ {
		var page struct {
			Tasks        []struct{ ID int64 }
			NextBeforeID *int64 `json:"next_before_id"`
		}
		a.want(200, "GET", path, a.read, nil, &page)
		for _, tk := range page.Tasks {
			ids = append(ids, tk.ID)
		}
		if page.NextBeforeID == nil || pages > 5 {
			break
		}
		path = fmt.Sprintf("/api/v1/tasks?group=g&limit=2&before_id=%d", *page.NextBeforeID)
	}
	if len(ids) != 5 || !slices.IsSortedFunc(ids, func(x, y int64) int { return int(y - x) }) {
		t.Fatalf("paged ids %v, want 5 newest first", ids)
	}
	var kinds struct{ Tasks []struct{ Kind string } }
	a.want(200, "GET", "/api/v1/tasks?kind=mail.send&state=queued", a.read, nil, &kinds)
	if len(kinds.Tasks) != 1 {
		t.Fatalf("filter by kind: %v", kinds)
	}
	a.wantErr(400, `unknown state "bogus"`, "GET", "/api/v1/tasks?state=bogus", a.read, nil)

	// A task submitted with a future run_at is scheduled; tags are stored,
	// returned and filtered on (every tag given).
	a.want(201, "POST", "/api/v1/groups", a.operate, GroupRequest{Name: "later"}, nil)
	runAt := apimodel.At(time.Now().Add(time.Hour))
	var sched struct {
		ID    int64
		State string
		Tags  []string
	}
	a.want(201, "POST", "/api/v1/tasks", a.operate, SubmitRequest{Group: "later", Kind: "k", Tags: []string{"customer=acme", "invoice"}, RunAt: &runAt}, &sched)
	if sched.State != "scheduled" || !slices.Equal(sched.Tags, []string{"customer=acme", "invoice"}) {
		t.Fatalf("submitted with run_at and tags: %+v", sched)
	}
	for q, want := range map[string]int{"tag=customer%3Dacme&tag=invoice": 1, "tag=invoice": 1, "tag=customer%3Dacme&tag=other": 0, "state=scheduled": 1, "group=later&state=queued": 0} {
		var page struct{ Tasks []struct{ ID int64 } }
		a.want(200, "GET", "/api/v1/tasks?"+q, a.read, nil, &page)
		if len(page.Tasks) != want || (want == 1 && page.Tasks[0].ID != sched.ID) {
			t.Fatalf("GET /api/v1/tasks?%s: %+v, want %d (task %d)", q, page.Tasks, want, sched.ID)
		}
	}
	var untagged struct{ Tags []string }
	a.want(200, "GET", fmt.Sprintf("/api/v1/tasks/%d", task.ID), a.read, nil, &struct{ Task any }{&untagged})
	if untagged.Tags == nil || len(untagged.Tags) != 0 {
		t.Fatalf("an untagged task's tags: %#v, want []", untagged.Tags)
	}
	a.wantErr(400, `tag "bad tag"`, "GET", "/api/v1/tasks?tag=bad%20tag", a.read, nil)
	a.wantErr(400, `tag "bad tag"`, "POST", "/api/v1/tasks", a.operate, SubmitRequest{Group: "later", Kind: "k", Tags: []string{"bad tag"}})
	a.wantErr(400, "limit", "GET", "/api/v1/tasks?limit=0", a.read, nil)

	// Get, cancel, retry one task.
	a.want(200, "GET", fmt.Sprintf("/api/v1/tasks/%d", task.ID), a.read, nil, nil)
	a.wantErr(404, "task 999999 not found", "GET", "/api/v1/tasks/999999", a.read, nil)
	a.wantErr(400, "not a positive integer", "GET", "/api/v1/tasks/abc", a.read, nil)
	a.want(200, "POST", fmt.Sprintf("/api/v1/tasks/%d/cancel", task.ID), a.operate, nil, &task)
	if task.State != "canceled" {
		t.Fatalf("canceled task is %s", task.State)
	}
	a.wantErr(409, "is already canceled", "POST", fmt.Sprintf("/api/v1/tasks/%d/cancel", task.ID), a.operate, nil)
	a.wantErr(404, "not found", "POST", "/api/v1/tasks/999999/cancel", a.operate, nil)
	a.want(200, "POST", fmt.Sprintf("/api/v1/tasks/%d/retry", task.ID), a.operate, nil, &task)
	if task.State != "queued" {
		t.Fatalf("retried task is %s", task.State)
	}
	a.wantErr(409, "is queued: only failed, timed_out or canceled", "POST", fmt.Sprintf("/api/v1/tasks/%d/retry", task.ID), a.operate, nil)
	a.wantErr(404, "not found", "POST", "/api/v1/tasks/999999/retry", a.operate, nil)

	// Bulk: a dry run counts and changes nothing; then by filter; then retry by ids.
	var res struct {
		Matched, Changed int
		IDs              []int64
	}
	a.want(200, "POST", "/api/v1/tasks/cancel", a.operate, BulkRequest{Filter: &BulkFilter{Group: "g"}, DryRun: true}, &res)
	if res.Matched != 5 || res.Changed != 0 {
		t.Fatalf("dry run: %+v", res)
	}
	var queued int
	if err := a.pool.QueryRow(ctx, `SELECT count(*) FROM tasks WHERE state = 'queued'`).Scan(&queued); err != nil || queued != 5 {
		t.Fatalf("a dry run changed tasks: %d queued, %v", queued, err)
	}
	a.want(200, "POST", "/api/v1/tasks/cancel", a.operate, BulkRequest{Filter: &BulkFilter{Group: "g", Kind: "k"}}, &res)
	if res.Matched != 4 || res.Changed != 4 {
		t.Fatalf("bulk cancel by filter: %+v", res)
	}
	a.want(200, "POST", "/api/v1/tasks/retry", a.operate, BulkRequest{IDs: res.IDs[:2], DryRun: true}, &res)
	if res.Matched != 2 || res.Changed != 0 {
		t.Fatalf("bulk retry dry run: %+v", res)
	}
	a.want(200, "POST", "/api/v1/tasks/retry", a.operate, BulkRequest{IDs: res.IDs}, &res)
	if res.Changed != 2 {
		t.Fatalf("bulk retry by ids: %+v", res)
	}
	a.wantErr(400, "give either ids or filter", "POST", "/api/v1/tasks/cancel", a.operate, BulkRequest{})
	a.wantErr(400, "give either ids or filter", "POST", "/api/v1/tasks/retry", a.operate, BulkRequest{IDs: []int64{1}, Filter: &BulkFilter{}})
	a.wantErr(400, "cancel applies to tasks in state", "POST", "/api/v1/tasks/cancel", a.operate, BulkRequest{Filter: &BulkFilter{State: "succeeded"}})

	// Pause: the group's workers claim nothing until it is resumed.
	session := batontest.NewWorkerSession(t, a.pool, &batontest.WorkerSessionOpts{Group: batontest.Ptr("g")})
	var g struct{ Paused bool }
	a.want(200, "POST", "/api/v1/groups/g/pause", a.operate, nil, &g)
	if !g.Paused {
		t.Fatal("pause: group not paused")
	}
	claimed, err := q.TaskClaimNext(ctx, db.TaskClaimNextParams{GroupName: "g", SessionID: session, MaxTasks: 10})
	if err != nil || len(claimed) != 0 {
		t.Fatalf("a paused group's worker claimed %d tasks (%v)", len(claimed), err)
	}
	a.want(200, "POST", "/api/v1/groups/g/resume", a.operate, nil, &g)
	claimed, err = q.TaskClaimNext(ctx, db.TaskClaimNextParams{GroupName: "g", SessionID: session, MaxTasks: 1})
	if err != nil || len(claimed) != 1 || g.Paused {
		t.Fatalf("after resume: claimed %d (%v), paused %v", len(claimed), err, g.Paused)
	}
	a.wantErr(404, "not found", "POST", "/api/v1/groups/nope/pause", a.operate, nil)
	a.wantErr(404, "not found", "POST", "/api/v1/groups/nope/resume", a.operate, nil)

	// Workers: drain an alive session once.
	var w struct{ State string }
	a.want(200, "POST", fmt.Sprintf("/api/v1/workers/%d/drain", session), a.operate, nil, &w)
	if w.State != "draining" {
		t.Fatalf("drained worker is %s", w.State)
	}
	a.wantErr(409, "is draining: only an alive session", "POST", fmt.Sprintf("/api/v1/workers/%d/drain", session), a.operate, nil)
	a.wantErr(404, "not found", "POST", "/api/v1/workers/999999/drain", a.operate, nil)
	a.wantErr(400, "not a positive integer", "POST", "/api/v1/workers/0/drain", a.operate, nil)
	a.want(200, "GET", "/api/v1/workers?all=true", a.read, nil, nil)
	a.wantErr(400, "want true or false", "GET", "/api/v1/workers?all=maybe", a.read, nil)

	// Masters and failovers.
	if _, err := q.MasterSessionRegister(ctx, db.MasterSessionRegisterParams{Name: "m1"}); err != nil {
		t.Fatal(err)
	}
	var ms struct{ Masters []struct{ Name string } }
	a.want(200, "GET", "/api/v1/masters", a.read, nil, &ms)
	if len(ms.Masters) != 1 || ms.Masters[0].Name != "m1" {
		t.Fatalf("masters %+v", ms)
	}
	a.wantErr(400, "want true or false", "GET", "/api/v1/masters?all=x", a.read, nil)
	a.want(200, "GET", "/api/v1/failovers", a.read, nil, nil)
	a.wantErr(400, "use worker or master", "GET", "/api/v1/failovers?kind=x", a.read, nil)

	// Audit: every change that succeeded, none that failed, with the token's name.
	var audit struct {
		Entries []struct {
			Action, Actor string
			TokenID       *int64 `json:"token_id"`
		}
	}
	a.want(200, "GET", "/api/v1/audit?limit=100", a.operate, nil, &audit)
	var actions []string
	for _, e := range audit.Entries {
		actions = append(actions, e.Action)
		if e.Actor != "token:operator" || e.TokenID == nil {
			t.Errorf("audit entry %+v: want actor token:operator", e)
		}
	}
	slices.Reverse(actions)
	want := []string{"group.create", "task.submit", "task.submit", "task.submit", "task.submit", "task.submit",
		"group.create", "task.submit", // the scheduled, tagged task
		"task.cancel", "task.retry", "task.cancel", "task.retry", "group.pause", "group.resume", "worker.drain"}
	if !slices.Equal(actions, want) {
		t.Fatalf("audit log:\n got %v\nwant %v", actions, want)
	}
	a.wantErr(400, "limit", "GET", "/api/v1/audit?limit=x", a.operate, nil)

	workflowAPI(t, a)

	// Readiness follows the schema version.
	if _, err := a.pool.Exec(ctx, `INSERT INTO goose_db_version (version_id, is_applied) VALUES (99999, true)`); err != nil {
		t.Fatal(err)
	}
	a.wantErr(503, "this build needs", "GET", "/readyz", "", nil)

	// Every documented response code was answered and validated at least once,
	// except the 5xx ones and these.
	doc, _ := loadDoc(t)
	for path, item := range doc.Paths.Map() {
		for method, op := range item.Operations() {
			for code := range op.Responses.Map() {
				if key := method + " " + path + " " + code; !a.seen[key] {
					t.Errorf("not exercised: %s", key)
				}
			}
		}
	}
}
