// Package executor runs one task attempt: a shell command contained with its whole
// process tree (internal/contain) or a registered Go handler, bounded by the
// attempt's context and timeout.
package executor

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"go.uber.org/zap"

	"github.com/baton-scheduler/baton/internal/contain"
	"github.com/baton-scheduler/baton/internal/logfield"
)

// Outcomes an attempt can report.
const (
	OutcomeSucceeded = "succeeded"
	OutcomeFailed    = "failed"
	OutcomeTimedOut  = "timed_out"
	OutcomeCanceled  = "canceled"
	OutcomeSnoozed   = "snoozed"
)

// KindShell is the task kind of shell commands.
const KindShell = "shell"

// Causes of a running attempt's context when the worker stops it because its
// task row no longer names it (claimer.Claimer): errors.Is(context.Cause(ctx), …).
var (
	// ErrCanceled: the task was canceled while the attempt ran (Client.Cancel).
	ErrCanceled = errors.New("task canceled")
	// ErrSuperseded: the attempt no longer owns its task (a master recorded its
	// timeout, or moved the task elsewhere).
	ErrSuperseded = errors.New("attempt superseded")
)

// NoExitCode marks a result without an exit code (Go handlers, kills).
const NoExitCode int32 = -2147483648

// DefaultMaxOutput bounds captured stdout+stderr per attempt.
const DefaultMaxOutput = 64 << 10

// DefaultMaxStepOutputs bounds the file a shell task writes its step outputs to
// (the file named by $BATON_OUTPUT): a bigger file fails the attempt and stores
// no output at all.
const DefaultMaxStepOutputs = 64 << 10

// EnvOutput names the environment variable holding the path of the file a shell
// task writes its step outputs to, as key=value lines (docs/workflows.md).
const EnvOutput = "BATON_OUTPUT"

// Task is what a handler sees of the task it runs.
type Task struct {
	ID        int64
	Attempt   int32
	Kind      string
	Payload   json.RawMessage
	SessionID int64
	Worker    string
	// Lease reports whether this attempt still owns the task (nil) — see
	// baton.Task.CheckLease. Nil func: always owned (tests, direct executor use).
	Lease func() error
}

// CheckLease is nil while the attempt still owns its task.
func (t Task) CheckLease() error {
	if t.Lease == nil {
		return nil
	}
	return t.Lease()
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
	Snooze   time.Duration // OutcomeSnoozed: run again after this long
	// StepOutputs is the JSON object a succeeded shell task wrote to its
	// $BATON_OUTPUT file (nil: it wrote none). Stored with the result, in the
	// same fenced statement, as its workflow step's outputs.
	StepOutputs json.RawMessage
	// LeaseExpired: OutcomeCanceled because the task's supervisor killed it at
	// the worker's lease expiry (contain.ErrLeaseExpired), not by the worker.
	LeaseExpired bool
}

// SnoozeError, returned by a handler (or wrapped in its error), ends the attempt
// as snoozed: the task runs again after For, without using a retry.
type SnoozeError struct{ For time.Duration }

func (e *SnoozeError) Error() string { return fmt.Sprintf("snoozed for %s", e.For) }

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

// DefaultShellEnvAllow is the part of the worker's environment a shell task
// inherits when Executor.ShellEnvAllow is nil. An entry ending in '*' is a prefix.
// Nothing else of the worker's environment — BATON_DATABASE_URL, PG*, cloud
// credentials — reaches a task.
var DefaultShellEnvAllow = []string{"PATH", "HOME", "LANG", "LC_*", "TZ", "TMPDIR", "USER", "LOGNAME"}

// defaultPath is the PATH of a shell task when the worker has none.
const defaultPath = "/usr/local/bin:/usr/bin:/bin"

// ErrShellDisabled is the error of a shell task on a worker that does not allow them.
const ErrShellDisabled = "shell tasks are disabled on this worker; enable them with AllowShell in the worker's configuration"

