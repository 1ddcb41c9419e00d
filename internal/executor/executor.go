// Package executor runs one task attempt: a shell command in its own process group
// or a registered Go handler, bounded by the attempt's context and timeout.
package executor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Outcomes an attempt can report.
const (
	OutcomeSucceeded = "succeeded"
	OutcomeFailed    = "failed"
	OutcomeTimedOut  = "timed_out"
	OutcomeCanceled  = "canceled"
)

// KindShell is the task kind of shell commands.
const KindShell = "shell"

// NoExitCode marks a result without an exit code (Go handlers, kills).
const NoExitCode int32 = -2147483648

// DefaultMaxOutput bounds captured stdout+stderr per attempt.
const DefaultMaxOutput = 64 << 10

// Task is what a handler sees of the task it runs.
type Task struct {
	ID        int64
	Attempt   int32
	Kind      string
	Payload   json.RawMessage
	SessionID int64
	Worker    string
}

// Handler runs a task kind in-process. It must return when ctx is done.
// The returned string is stored as the task's output.
type Handler func(ctx context.Context, task Task) (string, error)

// Result is the outcome of one attempt.
type Result struct {
	Outcome  string
	ExitCode int32
	Output   string
	Error    string
}

// ShellPayload is the payload of a shell task.
type ShellPayload struct {
	Command string            `json:"command"`
	Env     map[string]string `json:"env,omitempty"`
	Dir     string            `json:"dir,omitempty"`
}

// ParseShellPayload decodes and validates a shell payload.
func ParseShellPayload(raw []byte) (ShellPayload, error) {
	var p ShellPayload
	if err := json.Unmarshal(raw, &p); err != nil {
		return p, fmt.Errorf("shell payload: %w", err)
	}
	if p.Command == "" {
		return p, errors.New(`shell payload: "command" is empty`)
	}
	return p, nil
}

// Executor runs attempts. Handlers maps task kinds to Go handlers.
type Executor struct {
	Handlers  map[string]Handler
	MaxOutput int
}

// Run executes task until it finishes, its timeout passes or ctx is canceled (the
// worker fenced itself or is shutting down; then the outcome is canceled).
func (e *Executor) Run(ctx context.Context, task Task, timeout time.Duration) Result {
	runCtx := ctx
	if timeout > 0 {
		var cancel context.CancelFunc
		runCtx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	var res Result
	if task.Kind == KindShell {
		res = e.runShell(runCtx, task)
	} else {
		res = e.runHandler(runCtx, task)
	}
	// Text columns take valid UTF-8 without NULs only; binary output or a cut
	// inside a multi-byte character must not make the result unstorable.
	res.Output, res.Error = Clean(res.Output), Clean(res.Error)
	if res.Outcome != OutcomeSucceeded {
		switch {
		case ctx.Err() != nil:
			res.Outcome, res.Error = OutcomeCanceled, "canceled by worker: "+context.Cause(ctx).Error()
		case runCtx.Err() != nil:
			res.Outcome, res.Error = OutcomeTimedOut, fmt.Sprintf("timed out after %s", timeout)
		}
	}
	return res
}

func (e *Executor) runHandler(ctx context.Context, task Task) (res Result) {
	res.ExitCode = NoExitCode
	h, ok := e.Handlers[task.Kind]
	if !ok {
		res.Outcome, res.Error = OutcomeFailed, fmt.Sprintf("no handler registered for kind %q on this worker", task.Kind)
		return res
	}
	defer func() {
		if r := recover(); r != nil {
			res.Outcome, res.Error = OutcomeFailed, fmt.Sprintf("handler panicked: %v", r)
		}
	}()
	out, err := h(ctx, task)
	res.Output = truncate(out, e.maxOutput())
	if err != nil {
		res.Outcome, res.Error = OutcomeFailed, err.Error()
		return res
	}
	res.Outcome = OutcomeSucceeded
	return res
}

func (e *Executor) maxOutput() int {
	if e.MaxOutput > 0 {
		return e.MaxOutput
	}
	return DefaultMaxOutput
}

func (e *Executor) runShell(ctx context.Context, task Task) Result {
	res := Result{ExitCode: NoExitCode}
	p, err := ParseShellPayload(task.Payload)
	if err != nil {
		res.Outcome, res.Error = OutcomeFailed, err.Error()
		return res
	}
	cmd := exec.Command("/bin/sh", "-c", p.Command)
	cmd.Dir = p.Dir
	env := os.Environ()
	keys := make([]string, 0, len(p.Env))
	for k := range p.Env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		env = append(env, k+"="+p.Env[k])
	}
	env = append(env,
		"BATON_TASK_ID="+strconv.FormatInt(task.ID, 10),
		"BATON_ATTEMPT="+strconv.FormatInt(int64(task.Attempt), 10),
		"BATON_WORKER="+task.Worker,
		"BATON_SESSION_ID="+strconv.FormatInt(task.SessionID, 10),
	)
	cmd.Env = env
	out := &limitedBuffer{max: e.maxOutput()}
	cmd.Stdout, cmd.Stderr = out, out
	// Own process group, so a kill reaches every child the command started.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		res.Outcome, res.Error = OutcomeFailed, fmt.Sprintf("start shell: %v", err)
		return res
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err = <-done:
	case <-ctx.Done():
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		err = <-done
	}
	res.Output = out.String()
	if cmd.ProcessState != nil {
		res.ExitCode = int32(cmd.ProcessState.ExitCode())
	}
	if err != nil {
		res.Outcome, res.Error = OutcomeFailed, err.Error()
		return res
	}
	res.Outcome = OutcomeSucceeded
	return res
}

type limitedBuffer struct {
	buf       []byte
	max       int
	truncated bool
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	room := b.max - len(b.buf)
	if room >= len(p) {
		b.buf = append(b.buf, p...)
	} else {
		if room > 0 {
			b.buf = append(b.buf, p[:room]...)
		}
		b.truncated = true
	}
	return len(p), nil
}

func (b *limitedBuffer) String() string {
	if b.truncated {
		return string(b.buf) + fmt.Sprintf("\n[output truncated at %d bytes]", b.max)
	}
	return string(b.buf)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + fmt.Sprintf("\n[output truncated at %d bytes]", n)
}

// Clean makes s storable as Postgres text: NULs removed, invalid UTF-8 replaced.
func Clean(s string) string {
	if strings.IndexByte(s, 0) >= 0 {
		s = strings.ReplaceAll(s, "\x00", "")
	}
	return strings.ToValidUTF8(s, "\uFFFD")
}
