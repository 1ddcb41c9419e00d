package executor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"
)

func shellTask(t *testing.T, cmd string) Task {
	t.Helper()
	p, _ := json.Marshal(ShellPayload{Command: cmd})
	return Task{ID: 7, Attempt: 2, Kind: KindShell, Payload: p, SessionID: 3, Worker: "w"}
}

func TestShellOutcomes(t *testing.T) {
	t.Parallel()
	e := &Executor{AllowShell: true}
	t.Cleanup(func() { _ = e.Close() })
	cases := []struct {
		name, cmd, outcome, output string
		code                       int32
	}{
		{"succeeds", `echo "$BATON_TASK_ID/$BATON_ATTEMPT/$BATON_WORKER/$BATON_SESSION_ID"`, OutcomeSucceeded, "7/2/w/3\n", 0},
		// The worker's own pid, not the supervisor's ($PPID): what a task that
		// must signal its worker (the e2e poison task) uses.
		{"worker pid", `echo "$BATON_WORKER_PID"; [ "$BATON_WORKER_PID" != "$PPID" ]`, OutcomeSucceeded, fmt.Sprintf("%d\n", os.Getpid()), 0},
		{"fails", "echo no >&2; exit 4", OutcomeFailed, "no\n", 4},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			res := e.Run(context.Background(), shellTask(t, tc.cmd), 0)
			if res.Outcome != tc.outcome || res.Output != tc.output || res.ExitCode != tc.code {
				t.Fatalf("got %+v", res)
			}
		})
	}
	res := e.Run(context.Background(), Task{Kind: KindShell, Payload: []byte(`{"command": ""}`)}, 0)
	if res.Outcome != OutcomeFailed || !strings.Contains(res.Error, `"command" is empty`) {
		t.Fatalf("empty command: %+v", res)
	}
}