// Executor runs attempts. Handlers maps task kinds to Go handlers. The zero value
// runs Go handlers only; shell tasks need AllowShell. Close it when done.
type Executor struct {
	Handlers  map[string]Handler
	MaxOutput int
	// MaxStepOutputs bounds a shell task's $BATON_OUTPUT file in bytes
	// (0: DefaultMaxStepOutputs).
	MaxStepOutputs int
	// AllowShell lets the executor run shell tasks; without it they fail at once.
	AllowShell bool
	// ShellEnvAllow lists the variables of the worker's environment a shell task
	// inherits (nil: DefaultShellEnvAllow). The task's own env and BATON_TASK_ID,
	// BATON_ATTEMPT, BATON_WORKER, BATON_SESSION_ID, BATON_WORKER_PID are added to
	// them.
	ShellEnvAllow []string
	// Contain chooses how shell task trees are contained (zero value: a cgroup per
	// attempt when usable, else the supervisor alone).
	Contain contain.Options
	Logger  *zap.Logger

	openOnce sync.Once
	contain  *contain.Manager
	openErr  error
	mgrMu    sync.Mutex
	mgr      *contain.Manager // contain, once opened (readable at any time)
}

// Open prepares shell containment (detection, cleanup of a previous worker's
// leftovers on this host). The first shell task calls it if the owner did not;
// without AllowShell it does nothing.
func (e *Executor) Open() error {
	if !e.AllowShell {
		return nil
	}
	e.openOnce.Do(func() {
		log := e.Logger
		if log == nil {
			log = zap.NewNop()
		}
		e.contain, e.openErr = contain.Open(e.Contain)
		if e.openErr != nil {
			log.Error("shell task containment unavailable; shell tasks will fail", zap.Error(e.openErr))
			return
		}
		e.mgrMu.Lock()
		e.mgr = e.contain
		e.mgrMu.Unlock()
		if err := e.contain.StaleError(); err != nil {
			log.Warn("leftover task cgroups of a dead worker not removed; retried at next start", zap.Error(err))
		}
		log.Info("shell task containment ready",
			logfield.Containment(string(e.contain.Mechanism())), logfield.Reason(e.contain.Reason()),
			logfield.Count("stale_cgroups_removed", e.contain.StaleRemoved()))
	})
	return e.openErr
}

// Close kills shell tasks still running and removes the executor's cgroups.
func (e *Executor) Close() error {
	// No Open after Close (shell tasks then fail), and e.contain is safe to read.
	e.openOnce.Do(func() { e.openErr = errors.New("the executor is closed") })
	if e.contain == nil {
		return nil
	}
	return e.contain.Close()
}

// SetLease passes the worker's lease to the supervisors of its shell tasks
// (contain.Manager.SetLease); no effect before Open or without shell tasks.
func (e *Executor) SetLease(l contain.Lease) {
	if m := e.manager(); m != nil {
		m.SetLease(l)
	}
}

// SetLockConn shares the liveness lock connection's socket with the supervisors
// of shell tasks started from now on (contain.Manager.SetLockConn).
func (e *Executor) SetLockConn(conn net.Conn) error {
	if m := e.manager(); m != nil {
		return m.SetLockConn(conn)
	}
	return nil
}

// StaleLock: a shell task's supervisor enforces the short deadline without the
// current lock connection (contain.Manager.StaleLock).
func (e *Executor) StaleLock() bool {
	if m := e.manager(); m != nil {
		return m.StaleLock()
	}
	return false
}

// manager is the containment manager once Open succeeded, else nil.
func (e *Executor) manager() *contain.Manager {
	e.mgrMu.Lock()
	defer e.mgrMu.Unlock()
	return e.mgr
}

