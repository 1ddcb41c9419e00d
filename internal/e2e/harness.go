// Package e2e runs the real baton binaries (baton-master, baton-worker) as
// processes against a throwaway database and breaks them the way production
// breaks them: SIGKILL, SIGSTOP/SIGCONT, SIGTERM. Every wait is a poll of
// Postgres rows with a deadline; nothing asserts on wall-clock durations.
//
// This file is the harness (not a _test file, so benchmarks of the package can
// reuse it); the scenarios are in e2e_test.go.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/baton-scheduler/baton/internal/chaos"
	"github.com/baton-scheduler/baton/internal/submit"
)

// Binaries are the programs built once per test binary.
type Binaries struct {
	Dir    string
	Master string // baton-master
	Worker string // baton-worker
	Ledger string // internal/e2e/ledger
	// ChaosWorker is baton-worker plus the "ledger" Go handler (internal/e2e/chaosworker).
	ChaosWorker string
}

var (
	buildOnce sync.Once
	built     Binaries
	buildErr  error
)

// Build compiles baton-master, baton-worker and the ledger program once per test
// binary into a temporary directory (removed by RemoveBinaries), with -race when
// the test binary has it.
func Build(t testing.TB) Binaries {
	t.Helper()
	buildOnce.Do(func() { built, buildErr = build() })
	if buildErr != nil {
		t.Fatalf("e2e: build binaries: %v", buildErr)
	}
	return built
}

// RemoveBinaries deletes what Build produced; call it from TestMain after m.Run.
func RemoveBinaries() {
	if built.Dir != "" {
		_ = os.RemoveAll(built.Dir)
	}
}

func build() (Binaries, error) {
	root, err := moduleRoot()
	if err != nil {
		return Binaries{}, err
	}
	dir, err := os.MkdirTemp("", "baton-e2e-bin-")
	if err != nil {
		return Binaries{}, err
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		if gr := os.Getenv("GOROOT"); gr != "" {
			goBin = filepath.Join(gr, "bin", "go")
		} else {
			return Binaries{}, fmt.Errorf("go command not found in PATH: %w", err)
		}
	}
	// Under `go test -race` (make test) the daemons get the race detector too; a
	// report in a log fails the test (Proc.stop). The ledger program, a test
	// tool that every ledger task starts, stays plain: hundreds of race-enabled
	// process starts per test would measure the detector, not baton. Benchmarks,
	// built without -race, measure plain binaries.
	daemons := []string{"build", "-o", dir + string(filepath.Separator)}
	if raceBuild {
		daemons = append(daemons, "-race")
	}
	daemons = append(daemons, "./cmd/baton-master", "./cmd/baton-worker", "./internal/e2e/chaosworker")
	for _, args := range [][]string{daemons, {"build", "-o", dir + string(filepath.Separator), "./internal/e2e/ledger"}} {
		cmd := exec.Command(goBin, args...)
		cmd.Dir = root
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			_ = os.RemoveAll(dir)
			return Binaries{}, fmt.Errorf("go %s in %s: %w\n%s", strings.Join(args, " "), root, err, out.String())
		}
	}
	return Binaries{
		Dir:         dir,
		Master:      filepath.Join(dir, "baton-master"),
		Worker:      filepath.Join(dir, "baton-worker"),
		Ledger:      filepath.Join(dir, "ledger"),
		ChaosWorker: filepath.Join(dir, "chaosworker"),
	}, nil
}

// moduleRoot walks up from the working directory (the package directory under
// go test) to the directory holding go.mod.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("go.mod not found above the working directory")
		}
		dir = parent
	}
}

// Proc is one daemon process with its output in a log file.
type Proc struct {
	Name    string
	LogPath string
	t       testing.TB
	cmd     *exec.Cmd
	done    chan struct{}
	state   *os.ProcessState
	waitErr error
}

// Start runs bin with args; stdout and stderr go to a file in t.TempDir(). BATON_*
// variables of the test environment are not passed on (flags say everything), so
// a developer's shell settings cannot change the scenario. When t ends the process
// is killed if still running, and on failure the tail of its log is logged.
func Start(t testing.TB, name, bin string, args []string, env ...string) *Proc {
	t.Helper()
	p, err := StartProc(t, t.TempDir(), name, bin, args, env...)
	if err != nil {
		t.Fatalf("e2e: %v", err)
	}
	return p
}

// StartProc is Start for callers outside the test goroutine: it returns an error
// instead of failing the test, and writes the log to logDir (appending, so a
// restarted process of the same name keeps one log).
func StartProc(t testing.TB, logDir, name, bin string, args []string, env ...string) (*Proc, error) {
	p, err := startProc(t, logDir, name, bin, args, env...)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { p.stop(t.Failed()) })
	return p, nil
}

