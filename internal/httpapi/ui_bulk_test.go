package httpapi

import (
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"strings"
	"testing"

	"github.com/baton-scheduler/baton/batontest"
)

// Bulk actions of the status page: a filter's tasks are canceled after a
// confirmation page that shows the count; a read token, a missing confirmation,
// a cross-site post and a filter-less action are refused and change nothing;
// the change is audited.
func TestStatusPageBulkCancel(t *testing.T) {
	t.Parallel()
	a := newAPI(t)
	for range 3 {
		batontest.NewTask(t, a.pool, &batontest.TaskOpts{Group: batontest.Ptr("billing"), Kind: batontest.Ptr("invoice.send")})
	}
	other := batontest.NewTask(t, a.pool, &batontest.TaskOpts{Group: batontest.Ptr("email"), Kind: batontest.Ptr("mail.send")})
	signIn := func(token string) *http.Client {
		jar, _ := cookiejar.New(nil)
		c := &http.Client{Jar: jar}
		resp, err := c.PostForm(a.url+"/ui/login", url.Values{"token": {token}})
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return c
	}
	do := func(c *http.Client, req *http.Request, status int, want ...string) {
		t.Helper()
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != status {
			t.Fatalf("%s %s: %d, want %d\n%s", req.Method, req.URL, resp.StatusCode, status, b)
		}
		for _, w := range want {
			if !strings.Contains(string(b), w) {
				t.Fatalf("%s %s: page lacks %q:\n%s", req.Method, req.URL, w, b)
			}
		}
	}
	get := func(c *http.Client, path string, status int, want ...string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, a.url+path, nil)
		do(c, req, status, want...)
	}
	post := func(c *http.Client, form url.Values, site string, status int, want ...string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, a.url+"/ui/tasks/bulk", strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		if site != "" {
			req.Header.Set("Sec-Fetch-Site", site)
		}
		do(c, req, status, want...)
	}
	queued := func() int64 {
		return batontest.Int64(t, a.pool, `SELECT count(*) FROM tasks WHERE state = 'queued'`)
	}
	form := url.Values{"action": {"cancel"}, "group": {"billing"}, "confirm": {"cancel"}}

	reader := signIn(a.read)
	get(reader, "/ui/tasks?group=billing", 200, `id="bulk-cancel"`, "/ui/tasks/bulk?action=cancel&state=&group=billing")
	get(reader, "/ui/tasks", 200) // no filter: no bulk links
	get(reader, "/ui/tasks/bulk?action=cancel&group=billing", 200, `<b id="bulk-count">3</b>`, "of group <b>billing</b>", "yes, cancel 3 tasks")
	get(reader, "/ui/tasks/bulk?action=cancel", 400, "needs a filter")
	get(reader, "/ui/tasks/bulk?action=explode&group=billing", 400, "unknown bulk action")
	get(reader, "/ui/tasks/bulk?action=retry&state=running&group=billing", 200, "retry applies to tasks in state")
	post(reader, form, "same-origin", 403, "needs operate", "sign in with an operate token")

	operator := signIn(a.operate)
	post(operator, url.Values{"action": {"cancel"}, "group": {"billing"}}, "same-origin", 400, "was not confirmed")
	post(operator, form, "cross-site", 403, "must come from the status page")
	post(operator, url.Values{"action": {"cancel"}, "confirm": {"cancel"}}, "same-origin", 400, "needs a filter")
	if n := queued(); n != 4 {
		t.Fatalf("refused bulk posts changed tasks: %d queued, want 4", n)
	}
	post(operator, form, "same-origin", 200, `Canceled <b>3</b> of the 3 tasks`)
	if n := batontest.Int64(t, a.pool, `SELECT count(*) FROM tasks WHERE group_name = 'billing' AND state = 'canceled'
		AND last_error LIKE '%the status page by token:operator%'`); n != 3 {
		t.Fatalf("%d billing tasks canceled through the page, want 3", n)
	}
	if n := batontest.Int64(t, a.pool, `SELECT count(*) FROM tasks WHERE id = $1 AND state = 'queued'`, other.ID); n != 1 {
		t.Fatal("a task outside the filter was changed")
	}
	if n := batontest.Int64(t, a.pool, `SELECT count(*) FROM audit_log WHERE action = 'task.cancel' AND target = 'bulk'
		AND actor = 'token:operator' AND (detail->>'changed')::int = 3`); n != 1 {
		t.Fatal("the bulk cancel is not in the audit log")
	}
	// Retry them back, confirmed with the count of the retryable ones.
	get(operator, "/ui/tasks/bulk?action=retry&group=billing", 200, `<b id="bulk-count">3</b>`)
	post(operator, url.Values{"action": {"retry"}, "group": {"billing"}, "confirm": {"retry"}}, "", 200, "Queued again <b>3</b>")
	if n := queued(); n != 4 {
		t.Fatalf("after the bulk retry %d queued, want 4", n)
	}
}
