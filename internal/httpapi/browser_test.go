package httpapi

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/chromedp/chromedp"

	"github.com/baton-scheduler/baton/batontest"
	"github.com/baton-scheduler/baton/internal/browsertest"
)

// The status page in headless Chromium (Debian's chromium; .ci/run installs
// it): sign in, every page loads without a console error or exception, a task
// submitted through the API appears in the task list and its detail, a failover
// appears on the timeline, and an operator cancels the task through its
// confirmation page. Screenshots go to $BATON_SCREENSHOTS or the test's
// temporary directory.
func TestStatusPagesInChromium(t *testing.T) {
	t.Parallel()
	a := newAPI(t)
	b := browsertest.New(t, a.url)
	a.want(201, "POST", "/api/v1/groups", a.operate, GroupRequest{Name: "billing"}, nil)
	var task struct{ ID int64 }
	a.want(201, "POST", "/api/v1/tasks", a.operate, SubmitRequest{Group: "billing", Kind: "invoice.send"}, &task)
	session := batontest.NewWorkerSession(t, a.pool, &batontest.WorkerSessionOpts{Group: batontest.Ptr("billing"), State: batontest.Ptr("dead")})
	if _, err := a.pool.Exec(context.Background(), `INSERT INTO failover_events (kind, session_id, group_name, deadline, finished_at, tasks_reassigned, passes)
		VALUES ('worker', $1, 'billing', now(), now(), 2, 1)`, session); err != nil {
		t.Fatal(err)
	}
	ctx := b.Ctx
	login := b.SignIn(a.read)
	overview := b.Visit("overview", "/ui/", `#groups`)
	workers := b.Visit("workers", "/ui/workers", `#workers`)
	failovers := b.Visit("failovers", "/ui/failovers", `#timeline`)
	tasks := b.Visit("tasks", "/ui/tasks?group=billing", `#tasks`)
	if err := chromedp.Do(ctx, chromedp.Click(fmt.Sprintf(`a[href="/ui/tasks/%d"]`, task.ID))); err != nil {
		t.Fatalf("open task: %v", err)
	}
	detail := b.Visit("task", "", `#task`)
	checks := []struct{ page, text, want string }{
		{"login", login, "needs an API token"},
		{"overview", overview, "billing"},
		{"workers", workers, "dead"},
		{"failovers", failovers, fmt.Sprintf("worker session %d", session)},
		{"tasks", tasks, "invoice.send"},
		{"task", detail, "queued"},
	}
	// Cancel from the page, as an operator: the task's cancel link, the
	// confirmation page, its button; the task page then shows it canceled.
	b.Visit("login-operate", "/ui/login", `input[name=token]`)
	if err := chromedp.Do(ctx, chromedp.SendKeys(`input[name=token]`, a.operate), chromedp.Submit(`input[name=token]`)); err != nil {
		t.Fatalf("sign in as operator: %v", err)
	}
	b.Visit("overview-operate", "", `#groups`)
	b.Visit("task-before-cancel", fmt.Sprintf("/ui/tasks/%d", task.ID), `#cancel`)
	if err := chromedp.Do(ctx, chromedp.Click(`#cancel`)); err != nil {
		t.Fatalf("click cancel: %v", err)
	}
	question := b.Visit("cancel-confirm", "", `#cancel-question`)
	var before string
	if err := a.pool.QueryRow(context.Background(), "SELECT state FROM tasks WHERE id = $1", task.ID).Scan(&before); err != nil || before != "queued" {
		t.Fatalf("before the confirmation the task is %q (%v), want queued", before, err)
	}
	if err := chromedp.Do(ctx, chromedp.Click(`#cancel-confirm`)); err != nil {
		t.Fatalf("confirm cancel: %v", err)
	}
	canceled := b.Visit("task-canceled", "", `#task dd.canceled`)
	var after string
	if err := a.pool.QueryRow(context.Background(), "SELECT state FROM tasks WHERE id = $1", task.ID).Scan(&after); err != nil || after != "canceled" {
		t.Fatalf("after the confirmation the task is %q (%v), want canceled", after, err)
	}
	checks = append(checks,
		struct{ page, text, want string }{"cancel-confirm", question, fmt.Sprintf("Cancel task %d (invoice.send in group billing, now queued)?", task.ID)},
		struct{ page, text, want string }{"task-canceled", canceled, "canceled through the status page by token:operator"})
	for _, c := range checks {
		if !strings.Contains(c.text, c.want) {
			t.Errorf("%s page shows %q, want it to contain %q", c.page, c.text, c.want)
		}
	}
}