// startProc starts a process and leaves stopping it to the caller (Proc.stop).
func startProc(t testing.TB, logDir, name, bin string, args []string, env ...string) (*Proc, error) {
	logPath := filepath.Join(logDir, name+".log")
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("create log for %s: %w", name, err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(cleanEnv(), env...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = procAttr()
	if err := cmd.Start(); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	_ = f.Close() // the child has its own descriptor
	p := &Proc{Name: name, LogPath: logPath, t: t, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		p.state = cmd.ProcessState
		close(p.done)
	}()
	return p, nil
}

// stop kills the process if it still runs, fails the test if the race detector
// reported a data race in its log and, if failed, logs the tail of its log.
func (p *Proc) stop(failed bool) {
	if !p.Exited() {
		_ = p.cmd.Process.Kill()
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			p.t.Logf("e2e: %s (pid %d) did not exit after SIGKILL", p.Name, p.Pid())
		}
	}
	if race := p.raceReport(); race != "" {
		p.t.Errorf("e2e: the race detector reported a data race in %s (pid %d):\n%s", p.Name, p.Pid(), race)
	}
	if failed {
		p.t.Logf("e2e: last lines of %s (pid %d, %s):\n%s", p.Name, p.Pid(), p.describeExit(), p.Tail(60))
	}
}

// raceReport is the first data race report in the process's log ("" if none).
// A race-enabled binary prints it when the race happens, so it is there even
// when the process is SIGKILLed afterwards.
func (p *Proc) raceReport() string {
	b, err := os.ReadFile(p.LogPath)
	if err != nil {
		return ""
	}
	const marker = "WARNING: DATA RACE"
	i := bytes.Index(b, []byte(marker))
	if i < 0 {
		return ""
	}
	rest := b[i:]
	if j := bytes.Index(rest, []byte("\n==================")); j >= 0 {
		rest = rest[:j]
	}
	return string(rest)
}

func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "BATON_") {
			env = append(env, kv)
		}
	}
	return env
}

// MasterArgs are the common flags of a master.
func MasterArgs(dsn, name string, extra ...string) []string {
	return append([]string{"--database-url", dsn, "--log-format", "console", "--name", name}, extra...)
}

// WorkerArgs are the common flags of a worker.
func WorkerArgs(dsn, name, group string, slots int, extra ...string) []string {
	return append([]string{"--database-url", dsn, "--log-format", "console", "--name", name,
		"--group", group, "--slots", strconv.Itoa(slots)}, extra...)
}

// Pid is the process id.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Signal sends sig; it fails the test if the process is gone.
func (p *Proc) Signal(sig syscall.Signal) {
	p.t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		p.t.Fatalf("e2e: signal %v to %s (pid %d): %v", sig, p.Name, p.Pid(), err)
	}
	p.t.Logf("e2e: sent %s to %s (pid %d)", signalName(sig), p.Name, p.Pid())
}

// SignalErr sends sig and returns the error instead of failing the test (for
// callers outside the test goroutine, and processes that may have died already).
func (p *Proc) SignalErr(sig syscall.Signal) error {
	if err := p.cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("signal %s to %s (pid %d): %w", signalName(sig), p.Name, p.Pid(), err)
	}
	return nil
}

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Kill sends SIGKILL and waits for the process to be reaped.
func (p *Proc) Kill() {
	p.t.Helper()
	p.Signal(syscall.SIGKILL)
	p.Wait(30 * time.Second)
}

// Stop sends SIGSTOP (the process freezes; its task children, in their own
// process groups, keep running).
func (p *Proc) Stop() { p.t.Helper(); p.Signal(syscall.SIGSTOP) }

// Cont sends SIGCONT.
func (p *Proc) Cont() { p.t.Helper(); p.Signal(syscall.SIGCONT) }

// Term sends SIGTERM (graceful shutdown); use Wait for the exit.
func (p *Proc) Term() { p.t.Helper(); p.Signal(syscall.SIGTERM) }

// Wait waits up to timeout for the process to exit and returns its exit code
// (-1 when killed by a signal). It fails the test on timeout.
func (p *Proc) Wait(timeout time.Duration) int {
	p.t.Helper()
	select {
	case <-p.done:
		return p.state.ExitCode()
	case <-time.After(timeout):
		p.t.Fatalf("e2e: %s (pid %d) did not exit within %s", p.Name, p.Pid(), timeout)
		return 0
	}
}

