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
// shows the rows it is about. (A headless-browser test is not written yet.)
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
}
