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
	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/schedule"
)

// browser is a headless Chromium signed in to a's status page, recording
// console errors and exceptions.
type browser struct {
	t        *testing.T
	ctx      context.Context
	a        *api
	dir      string
	mu       sync.Mutex
	problems []string
}

func newBrowser(t *testing.T, a *api) *browser {
	t.Helper()
	path := ""
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			path = p
			break
		}
	}
	if path == "" {
		if batontest.InCI() {
			t.Fatal("chromium not found: apt-get install chromium")
		}
		t.Skip("chromium not found (apt-get install chromium)")
	}
	b := &browser{t: t, a: a, dir: os.Getenv("BATON_SCREENSHOTS")}
	if b.dir == "" {
		b.dir = t.TempDir()
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(path), chromedp.NoSandbox, chromedp.WindowSize(1280, 900))
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	ctx, cancelT := context.WithTimeout(ctx, 4*time.Minute)
	t.Cleanup(func() { cancelT(); cancel(); cancelA() })
	b.ctx = ctx
	if err := chromedp.Listen(ctx, func(ev any) {
		b.mu.Lock()
		defer b.mu.Unlock()
		switch e := ev.(type) {
		case *runtime.EventConsoleAPICalled:
			if e.Type == runtime.ConsoleAPICalledTypeError || e.Type == runtime.ConsoleAPICalledTypeWarning {
				b.problems = append(b.problems, fmt.Sprintf("console %s", e.Type))
			}
		case *runtime.EventExceptionThrown:
			b.problems = append(b.problems, "exception: "+e.ExceptionDetails.Text)
		}
	}); err != nil {
		t.Fatalf("chromium: %v", err)
	}
	b.visit("login", "/ui/", `input[name=token]`)
	if err := chromedp.Do(ctx, chromedp.SendKeys(`input[name=token]`, a.read), chromedp.Submit(`input[name=token]`)); err != nil {
		t.Fatalf("sign in: %v", err)
	}
	b.visit("overview", "", `#groups`)
	t.Cleanup(func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		if len(b.problems) > 0 {
			t.Errorf("console errors: %v", b.problems)
		}
		t.Logf("screenshots in %s", b.dir)
	})
	return b
}

// visit loads path (or, with path "", stays on the page a click opened),
// waits for sel, writes a screenshot and returns main's text.
func (b *browser) visit(name, path, sel string) string {
	b.t.Helper()
	if path != "" {
		if err := chromedp.Do(b.ctx, chromedp.Navigate(b.a.url+path)); err != nil {
			b.t.Fatalf("%s: %v", name, err)
		}
	}
	if err := chromedp.Do(b.ctx, chromedp.WaitVisible(sel)); err != nil {
		b.t.Fatalf("%s: wait for %s: %v", name, sel, err)
	}
	png, err := chromedp.Run(b.ctx, chromedp.FullScreenshot(100))
	if err != nil {
		b.t.Fatalf("%s: screenshot: %v", name, err)
	}
	if err := os.WriteFile(filepath.Join(b.dir, name+".png"), png, 0o644); err != nil {
		b.t.Fatal(err)
	}
	text, err := chromedp.Run(b.ctx, chromedp.Text("main"))
	if err != nil {
		b.t.Fatalf("%s: %v", name, err)
	}
	return text
}