// Exited reports whether the process has exited.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *Proc) describeExit() string {
	if !p.Exited() {
		return "running"
	}
	if p.waitErr != nil {
		return "exit: " + p.waitErr.Error()
	}
	return "exit status 0"
}

// Tail returns the last n lines of the process log.
func (p *Proc) Tail(n int) string {
	f, err := os.Open(p.LogPath)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > 4*n {
			lines = append(lines[:0], lines[len(lines)-n:]...)
		}
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// PollInterval is how often WaitFor re-evaluates its condition.
const PollInterval = 100 * time.Millisecond

// WaitFor polls cond every PollInterval until it returns true, and fails the test
// when timeout passes first. cond's string says where things stand; it is logged
// on timeout. The timeout is a generous upper bound for a hung system, never an
// assertion about speed.
func WaitFor(t testing.TB, timeout time.Duration, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, desc := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("e2e: condition not met within %s: %s", timeout, desc)
		}
		time.Sleep(PollInterval)
	}
}

// Cluster is a database with masters and workers running against it.
type Cluster struct {
	T       testing.TB
	Pool    *pgxpool.Pool
	DSN     string
	Bins    Binaries
	Group   string
	Masters []*Proc
	Workers []*Proc
}

// NewCluster prepares a cluster on an (already migrated) database and creates the
// ledger table the shell tasks write to. Processes are started with StartMaster
// and StartWorker.
func NewCluster(t testing.TB, pool *pgxpool.Pool, dsn, group string) *Cluster {
	t.Helper()
	c := &Cluster{T: t, Pool: pool, DSN: dsn, Bins: Build(t), Group: group}
	c.Exec(chaos.LedgerSchema)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("e2e: database state at the end:\n%s", c.Describe())
		}
	})
	return c
}

// StartMaster starts a master named name.
func (c *Cluster) StartMaster(name string, extra ...string) *Proc {
	c.T.Helper()
	p := Start(c.T, name, c.Bins.Master, MasterArgs(c.DSN, name, extra...))
	c.Masters = append(c.Masters, p)
	return p
}

// StartWorker starts a worker named name in the cluster's group.
func (c *Cluster) StartWorker(name string, slots int, extra ...string) *Proc {
	c.T.Helper()
	p := Start(c.T, name, c.Bins.Worker, WorkerArgs(c.DSN, name, c.Group, slots, extra...))
	c.Workers = append(c.Workers, p)
	return p
}

// WaitReady waits until every started master and worker has an alive session.
func (c *Cluster) WaitReady(timeout time.Duration) {
	c.T.Helper()
	WaitFor(c.T, timeout, func() (bool, string) {
		m := c.Int(`SELECT count(*) FROM master_sessions WHERE state = 'alive'`)
		w := c.Int(`SELECT count(*) FROM worker_sessions WHERE state = 'alive' AND group_name = $1`, c.Group)
		return m == int64(len(c.Masters)) && w == int64(len(c.Workers)),
			fmt.Sprintf("alive master sessions %d/%d, alive worker sessions %d/%d", m, len(c.Masters), w, len(c.Workers))
	})
}

// LedgerCommand is a shell command that records the attempt in the ledger, then runs then.
func (c *Cluster) LedgerCommand(then string) string {
	cmd := shellQuote(c.Bins.Ledger)
	if then != "" {
		cmd += " && " + then
	}
	return cmd
}

// SubmitLedgerTasks submits n shell tasks of the form `ledger && then` to the
// cluster's group and returns their ids.
func (c *Cluster) SubmitLedgerTasks(n int, then string) []int64 {
	c.T.Helper()
	payload, err := json.Marshal(map[string]any{
		"command": c.LedgerCommand(then),
		"env":     map[string]string{"BATON_LEDGER_DSN": c.DSN},
	})
	if err != nil {
		c.T.Fatal(err)
	}
	specs := make([]submit.Spec, n)
	for i := range specs {
		specs[i] = submit.Spec{Group: c.Group, Kind: submit.KindShell, Payload: payload}
	}
	ids, err := submit.Many(context.Background(), c.Pool, specs)
	if err != nil {
		c.T.Fatalf("e2e: submit %d tasks: %v", n, err)
	}
	return ids
}

// WorkerSession is the first (or, with latest, the newest) session id of worker name.
func (c *Cluster) WorkerSession(name string, latest bool) int64 {
	c.T.Helper()
	order := "ASC"
	if latest {
		order = "DESC"
	}
	return c.Int(`SELECT id FROM worker_sessions WHERE name = $1 ORDER BY id `+order+` LIMIT 1`, name)
}

