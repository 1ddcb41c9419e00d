package httpapi

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/browsertest"
	"github.com/baton-scheduler/baton/internal/schedule"
)

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
	b := browsertest.New(t, a.url)
	b.SignIn(a.read)
	runs := b.Visit("runs", "/ui/runs", `#runs`)
	if err := chromedp.Do(b.Ctx, chromedp.Click(fmt.Sprintf(`a[href="/ui/runs/%d"]`, started.RunID))); err != nil {
		t.Fatalf("open run: %v", err)
	}
	run := b.Visit("run", "", `#dag`)
	boxes, err := chromedp.Run(b.Ctx, chromedp.Evaluate[int](`document.querySelectorAll("#dag g.node").length`))
	if err != nil {
		t.Fatal(err)
	}
	lines, err := chromedp.Run(b.Ctx, chromedp.Evaluate[int](`document.querySelectorAll("#dag path").length`))
	if err != nil {
		t.Fatal(err)
	}
	if boxes != 3 || lines != 2 {
		t.Errorf("the DAG has %d boxes and %d edges, want 3 and 2", boxes, lines)
	}
	schedules := b.Visit("schedules", "/ui/schedules", `#schedules`)
	if err := chromedp.Do(b.Ctx, chromedp.Click(`a[href="/ui/schedules/hourly-report"]`)); err != nil {
		t.Fatalf("open schedule: %v", err)
	}
	sched := b.Visit("schedule", "", `#next`)
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
	b := browsertest.New(t, a.url)
	b.SignIn(a.read)
	b.Visit("runs-before", "/ui/runs", `#runs`)
	// A mark on the window: a reload would drop it, a swap of <main> keeps it.
	if _, err := chromedp.Run(b.Ctx, chromedp.Evaluate[bool](`window.batonMark = true`)); err != nil {
		t.Fatal(err)
	}
	var started struct {
		RunID int64 `json:"run_id"`
	}
	a.want(201, "POST", "/api/v1/runs", a.operate, StartRunRequest{Workflow: "report"}, &started)
	link := fmt.Sprintf(`#runs a[href="/ui/runs/%d"]`, started.RunID)
	wctx, cancel := context.WithTimeout(b.Ctx, 20*time.Second)
	defer cancel()
	if err := chromedp.Do(wctx, chromedp.WaitVisible(link)); err != nil {
		t.Fatalf("the run page did not show run %d without a reload: %v", started.RunID, err)
	}
	kept, err := chromedp.Run(b.Ctx, chromedp.Evaluate[bool](`window.batonMark === true && Number(document.documentElement.dataset.liveUpdates) > 0`))
	if err != nil {
		t.Fatal(err)
	}
	if !kept {
		t.Fatal("the page was reloaded, not updated in place by the event stream")
	}
	b.Visit("runs-after", "", link)
}
