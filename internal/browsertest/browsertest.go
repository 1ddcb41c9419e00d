// Package browsertest drives baton's status page in headless Chromium (Debian's
// chromium, or chromium-browser / google-chrome on PATH) for tests: sign in,
// visit pages, screenshots, and every console error or exception recorded.
// Under CI=true a missing browser fails the test; elsewhere it skips.
package browsertest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	"github.com/baton-scheduler/baton/batontest"
)

// Browser is one headless Chromium tab on a status page at a base URL.
type Browser struct {
	t    testing.TB
	Ctx  context.Context
	base string
	// Dir receives the screenshots: $BATON_SCREENSHOTS, else a temporary
	// directory of the test.
	Dir string
	// Prefix starts every screenshot's file name.
	Prefix string

	mu       sync.Mutex
	problems []string
}

// New starts Chromium for the page at base (e.g. "http://127.0.0.1:8080"); at
// the test's end it fails the test on any console error or exception seen.
func New(t testing.TB, base string) *Browser {
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
	b := &Browser{t: t, base: base, Dir: os.Getenv("BATON_SCREENSHOTS")}
	if b.Dir == "" {
		b.Dir = t.TempDir()
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(path), chromedp.NoSandbox, chromedp.WindowSize(1280, 900))
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	ctx, cancelT := context.WithTimeout(ctx, 4*time.Minute)
	b.Ctx = ctx
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
	t.Cleanup(func() {
		cancelT()
		cancel()
		cancelA()
		b.mu.Lock()
		defer b.mu.Unlock()
		if len(b.problems) > 0 {
			t.Errorf("console errors: %v", b.problems)
		}
		t.Logf("screenshots in %s", b.Dir)
	})
	return b
}

// SignIn opens the page, which asks for a token, and signs in with token; it
// returns the login page's text (before signing in).
func (b *Browser) SignIn(token string) string {
	b.t.Helper()
	login := b.Visit("login", "/ui/", `input[name=token]`)
	if err := chromedp.Do(b.Ctx, chromedp.SendKeys(`input[name=token]`, token), chromedp.Submit(`input[name=token]`)); err != nil {
		b.t.Fatalf("sign in: %v", err)
	}
	b.Visit("overview", "", `#groups`)
	return login
}

// Visit loads path (or, with path "", stays on the page a click opened),
// waits until sel is visible, writes a screenshot named name and returns the
// text of the page's <main>.
func (b *Browser) Visit(name, path, sel string) string {
	b.t.Helper()
	defer func(start time.Time) { b.t.Logf("%s: %s", name, time.Since(start).Round(time.Millisecond)) }(time.Now())
	if path != "" {
		if err := chromedp.Do(b.Ctx, chromedp.Navigate(b.base+path)); err != nil {
			b.t.Fatalf("%s: %v", name, err)
		}
	}
	if err := chromedp.Do(b.Ctx, chromedp.WaitVisible(sel)); err != nil {
		b.t.Fatalf("%s: wait for %s: %v", name, sel, err)
	}
	png, err := chromedp.Run(b.Ctx, chromedp.FullScreenshot(100))
	if err != nil {
		b.t.Fatalf("%s: screenshot: %v", name, err)
	}
	if err := os.WriteFile(filepath.Join(b.Dir, b.Prefix+name+".png"), png, 0o644); err != nil {
		b.t.Fatal(err)
	}
	text, err := chromedp.Run(b.Ctx, chromedp.Text("main"))
	if err != nil {
		b.t.Fatalf("%s: %v", name, err)
	}
	return text
}