// A timeout kills the whole process group: a background child of the command
// dies too.
func TestShellTimeoutKillsProcessGroup(t *testing.T) {
	t.Parallel()
	pidFile := filepath.Join(t.TempDir(), "child")
	e := &Executor{AllowShell: true}
	t.Cleanup(func() { _ = e.Close() })
	res := e.Run(context.Background(), shellTask(t, "sleep 60 & echo $! > "+pidFile+"; wait"), 300*time.Millisecond)
	if res.Outcome != OutcomeTimedOut || !strings.Contains(res.Error, "timed out after 300ms") {
		t.Fatalf("got %+v", res)
	}
	raw, err := os.ReadFile(pidFile)
	if errors.Is(err, os.ErrNotExist) {
		return // killed before it started the child (a slow, loaded machine)
	} else if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(raw)))
	deadline := time.Now().Add(5 * time.Second)
	for syscall.Kill(pid, 0) == nil {
		if time.Now().After(deadline) {
			t.Fatalf("background child %d survived the kill", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestCancelIsNotTimeout(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancelCause(context.Background())
	e := &Executor{Handlers: map[string]Handler{"block": func(ctx context.Context, _ Task) (string, error) {
		cancel(errors.New("self-fenced"))
		<-ctx.Done()
		return "", ctx.Err()
	}}}
	res := e.Run(ctx, Task{Kind: "block"}, time.Hour)
	if res.Outcome != OutcomeCanceled || !strings.Contains(res.Error, "self-fenced") {
		t.Fatalf("got %+v", res)
	}
}

func TestHandlerErrorsAndPanics(t *testing.T) {
	t.Parallel()
	e := &Executor{MaxOutput: 4, Handlers: map[string]Handler{
		"ok":    func(context.Context, Task) (string, error) { return "abcdefgh", nil },
		"err":   func(context.Context, Task) (string, error) { return "", errors.New("bad input") },
		"panic": func(context.Context, Task) (string, error) { panic("boom") },
	}}
	if r := e.Run(context.Background(), Task{Kind: "ok"}, 0); r.Outcome != OutcomeSucceeded || !strings.HasPrefix(r.Output, "abcd\n[output truncated") || r.ExitCode != NoExitCode {
		t.Fatalf("ok: %+v", r)
	}
	if r := e.Run(context.Background(), Task{Kind: "err"}, 0); r.Outcome != OutcomeFailed || r.Error != "bad input" {
		t.Fatalf("err: %+v", r)
	}
	if r := e.Run(context.Background(), Task{Kind: "panic"}, 0); r.Outcome != OutcomeFailed || r.Error != "handler panicked: boom" {
		t.Fatalf("panic: %+v", r)
	}
	if r := e.Run(context.Background(), Task{Kind: "missing"}, 0); r.Outcome != OutcomeFailed || !strings.Contains(r.Error, `no handler registered for kind "missing"`) {
		t.Fatalf("missing: %+v", r)
	}
}

// Binary output, NULs and a cut inside a multi-byte character stay storable text.
func TestOutputIsValidUTF8(t *testing.T) {
	t.Parallel()
	e := &Executor{AllowShell: true, MaxOutput: 5}
	t.Cleanup(func() { _ = e.Close() })
	res := e.Run(context.Background(), shellTask(t, `printf 'ab\303\251\303\251\000\377'`), 0)
	if !utf8.ValidString(res.Output) || strings.ContainsRune(res.Output, 0) || !strings.HasPrefix(res.Output, "abé") {
		t.Fatalf("output %q is not clean UTF-8", res.Output)
	}
}

// A shell task's $BATON_OUTPUT lines become its step outputs, read after the
// process exited; a file over the cap or malformed fails the attempt and keeps
// no output at all; the file is removed afterwards.
func TestShellStepOutputs(t *testing.T) {
	t.Parallel()
	e := &Executor{AllowShell: true, MaxStepOutputs: 64}
	t.Cleanup(func() { _ = e.Close() })
	cases := []struct {
		name, cmd, outcome, outputs, err string
	}{
		{"lines", `echo "path=/data/x y" >> "$BATON_OUTPUT"; printf 'n=3\n\nn=4\nempty=\n' >> "$BATON_OUTPUT"`, OutcomeSucceeded,
			`{"empty":"","n":"4","path":"/data/x y"}`, ""},
		{"heredoc", `printf 'msg<<EOF\na=b\n"q"\nEOF\nk=v\n' > "$BATON_OUTPUT"`, OutcomeSucceeded, `{"k":"v","msg":"a=b\n\"q\""}`, ""},
		{"background writer done by exit", `(sleep 0.1; echo late=1 >> "$BATON_OUTPUT") & wait`, OutcomeSucceeded, `{"late":"1"}`, ""},
		{"none", `true`, OutcomeSucceeded, ``, ""},
		{"removed", `rm "$BATON_OUTPUT"`, OutcomeSucceeded, ``, ""},
		{"over the cap", `head -c 65 /dev/zero | tr '\0' a | sed 's/^/k=/' > "$BATON_OUTPUT"`, OutcomeFailed, ``,
			"step outputs ($BATON_OUTPUT) over the cap of 64 bytes: no output stored"},
		{"no equals", `echo oops > "$BATON_OUTPUT"`, OutcomeFailed, ``, "step outputs ($BATON_OUTPUT) line 1: write KEY=VALUE or KEY<<DELIMITER"},
		{"bad key", `echo 'a-b=1' > "$BATON_OUTPUT"`, OutcomeFailed, ``, `step outputs ($BATON_OUTPUT) line 1: key "a-b" must be letters, digits and _`},
		{"open heredoc", `printf 'k<<EOF\nx\n' > "$BATON_OUTPUT"`, OutcomeFailed, ``, `step outputs ($BATON_OUTPUT) line 1: no line "EOF" ends the value of k`},
		{"failed command keeps no outputs", `echo k=v > "$BATON_OUTPUT"; exit 3`, OutcomeFailed, ``, "exit status 3"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			res := e.Run(context.Background(), shellTask(t, tc.cmd), 0)
			if res.Outcome != tc.outcome || string(res.StepOutputs) != tc.outputs || !strings.Contains(res.Error, tc.err) {
				t.Fatalf("got %+v (outputs %s)", res, res.StepOutputs)
			}
		})
	}
	// The file is the attempt's own and is gone after it.
	dir := t.TempDir()
	res := e.Run(context.Background(), shellTask(t, `echo "$BATON_OUTPUT" > `+dir+`/path`), 0)
	if res.Outcome != OutcomeSucceeded {
		t.Fatalf("got %+v", res)
	}
	path, err := os.ReadFile(filepath.Join(dir, "path"))
	if err != nil {
		t.Fatal(err)
	}
	if p := strings.TrimSpace(string(path)); !strings.Contains(p, "baton-output-7-2-") {
		t.Fatalf("BATON_OUTPUT = %q", p)
	} else if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("outputs file %s left behind: %v", p, err)
	}
}
