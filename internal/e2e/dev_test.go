package e2e

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/baton-scheduler/baton/internal/browsertest"
)

var (
	batonOnce sync.Once
	batonBin  string
	batonErr  error
)

// buildBaton compiles the baton CLI beside the daemons (baton dev starts them
// from its own directory), once, without -race (it is a launcher here).
func buildBaton(t *testing.T) string {
	t.Helper()
	bins := Build(t)
	batonOnce.Do(func() {
		root, err := moduleRoot()
		if err != nil {
			batonErr = err
			return
		}
		cmd := exec.Command("go", "build", "-o", bins.Dir+string(filepath.Separator), "./cmd/baton")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			batonErr = fmt.Errorf("go build ./cmd/baton: %w\n%s", err, out)
			return
		}
		batonBin = filepath.Join(bins.Dir, "baton")
	})
	if batonErr != nil {
		t.Fatal(batonErr)
	}
	return batonBin
}

// `make run` is `baton dev`: given a database it starts a master (HTTP API and
// status page on), two workers and demo work, prints where the page is and a
// token for it, and Ctrl-C stops every process it started.
func TestMakeRunServesThePage(t *testing.T) {
	t.Parallel()
	pool, dsn := srv.NewPool(t)
	baton := buildBaton(t)
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(baton, "dev", "--database-url", dsn, "--http-addr", "127.0.0.1:0")
	cmd.Dir = root // the demo workflow is read from examples/
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		if t.Failed() {
			t.Logf("baton dev's processes said:\n%s", logs.String())
		}
	})
	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		exited <- cmd.Wait()
	}()
	var printed strings.Builder
	deadline := time.After(readyTimeout)
	for !strings.Contains(printed.String(), "Ctrl-C stops everything") {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("baton dev ended before it was ready: %v\n%s", <-exited, printed.String())
			}
			printed.WriteString(l + "\n")
		case <-deadline:
			t.Fatalf("baton dev not ready after %s:\n%s", readyTimeout, printed.String())
		}
	}
	go func() { // keep draining
		for l := range lines {
			_ = l
		}
	}()
	page := regexp.MustCompile(`status page: (http://[^ ]+/ui/)`).FindStringSubmatch(printed.String())
	tok := regexp.MustCompile(`API token \(operate scope, shown once\): (baton_\S+)`).FindStringSubmatch(printed.String())
	if page == nil || tok == nil {
		t.Fatalf("baton dev printed no status page URL or token:\n%s", printed.String())
	}
	base := strings.TrimSuffix(page[1], "/ui/")
	get := func(path string, auth bool) (int, string) {
		req, _ := http.NewRequest(http.MethodGet, base+path, nil)
		if auth {
			req.Header.Set("Authorization", "Bearer "+tok[1])
			req.AddCookie(&http.Cookie{Name: "baton_token", Value: tok[1]})
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	WaitFor(t, readyTimeout, func() (bool, string) {
		code, body := get("/readyz", false)
		return code == http.StatusOK, fmt.Sprintf("readyz: %d %s", code, body)
	})
	if code, body := get("/ui/", true); code != http.StatusOK || !strings.Contains(body, "default") {
		t.Fatalf("status page: %d %.300s", code, body)
	}
	// The demo tasks run to success on the two workers.
	WaitFor(t, terminalTimeout, func() (bool, string) {
		var n int
		if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM tasks WHERE workflow_run_id IS NULL AND state = 'succeeded'`).Scan(&n); err != nil {
			return false, err.Error()
		}
		return n == 6, fmt.Sprintf("%d of 6 demo tasks succeeded", n)
	})
	if code, body := get("/api/v1/tasks?state=succeeded", true); code != http.StatusOK || strings.Count(body, `"state":"succeeded"`) < 6 {
		t.Fatalf("API: %d %.300s", code, body)
	}

	// A worker SIGKILLed: its session is declared dead, its failover is on the
	// timeline, and the status page shows both, in a browser.
	var victimPID, victimSession int64
	if err := pool.QueryRow(context.Background(), `SELECT pid, id FROM worker_sessions WHERE name = 'worker-1' AND state = 'alive'`).
		Scan(&victimPID, &victimSession); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(int(victimPID), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	WaitFor(t, failoverTimeout, func() (bool, string) {
		var n int
		_ = pool.QueryRow(context.Background(), `SELECT count(*) FROM worker_sessions s JOIN failover_events f ON f.session_id = s.id
			WHERE s.id = $1 AND s.state = 'dead' AND f.finished_at IS NOT NULL`, victimSession).Scan(&n)
		return n == 1, fmt.Sprintf("session %d of the killed worker declared dead and failed over", victimSession)
	})
	pageChecks(t, base, tok[1], []pageCheck{
		{"workers", "/ui/workers", "#workers", "dead"},
		{"failovers", "/ui/failovers", "#timeline", fmt.Sprintf("worker session %d", victimSession)},
	})

	// Ctrl-C: baton dev stops its master and workers, which end their sessions.
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("baton dev after Ctrl-C: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("baton dev still running 60 s after Ctrl-C")
	}
	var alive int
	if err := pool.QueryRow(context.Background(), `SELECT (SELECT count(*) FROM worker_sessions WHERE state IN ('alive', 'draining'))
		+ (SELECT count(*) FROM master_sessions WHERE state = 'alive')`).Scan(&alive); err != nil {
		t.Fatal(err)
	}
	if alive != 0 {
		t.Fatalf("%d sessions not stopped after Ctrl-C", alive)
	}
}

type pageCheck struct{ name, path, wait, want string }

// pageChecks signs in to the status page at base in headless Chromium and
// checks that each page shows its text, without a console error.
func pageChecks(t *testing.T, base, token string, checks []pageCheck) {
	t.Helper()
	b := browsertest.New(t, base)
	b.Prefix = "make-run-"
	b.SignIn(token)
	for _, c := range checks {
		if text := b.Visit(c.name, c.path, c.wait); !strings.Contains(text, c.want) {
			t.Errorf("%s page shows %q, want it to contain %q", c.name, text, c.want)
		}
	}
}
