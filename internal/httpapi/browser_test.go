package httpapi

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	"github.com/baton-scheduler/baton/batontest"
)

// The status page in headless Chromium (Debian's chromium; .ci/run installs
// it): sign in, every page loads without a console error or exception, a task
// submitted through the API appears in the task list and its detail, a failover
// appears on the timeline, and an operator cancels the task through its
// confirmation page. Screenshots go to $BATON_SCREENSHOTS or the test's
// temporary directory.
func TestStatusPagesInChromium(t *testing.T) {
	t.Parallel()
	browser := ""
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			browser = p
			break
		}
	}
	if browser == "" {
		if batontest.InCI() {
			t.Fatal("chromium not found: apt-get install chromium")
		}
		t.Skip("chromium not found (apt-get install chromium)")
	}
	a := newAPI(t)
	dir := os.Getenv("BATON_SCREENSHOTS")
	if dir == "" {
		dir = t.TempDir()
	}
	a.want(201, "POST", "/api/v1/groups", a.operate, GroupRequest{Name: "billing"}, nil)
	var task struct{ ID int64 }
	a.want(201, "POST", "/api/v1/tasks", a.operate, SubmitRequest{Group: "billing", Kind: "invoice.send"}, &task)
	session := batontest.NewWorkerSession(t, a.pool, &batontest.WorkerSessionOpts{Group: batontest.Ptr("billing"), State: batontest.Ptr("dead")})
	if _, err := a.pool.Exec(context.Background(), `INSERT INTO failover_events (kind, session_id, group_name, deadline, finished_at, tasks_reassigned, passes)
		VALUES ('worker', $1, 'billing', now(), now(), 2, 1)`, session); err != nil {
		t.Fatal(err)
	}

	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(browser), chromedp.NoSandbox,
		chromedp.WindowSize(1280, 900))
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelA()
	ctx, cancel := chromedp.NewContext(actx)
	defer cancel()
	ctx, cancelT := context.WithTimeout(ctx, 4*time.Minute)
	defer cancelT()
	var mu sync.Mutex
	var problems []string
	if err := chromedp.Listen(ctx, func(ev any) {
		mu.Lock()
		defer mu.Unlock()
		switch e := ev.(type) {
		case *runtime.EventConsoleAPICalled:
			if e.Type == runtime.ConsoleAPICalledTypeError || e.Type == runtime.ConsoleAPICalledTypeWarning {
				problems = append(problems, fmt.Sprintf("console %s", e.Type))
			}
		case *runtime.EventExceptionThrown:
			problems = append(problems, "exception: "+e.ExceptionDetails.Text)
		}
	}); err != nil {
		t.Fatalf("chromium: %v", err)
	}
	// visit loads path (or clicks sel when path is ""), waits for sel, screenshots
	// the page and returns main's text.
	visit := func(name, path, wait string) string {
		t.Helper()
		defer func(start time.Time) { t.Logf("%s: %s", name, time.Since(start).Round(time.Millisecond)) }(time.Now())
		if path != "" {
			if err := chromedp.Do(ctx, chromedp.Navigate(a.url+path)); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
		}
		if err := chromedp.Do(ctx, chromedp.WaitVisible(wait)); err != nil {
			t.Fatalf("%s: wait for %s: %v", name, wait, err)
		}
		png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatalf("%s: screenshot: %v", name, err)
		}
		if err := os.WriteFile(filepath.Join(dir, name+".png"), png, 0o644); err != nil {
			t.Fatal(err)
		}
		text, err := chromedp.Run(ctx, chromedp.Text("main"))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return text
	}
	login := visit("login", "/ui/", `input[name=token]`)
	if err := chromedp.Do(ctx, chromedp.SendKeys(`input[name=token]`, a.read), chromedp.Submit(`input[name=token]`)); err != nil {
		t.Fatalf("sign in: %v", err)
	}
	overview := visit("overview", "", `#groups`)
	workers := visit("workers", "/ui/workers", `#workers`)
	failovers := visit("failovers", "/ui/failovers", `#timeline`)
	tasks := visit("tasks", "/ui/tasks?group=billing", `#tasks`)
	if err := chromedp.Do(ctx, chromedp.Click(fmt.Sprintf(`a[href="/ui/tasks/%d"]`, task.ID))); err != nil {
		t.Fatalf("open task: %v", err)
	}
	detail := visit("task", "", `#task`)
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
	visit("login-operate", "/ui/login", `input[name=token]`)
	if err := chromedp.Do(ctx, chromedp.SendKeys(`input[name=token]`, a.operate), chromedp.Submit(`input[name=token]`)); err != nil {
		t.Fatalf("sign in as operator: %v", err)
	}
	visit("overview-operate", "", `#groups`)
	visit("task-before-cancel", fmt.Sprintf("/ui/tasks/%d", task.ID), `#cancel`)
	if err := chromedp.Do(ctx, chromedp.Click(`#cancel`)); err != nil {
		t.Fatalf("click cancel: %v", err)
	}
	question := visit("cancel-confirm", "", `#cancel-question`)
	var before string
	if err := a.pool.QueryRow(context.Background(), "SELECT state FROM tasks WHERE id = $1", task.ID).Scan(&before); err != nil || before != "queued" {
		t.Fatalf("before the confirmation the task is %q (%v), want queued", before, err)
	}
	if err := chromedp.Do(ctx, chromedp.Click(`#cancel-confirm`)); err != nil {
		t.Fatalf("confirm cancel: %v", err)
	}
	canceled := visit("task-canceled", "", `#task dd.canceled`)
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
	mu.Lock()
	defer mu.Unlock()
	if len(problems) > 0 {
		t.Errorf("console errors: %v", problems)
	}
	t.Logf("screenshots in %s", dir)
}