// The workflow pages in Chromium: the run list, a run drawn as a DAG with its
// timeline, the schedules and one schedule's coming fires.
func TestWorkflowPagesInChromium(t *testing.T) {
	t.Parallel()
	a := newAPI(t)
	ctx := context.Background()
	a.want(201, "POST", "/api/v1/groups", a.operate, GroupRequest{Name: "g"}, nil)
	a.want(201, "POST", "/api/v1/workflows", a.operate, apiWorkflow+`  - name: archive
    group: g
    shell: echo archive
    depends_on: [extract]
`, nil)
	var started struct {
		RunID int64 `json:"run_id"`
	}
	a.want(201, "POST", "/api/v1/runs", a.operate, StartRunRequest{Workflow: "report"}, &started)
	now := time.Now()
	if _, err := schedule.Create(ctx, db.New(a.pool), schedule.Spec{Name: "hourly-report", Workflow: "report", Cron: "@hourly", Zone: "America/New_York"}, &now); err != nil {
		t.Fatal(err)
	}
	b := newBrowser(t, a)
	runs := b.visit("runs", "/ui/runs", `#runs`)
	if err := chromedp.Do(b.ctx, chromedp.Click(fmt.Sprintf(`a[href="/ui/runs/%d"]`, started.RunID))); err != nil {
		t.Fatalf("open run: %v", err)
	}
	run := b.visit("run", "", `#dag`)
	boxes, err := chromedp.Run(b.ctx, chromedp.Evaluate[int](`document.querySelectorAll("#dag g.node").length`))
	if err != nil {
		t.Fatal(err)
	}
	lines, err := chromedp.Run(b.ctx, chromedp.Evaluate[int](`document.querySelectorAll("#dag path").length`))
	if err != nil {
		t.Fatal(err)
	}
	if boxes != 3 || lines != 2 {
		t.Errorf("the DAG has %d boxes and %d edges, want 3 and 2", boxes, lines)
	}
	schedules := b.visit("schedules", "/ui/schedules", `#schedules`)
	if err := chromedp.Do(b.ctx, chromedp.Click(`a[href="/ui/schedules/hourly-report"]`)); err != nil {
		t.Fatalf("open schedule: %v", err)
	}
	sched := b.visit("schedule", "", `#next`)
	for _, c := range []struct{ page, text, want string }{
		{"runs", runs, "report"},
		{"run", run, "extract"},
		{"run", run, "archive"},
		{"run", run, "queued"},
		{"schedules", schedules, "hourly-report"},
		{"schedule", sched, "EST"},
		{"schedule", sched, "no fire yet"},
	} {
		if !strings.Contains(c.text, c.want) {
			t.Errorf("%s page shows %q, want it to contain %q", c.page, c.text, c.want)
		}
	}
}

// Live updates: a page open in the browser shows a run started through the API
// without being reloaded (the event stream says "change" and the page swaps its
// content in place), and a page without a listener costs no signature reads.
func TestLiveUpdatesInChromium(t *testing.T) {
	t.Parallel()
	a := newAPI(t)
	a.want(201, "POST", "/api/v1/groups", a.operate, GroupRequest{Name: "g"}, nil)
	a.want(201, "POST", "/api/v1/workflows", a.operate, apiWorkflow, nil)
	b := newBrowser(t, a)
	b.visit("runs-before", "/ui/runs", `#runs`)
	// A mark on the window: a reload would drop it, a swap of <main> keeps it.
	if _, err := chromedp.Run(b.ctx, chromedp.Evaluate[bool](`window.batonMark = true`)); err != nil {
		t.Fatal(err)
	}
	var started struct {
		RunID int64 `json:"run_id"`
	}
	a.want(201, "POST", "/api/v1/runs", a.operate, StartRunRequest{Workflow: "report"}, &started)
	link := fmt.Sprintf(`#runs a[href="/ui/runs/%d"]`, started.RunID)
	wctx, cancel := context.WithTimeout(b.ctx, 20*time.Second)
	defer cancel()
	if err := chromedp.Do(wctx, chromedp.WaitVisible(link)); err != nil {
		t.Fatalf("the run page did not show run %d without a reload: %v", started.RunID, err)
	}
	kept, err := chromedp.Run(b.ctx, chromedp.Evaluate[bool](`window.batonMark === true && Number(document.documentElement.dataset.liveUpdates) > 0`))
	if err != nil {
		t.Fatal(err)
	}
	if !kept {
		t.Fatal("the page was reloaded, not updated in place by the event stream")
	}
	b.visit("runs-after", "", link)
}