// MasterSession is the first session id of master name.
func (c *Cluster) MasterSession(name string) int64 {
	c.T.Helper()
	return c.Int(`SELECT id FROM master_sessions WHERE name = $1 ORDER BY id LIMIT 1`, name)
}

// WaitAllTerminal waits until no task is queued, dispatched or running.
func (c *Cluster) WaitAllTerminal(timeout time.Duration) {
	c.T.Helper()
	WaitFor(c.T, timeout, func() (bool, string) {
		var active, done int64
		c.Scan(`SELECT count(*) FILTER (WHERE state NOT IN ('succeeded', 'failed', 'timed_out', 'canceled')),
		               count(*) FILTER (WHERE state IN ('succeeded', 'failed', 'timed_out', 'canceled')) FROM tasks`,
			nil, &active, &done)
		return active == 0, fmt.Sprintf("%d tasks still active, %d terminal", active, done)
	})
}

// Exec runs a statement and fails the test on error.
func (c *Cluster) Exec(sql string, args ...any) {
	c.T.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.Pool.Exec(ctx, sql, args...); err != nil {
		c.T.Fatalf("e2e: %s: %v", sql, err)
	}
}

// Int runs a query returning one integer.
func (c *Cluster) Int(sql string, args ...any) int64 {
	c.T.Helper()
	var v int64
	c.Scan(sql, args, &v)
	return v
}

// Scan runs a one-row query into dest.
func (c *Cluster) Scan(sql string, args []any, dest ...any) {
	c.T.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.Pool.QueryRow(ctx, sql, args...).Scan(dest...); err != nil {
		c.T.Fatalf("e2e: %s: %v", sql, err)
	}
}

// Strings runs a query whose rows are rendered as one line each (first column text).
func (c *Cluster) Strings(sql string, args ...any) []string {
	c.T.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rows, err := c.Pool.Query(ctx, sql, args...)
	if err != nil {
		c.T.Fatalf("e2e: %s: %v", sql, err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			c.T.Fatalf("e2e: %s: %v", sql, err)
		}
		out = append(out, s)
	}
	if err := rows.Err(); err != nil {
		c.T.Fatalf("e2e: %s: %v", sql, err)
	}
	return out
}

// Describe summarizes the scheduler tables for a failure message. It never fails
// the test (it runs from cleanups).
func (c *Cluster) Describe() string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var b strings.Builder
	for _, q := range []struct{ title, sql string }{
		{"tasks by state", `SELECT state || ': ' || count(*) FROM tasks GROUP BY state ORDER BY state`},
		{"attempts by session/outcome", `SELECT worker_session_id || ' ' || coalesce(outcome, '(open)') || ': ' || count(*)
			FROM task_attempts GROUP BY worker_session_id, outcome ORDER BY 1`},
		{"worker sessions", `SELECT id || ' ' || name || ' ' || state || ' hb_age=' || round(extract(epoch FROM now() - last_heartbeat_at)::numeric, 1)
			FROM worker_sessions ORDER BY id`},
		{"master sessions", `SELECT id || ' ' || name || ' ' || state FROM master_sessions ORDER BY id`},
		{"failover events", `SELECT id || ' ' || kind || ' session=' || session_id || ' finished=' || coalesce(finished_at::text, 'NULL')
			|| ' reassigned=' || tasks_reassigned || ' queued=' || tasks_queued || ' passes=' || passes FROM failover_events ORDER BY id`},
		{"dispatch queue", `SELECT coalesce(target_session_id::text, 'untargeted') || ' ' || reason || ': ' || count(*)
			FROM dispatch_queue GROUP BY target_session_id, reason ORDER BY target_session_id, reason`},
	} {
		fmt.Fprintf(&b, "  %s:\n", q.title)
		rows, err := c.Pool.Query(ctx, q.sql)
		if err != nil {
			fmt.Fprintf(&b, "    (error: %v)\n", err)
			continue
		}
		for rows.Next() {
			var s string
			if err := rows.Scan(&s); err != nil {
				fmt.Fprintf(&b, "    (error: %v)\n", err)
				break
			}
			fmt.Fprintf(&b, "    %s\n", s)
		}
		rows.Close()
	}
	return b.String()
}

func signalName(sig syscall.Signal) string {
	switch sig {
	case syscall.SIGKILL:
		return "SIGKILL"
	case syscall.SIGSTOP:
		return "SIGSTOP"
	case syscall.SIGCONT:
		return "SIGCONT"
	case syscall.SIGTERM:
		return "SIGTERM"
	}
	return sig.String()
}

func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