// Run executes task until it finishes, its timeout passes or ctx is canceled (the
// task was canceled, the worker fenced itself or is shutting down; then the
// outcome is canceled). A shell task's whole process tree is killed then.
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
	if res.Outcome != OutcomeSucceeded && res.Outcome != OutcomeSnoozed {
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
		var snooze *SnoozeError
		if errors.As(err, &snooze) && ctx.Err() == nil {
			res.Outcome, res.Snooze = OutcomeSnoozed, max(snooze.For, 0)
			return res
		}
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
	if !e.AllowShell {
		res.Outcome, res.Error = OutcomeFailed, ErrShellDisabled
		return res
	}
	p, err := ParseShellPayload(task.Payload)
	if err != nil {
		res.Outcome, res.Error = OutcomeFailed, err.Error()
		return res
	}
	if err := e.Open(); err != nil {
		res.Outcome, res.Error = OutcomeFailed, fmt.Sprintf("shell task containment unavailable: %v", err)
		return res
	}
	outFile, err := os.CreateTemp("", fmt.Sprintf("baton-output-%d-%d-*", task.ID, task.Attempt))
	if err != nil {
		res.Outcome, res.Error = OutcomeFailed, fmt.Sprintf("create the step outputs file: %v", err)
		return res
	}
	outPath := outFile.Name()
	_ = outFile.Close()
	defer func() { _ = os.Remove(outPath) }()
	out := &limitedBuffer{max: e.maxOutput()}
	proc, err := e.contain.Start(contain.Command{
		Args:   []string{"/bin/sh", "-c", p.Command},
		Env:    append(e.shellEnv(task, p.Env), EnvOutput+"="+outPath),
		Dir:    p.Dir,
		Stdout: out,
		Stderr: out,
		Name:   fmt.Sprintf("task-%d-%d", task.ID, task.Attempt),
	})
	if err != nil {
		res.Outcome, res.Error = OutcomeFailed, fmt.Sprintf("start shell: %v", err)
		return res
	}
	done := make(chan contain.Exit, 1)
	go func() { done <- proc.Wait() }()
	var exit contain.Exit
	select {
	case exit = <-done:
	case <-ctx.Done():
		proc.Kill() // the whole tree, whatever it did to detach
		exit = <-done
	}
	res.Output = out.String()
	res.ExitCode = int32(exit.Code)
	if errors.Is(exit.Err, contain.ErrLeaseExpired) {
		// Killed at the worker's lease expiry, like a self-fence: left to failover.
		res.Outcome, res.Error, res.LeaseExpired = OutcomeCanceled, exit.Err.Error(), true
		return res
	}
	if exit.Err != nil {
		res.Outcome, res.Error = OutcomeFailed, exit.Err.Error()
		return res
	}
	// Read after the whole tree exited: nothing writes the file any more.
	outputs, err := ReadStepOutputs(outPath, e.maxStepOutputs())
	if err != nil {
		res.Outcome, res.Error = OutcomeFailed, err.Error()
		return res
	}
	res.Outcome, res.StepOutputs = OutcomeSucceeded, outputs
	return res
}

func (e *Executor) maxStepOutputs() int {
	if e.MaxStepOutputs > 0 {
		return e.MaxStepOutputs
	}
	return DefaultMaxStepOutputs
}

var outputKeyRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// ReadStepOutputs reads a $BATON_OUTPUT file: lines KEY=VALUE, or KEY<<DELIM
// followed by the value's lines and a line DELIM (a multi-line value); empty
// lines are ignored and a later KEY wins. It returns the outputs as a JSON
// object of strings (nil when the file is empty), or an error naming the
// problem when the file is over max bytes or malformed: then nothing is kept.
func ReadStepOutputs(path string, max int) (json.RawMessage, error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil // the task removed it: no outputs
		}
		return nil, fmt.Errorf("step outputs ($%s): %w", EnvOutput, err)
	}
	defer func() { _ = f.Close() }()
	data, err := io.ReadAll(io.LimitReader(f, int64(max)+1))
	if err != nil {
		return nil, fmt.Errorf("step outputs ($%s): read: %w", EnvOutput, err)
	}
	if len(data) > max {
		return nil, fmt.Errorf("step outputs ($%s) over the cap of %d bytes: no output stored", EnvOutput, max)
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, nil
	}
	if !utf8.Valid(data) || bytes.IndexByte(data, 0) >= 0 {
		return nil, fmt.Errorf("step outputs ($%s): not valid UTF-8 text", EnvOutput)
	}
	vals := map[string]string{}
	lines := strings.Split(strings.TrimSuffix(strings.ReplaceAll(string(data), "\r\n", "\n"), "\n"), "\n")
	for i := 0; i < len(lines); i++ {
		line := lines[i]
		if strings.TrimSpace(line) == "" {
			continue
		}
		eq, hd := strings.Index(line, "="), strings.Index(line, "<<")
		if hd >= 0 && (eq < 0 || hd < eq) {
			key, delim := line[:hd], line[hd+2:]
			if !outputKeyRE.MatchString(key) {
				return nil, fmt.Errorf("step outputs ($%s) line %d: key %q must be letters, digits and _", EnvOutput, i+1, key)
			}
			if delim == "" {
				return nil, fmt.Errorf("step outputs ($%s) line %d: %s<< without a delimiter", EnvOutput, i+1, key)
			}
			start, end := i+1, -1
			for j := start; j < len(lines); j++ {
				if lines[j] == delim {
					end = j
					break
				}
			}
			if end < 0 {
				return nil, fmt.Errorf("step outputs ($%s) line %d: no line %q ends the value of %s", EnvOutput, i+1, delim, key)
			}
			vals[key] = strings.Join(lines[start:end], "\n")
			i = end
			continue
		}
		if eq < 0 {
			return nil, fmt.Errorf("step outputs ($%s) line %d: write KEY=VALUE or KEY<<DELIMITER", EnvOutput, i+1)
		}
		key := line[:eq]
		if !outputKeyRE.MatchString(key) {
			return nil, fmt.Errorf("step outputs ($%s) line %d: key %q must be letters, digits and _", EnvOutput, i+1, key)
		}
		vals[key] = line[eq+1:]
	}
	out, err := json.Marshal(vals)
	if err != nil {
		return nil, fmt.Errorf("step outputs ($%s): %w", EnvOutput, err)
	}
	return out, nil
}

// shellEnv is a shell task's whole environment: the allow-listed variables of the
// worker's, then the task's own, then baton's (which the task cannot override).
func (e *Executor) shellEnv(task Task, own map[string]string) []string {
	allow := e.ShellEnvAllow
	if allow == nil {
		allow = DefaultShellEnvAllow
	}
	var env []string
	hasPath := false
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if allowed(k, allow) {
			env = append(env, kv)
			hasPath = hasPath || k == "PATH"
		}
	}
	if !hasPath {
		env = append(env, "PATH="+defaultPath)
	}
	keys := make([]string, 0, len(own))
	for k := range own {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		env = append(env, k+"="+own[k])
	}
	return append(env,
		"BATON_TASK_ID="+strconv.FormatInt(task.ID, 10),
		"BATON_ATTEMPT="+strconv.FormatInt(int64(task.Attempt), 10),
		"BATON_WORKER="+task.Worker,
		"BATON_SESSION_ID="+strconv.FormatInt(task.SessionID, 10),
		// The worker process itself (not the task's supervisor, its parent): a
		// task that must signal its worker, or a test's poison task that kills it.
		"BATON_WORKER_PID="+strconv.Itoa(os.Getpid()),
	)
}

func allowed(key string, allow []string) bool {
	for _, a := range allow {
		if prefix, ok := strings.CutSuffix(a, "*"); ok {
			if strings.HasPrefix(key, prefix) {
				return true
			}
		} else if key == a {
			return true
		}
	}
	return false
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
