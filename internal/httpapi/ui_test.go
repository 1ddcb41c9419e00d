package httpapi

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"strings"
	"testing"

	"github.com/baton-scheduler/baton/batontest"
)

// The status page over plain HTTP: sign-in with a read token, then every page
// shows the rows it is about. (TestStatusPagesInChromium drives them in a browser.) A task is canceled
// through its confirmation page, with an operate token only.
func TestStatusPages(t *testing.T) {
	t.Parallel()
	a := newAPI(t)
	ctx := context.Background()
	session := batontest.NewWorkerSession(t, a.pool, &batontest.WorkerSessionOpts{Group: batontest.Ptr("billing"), Name: batontest.Ptr("w-billing-1")})
	dead := batontest.NewWorkerSession(t, a.pool, &batontest.WorkerSessionOpts{Group: batontest.Ptr("billing"), State: batontest.Ptr("dead")})
	if _, err := a.pool.Exec(ctx, `INSERT INTO failover_events (kind, session_id, group_name, deadline, finished_at, tasks_reassigned, passes)
		VALUES ('worker', $1, 'billing', now(), now(), 3, 1)`, dead); err != nil {
		t.Fatal(err)
	}
	task := batontest.NewTask(t, a.pool, &batontest.TaskOpts{Group: batontest.Ptr("billing"), Kind: batontest.Ptr("invoice.send"), State: batontest.Ptr("running"), Session: &session})

	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar}
	get := func(path string, status int, want ...string) string {
		t.Helper()
		resp, err := c.Get(a.url + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != status {
			t.Fatalf("GET %s: %d, want %d\n%s", path, resp.StatusCode, status, b)
		}
		for _, w := range want {
			if !strings.Contains(string(b), w) {
				t.Errorf("GET %s: page lacks %q:\n%s", path, w, b)
			}
		}
		return string(b)
	}
	// Not signed in: every page sends to the login form.
	if body := get("/ui/", 200, "needs an API token"); !strings.Contains(body, `action="/ui/login"`) {
		t.Fatal("no login form")
	}
	resp, err := c.PostForm(a.url+"/ui/login", url.Values{"token": {"baton_wrong"}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("login with a wrong token: %d", resp.StatusCode)
	}
	resp, err = c.PostForm(a.url+"/ui/login", url.Values{"token": {a.read}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Request.URL.Path != "/ui/" {
		t.Fatalf("login: %d at %s", resp.StatusCode, resp.Request.URL)
	}
	get("/ui/", 200, "<td><a href=\"/ui/tasks?group=billing\">billing</a>", "<td>1</td>", "ago")
	get("/ui/workers", 200, "w-billing-1", "dead")
	get("/ui/failovers", 200, fmt.Sprintf("worker session %d</b> (group billing)", dead), "3 task(s) moved")
	get("/ui/tasks?group=billing", 200, fmt.Sprintf(`/ui/tasks/%d"`, task.ID), "invoice.send")
	get(fmt.Sprintf("/ui/tasks/%d", task.ID), 200, "#1 submit", "in flight", `class="run in flight"`)
	get("/ui/tasks/999999", 404, "task 999999 not found")
	get("/ui/static/style.css", 200, ".gantt")
	// The overview's counts come from the cache: a new task shows only after a refresh.
	batontest.NewTask(t, a.pool, &batontest.TaskOpts{Group: batontest.Ptr("billing")})
	// The page serves what was cached (and refreshes in the background if stale).
	get("/ui/", 200, "<td>0</td><td>0</td><td>1</td>")
	a.srv.refreshOverview(ctx)
	get("/ui/", 200, "<td>1</td><td>0</td><td>1</td>")

	// Cancel with confirmation: the task page links to a confirmation page,
	// whose form posts the cancel; it needs an operate token.
	taskPath := fmt.Sprintf("/ui/tasks/%d", task.ID)
	get(taskPath, 200, fmt.Sprintf(`href="%s/cancel"`, taskPath))
	get(taskPath+"/cancel", 200, fmt.Sprintf("Cancel task <b>%d</b>", task.ID), `name="confirm" value="`+fmt.Sprint(task.ID)+`"`)
	post := func(path string, form url.Values, header map[string]string, status int, want string) {
		t.Helper()
		req, _ := http.NewRequest("POST", a.url+path, strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		for k, v := range header {
			req.Header.Set(k, v)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != status || !strings.Contains(string(b), want) {
			t.Fatalf("POST %s: %d, want %d with %q:\n%s", path, resp.StatusCode, status, want, b)
		}
	}
	confirm := url.Values{"confirm": {fmt.Sprint(task.ID)}}
	post(taskPath+"/cancel", confirm, nil, 403, "this call needs operate")
	state := func() string {
		var st string
		if err := a.pool.QueryRow(ctx, "SELECT state FROM tasks WHERE id = $1", task.ID).Scan(&st); err != nil {
			t.Fatal(err)
		}
		return st
	}
	if st := state(); st != "running" {
		t.Fatalf("a read token canceled the task: %s", st)
	}
	resp, err = c.PostForm(a.url+"/ui/login", url.Values{"token": {a.operate}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	post(taskPath+"/cancel", url.Values{}, nil, 400, "not confirmed")
	post(taskPath+"/cancel", url.Values{"confirm": {fmt.Sprint(task.ID + 1)}}, nil, 400, "not confirmed") // another task's form
	post(taskPath+"/cancel", confirm, map[string]string{"Sec-Fetch-Site": "cross-site"}, 403, "from the status page itself")
	if st := state(); st != "running" {
		t.Fatalf("an unconfirmed or cross-site post canceled the task: %s", st)
	}
	post(taskPath+"/cancel", confirm, nil, 200, `<dd class="canceled">canceled</dd>`) // 303 to the task page
	if n := batontest.Int64(t, a.pool, "SELECT count(*) FROM audit_log WHERE action = 'task.cancel' AND target = $1 AND actor = 'token:operator'", fmt.Sprint(task.ID)); n != 1 {
		t.Fatalf("audit rows of the cancel: %d", n)
	}
	if body := get(taskPath, 200); strings.Contains(body, "/cancel") {
		t.Error("a canceled task still offers cancel")
	}
	get(taskPath+"/cancel", 200, "is already canceled: there is nothing to cancel")
	post(taskPath+"/cancel", confirm, nil, 409, "is already canceled")
	post("/ui/tasks/999999/cancel", url.Values{"confirm": {"999999"}}, nil, 404, "task 999999 not found")
}
