//go:build linux

package contain

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

var managerSeq atomic.Int64

// probeTimeout bounds Open's probe process.
const probeTimeout = 10 * time.Second

// Manager starts contained processes. One per worker; Close it when the worker stops.
type Manager struct {
	mech     Mechanism
	reason   string // why cgroups are not used (Auto only)
	exe      string
	dir      string // this Manager's cgroup directory (cgroup mode)
	stale    int
	staleErr error
	seq      atomic.Int64

	frozenAfter time.Duration
	stopPing    chan struct{}

	leaseMu sync.Mutex
	lease   Lease // zero: none set (pings then extend a FrozenAfter timer)

	// lockMu is held for reading while a process is started, so the lock socket
	// passed to it stays open until it has its own copy.
	lockMu   sync.RWMutex
	lockFile *os.File // the liveness lock connection's socket (nil: none held)
	lockGen  int64    // bumped by each SetLockConn with a connection

	mu     sync.Mutex
	live   map[*Process]struct{}
	closed bool
}

// Open detects what the host allows — never assumes — and prepares it: with
// cgroup v2 usable (a cgroup2 mount showing this process's cgroup, writable, a
// real process cloned into a new cgroup lands there) it creates the Manager's
// cgroup directory under <own cgroup>/baton/ after removing the directories of
// previous incarnations whose owner process is gone (killing what still runs in
// them). It also checks, with a real process, that the supervisor hook runs.
func Open(opts Options) (*Manager, error) {
	if opts.FrozenAfter < 0 {
		return nil, fmt.Errorf("frozen-after %s is negative", opts.FrozenAfter)
	}
	m := &Manager{mech: opts.Mechanism, exe: "/proc/self/exe", live: map[*Process]struct{}{},
		frozenAfter: opts.FrozenAfter, stopPing: make(chan struct{})}
	switch m.mech {
	case Auto, Cgroup:
		dirName := opts.CgroupDir
		if dirName == "" {
			dirName = cgroupDirName
		}
		err := m.openCgroup(dirName)
		if err == nil {
			m.mech = Cgroup
			m.startPinging()
			return m, nil
		}
		if m.mech == Cgroup {
			return nil, fmt.Errorf("cgroup containment: %w", err)
		}
		m.mech, m.reason = Supervisor, err.Error()
	case Supervisor:
		m.reason = "supervisor chosen by configuration"
	default:
		return nil, fmt.Errorf("containment mechanism %q: want cgroup, supervisor or empty (auto)", opts.Mechanism)
	}
	if err := m.probe(""); err != nil {
		return nil, err
	}
	m.startPinging()
	return m, nil
}

// startPinging sends the lease to every live supervisor every FrozenAfter/8,
// until Close: without a lease (SetLease), each ping is the supervisors' proof
// that the worker still runs; with one, it repeats what SetLease sent.
func (m *Manager) startPinging() {
	if m.frozenAfter <= 0 {
		return
	}
	go func() {
		tick := time.NewTicker(m.frozenAfter / 8)
		defer tick.Stop()
		for {
			select {
			case <-m.stopPing:
				return
			case <-tick.C:
			}
			m.pingAll()
		}
	}()
}

// pingAll sends the current lease to every live supervisor.
func (m *Manager) pingAll() {
	msg := m.leaseMsg()
	m.mu.Lock()
	defer m.mu.Unlock()
	for p := range m.live {
		p.ping(msg)
	}
}

// Lease is the worker's lease as its supervisors enforce it: every tree is
// killed at Long, and at Short once the supervisor saw its liveness lock socket
// hang up (or at once if it started without one). Both are monotonic readings of
// this process's clock (time.Now() plus durations); zero means none.
type Lease struct {
	Long, Short time.Time
}

// SetLease sends the worker's new lease to every supervisor at once (and to those
// started later). The worker calls it on each successful heartbeat: Long = sent
// + self-fence, Short = sent + crash fence (zero when crash detection is off).
func (m *Manager) SetLease(l Lease) {
	m.leaseMu.Lock()
	m.lease = l
	m.leaseMu.Unlock()
	m.pingAll()
}

// monoOf converts a time of this process's monotonic clock to CLOCK_MONOTONIC
// nanoseconds (0 for the zero time). The clock is read first, so the result errs
// early, never late.
func monoOf(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	now := monoNow()
	return now + int64(time.Until(t))
}

// leaseMsg is the current lease as a life pipe message; without a lease, long
// is 0 and the supervisor extends its FrozenAfter deadline from now.
func (m *Manager) leaseMsg() []byte {
	m.leaseMu.Lock()
	l := m.lease
	m.leaseMu.Unlock()
	msg := make([]byte, leaseLen)
	binary.LittleEndian.PutUint64(msg, uint64(monoOf(l.Long)))
	binary.LittleEndian.PutUint64(msg[8:], uint64(monoOf(l.Short)))
	return msg
}

// SetLockConn shares conn's socket — the connection that holds the worker's
// liveness lock — with every supervisor started from now on (nil: the lock is
// not held; supervisors started meanwhile apply the short deadline at once).
// A supervisor never reads or writes it: holding it keeps the lock held after a
// crash of the worker until the supervisor killed its tree and exited, and it
// watches it for a hangup (Postgres closed the session: the lock is free).
func (m *Manager) SetLockConn(conn net.Conn) error {
	var f *os.File
	if conn != nil {
		var err error
		if f, err = DupConn(conn); err != nil {
			return err
		}
	}
	m.lockMu.Lock()
	old := m.lockFile
	m.lockFile = f
	if f != nil {
		m.lockGen++
	}
	m.lockMu.Unlock()
	if old != nil {
		_ = old.Close()
	}
	return nil
}

// StaleLock reports whether a live supervisor enforces the short deadline
// without holding the current lock connection (it started while the lock was not
// held, or holds a connection since lost): its tree dies at Short unless the
// lease is renewed, so the worker must heartbeat as often as while the lock is lost.
func (m *Manager) StaleLock() bool {
	m.lockMu.RLock()
	gen := m.lockGen
	if m.lockFile == nil {
		gen = -1
	}
	m.lockMu.RUnlock()
	m.mu.Lock()
	defer m.mu.Unlock()
	for p := range m.live {
		if p.crash && p.lockGen != gen {
			return true
		}
	}
	return false
}

func (m *Manager) openCgroup(dirName string) error {
	own, err := ownCgroup()
	if err != nil {
		return err
	}
	if err := syscall.Access(filepath.Join(own, "cgroup.procs"), 2 /* W_OK */); err != nil {
		return fmt.Errorf("cgroup %s is not delegated to this process (cgroup.procs: %w)", own, err)
	}
	if dirName != filepath.Base(dirName) || dirName == "." || dirName == ".." {
		return fmt.Errorf("cgroup directory name %q must be one path element", dirName)
	}
	base := filepath.Join(own, dirName)
	if err := os.Mkdir(base, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("create cgroup %s: %w", base, err)
	}
	// A leftover that cannot be removed now stays for the next start; it does
	// not stop this worker from using cgroups.
	m.stale, m.staleErr = cleanStale(base)
	name, err := managerName(managerSeq.Add(1))
	if err != nil {
		return err
	}
	m.dir = filepath.Join(base, name)
	if err := os.Mkdir(m.dir, 0o755); err != nil {
		return fmt.Errorf("create cgroup %s: %w", m.dir, err)
	}
	probeDir := filepath.Join(m.dir, "probe")
	if err := os.Mkdir(probeDir, 0o755); err != nil {
		_ = syscall.Rmdir(m.dir)
		return fmt.Errorf("create cgroup %s: %w", probeDir, err)
	}
	err = m.probe(probeDir)
	if rmErr := removeCgroup(probeDir, removeGrace); err == nil && rmErr != nil {
		err = rmErr
	}
	if err != nil {
		_ = removeCgroup(m.dir, removeGrace)
		return err
	}
	return nil
}

// probe starts the supervisor hook in probe mode (in cgroup dir if set), checks
// it answers and, with a cgroup, that it runs inside it.
func (m *Manager) probe(dir string) error {
	cmd := &exec.Cmd{Path: m.exe, Args: []string{probeArg0}, Env: []string{envMarker + "=probe"}}
	cmd.SysProcAttr = &syscall.SysProcAttr{}
	if dir != "" {
		fd, err := os.Open(dir)
		if err != nil {
			return fmt.Errorf("open cgroup %s: %w", dir, err)
		}
		defer fd.Close()
		cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, int(fd.Fd())
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start a probe process (%s): %w", m.exe, err)
	}
	defer func() {
		_ = stdin.Close()
		_ = cmd.Wait()
	}()
	// A binary whose earlier init() blocks must not block the worker's start.
	timer := time.AfterFunc(probeTimeout, func() { _ = cmd.Process.Kill() })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if !timer.Stop() && err != nil {
		err = fmt.Errorf("no answer within %s: %w", probeTimeout, err)
	}
	if err != nil || line != probeGreeting {
		return fmt.Errorf("%s does not run the supervisor hook (answered %q: %v); link internal/contain into the worker binary", m.exe, line, err)
	}
	if dir == "" {
		return nil
	}
	want, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return err
	}
	got, err := os.ReadFile("/proc/" + strconv.Itoa(cmd.Process.Pid) + "/cgroup")
	if err != nil {
		return fmt.Errorf("read the probe's cgroup: %w", err)
	}
	wantPath := cgroupV2Path(string(want)) + "/" + filepath.Base(filepath.Dir(filepath.Dir(dir))) + "/" + filepath.Base(filepath.Dir(dir)) + "/" + filepath.Base(dir)
	if p := cgroupV2Path(string(got)); strings.TrimPrefix(p, "/") != strings.TrimPrefix(wantPath, "/") {
		return fmt.Errorf("a process cloned into cgroup %s landed in %q", dir, p)
	}
	return nil
}

func cgroupV2Path(procCgroup string) string {
	for _, line := range strings.Split(procCgroup, "\n") {
		if rest, ok := strings.CutPrefix(line, "0::"); ok {
			return strings.TrimSuffix(rest, "/")
		}
	}
	return ""
}

// Mechanism is the mechanism in use (never Auto).
func (m *Manager) Mechanism() Mechanism { return m.mech }

// Reason says why cgroups are not used ("" when they are).
func (m *Manager) Reason() string { return m.reason }

// StaleRemoved is how many cgroup directories of previous, dead workers Open removed.
func (m *Manager) StaleRemoved() int { return m.stale }

// StaleError is why some leftovers of dead workers could not be removed (nil if all were).
func (m *Manager) StaleError() error { return m.staleErr }

// Dir is the Manager's cgroup directory ("" without cgroups).
func (m *Manager) Dir() string { return m.dir }

// Process is a contained program and its whole tree.
type Process struct {
	m      *Manager
	cmd    *exec.Cmd
	cgroup string // the attempt's cgroup: the supervisor, and treeCgroup below it
	tree   string // the cgroup of the shell and its descendants
	life   *os.File

	statusDone chan struct{} // closed at EOF of the status pipe: the supervisor exited
	shellPid   atomic.Int64
	exitLine   string // "exit <ws>" or "error <text>", set before statusDone closes

	crash   bool  // the short deadline applies to it (crash detection is on)
	lockGen int64 // the lock connection it holds (0: none)

	killOnce   sync.Once
	killed     chan struct{}
	lifeClose  sync.Once
	lifeMu     sync.Mutex
	lifeClosed bool
}

// Start starts c under a supervisor, inside a fresh cgroup in cgroup mode.
func (m *Manager) Start(c Command) (*Process, error) {
	m.mu.Lock()
	closed := m.closed
	m.mu.Unlock()
	if closed {
		return nil, errors.New("containment is closed: the worker is stopping")
	}
	if len(c.Args) == 0 {
		return nil, errors.New("contain: empty command")
	}
	lifeR, lifeW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	statR, statW, err := os.Pipe()
	if err != nil {
		lifeR.Close()
		lifeW.Close()
		return nil, err
	}
	env := append(c.Env[:len(c.Env):len(c.Env)], envMarker+"=task")
	if m.frozenAfter > 0 {
		env = append(env, fmt.Sprintf("%s=%d", envFrozen, max(m.frozenAfter.Milliseconds(), 1)))
	}
	m.leaseMu.Lock()
	l := m.lease
	m.leaseMu.Unlock()
	extra := []*os.File{lifeR, statW}
	crash, gen := false, int64(0)
	if !l.Long.IsZero() {
		env = append(env, fmt.Sprintf("%s=%d,%d", envLease, monoOf(l.Long), monoOf(l.Short)))
	}
	// Until cmd.Start has copied it, the lock socket must stay open.
	m.lockMu.RLock()
	defer m.lockMu.RUnlock()
	if !l.Short.IsZero() {
		crash = true
		if m.lockFile != nil {
			env = append(env, envLock+"="+lockFD)
			extra = append(extra, m.lockFile)
			gen = m.lockGen
		} else {
			env = append(env, envLock+"="+lockLost)
		}
	}
	cmd := &exec.Cmd{
		Path:       m.exe,
		Args:       append([]string{supervisorArg0}, c.Args...),
		Dir:        c.Dir,
		Stdout:     c.Stdout,
		Stderr:     c.Stderr,
		ExtraFiles: extra,
		WaitDelay:  OutputGrace,
		SysProcAttr: &syscall.SysProcAttr{
			Setpgid:   true,
			Pdeathsig: syscall.SIGHUP,
		},
	}
	p := &Process{m: m, cmd: cmd, life: lifeW, statusDone: make(chan struct{}), killed: make(chan struct{}), crash: crash, lockGen: gen}
	var cgFD *os.File
	if m.mech == Cgroup {
		p.cgroup = filepath.Join(m.dir, fmt.Sprintf("%s-%d", sanitize(c.Name), m.seq.Add(1)))
		p.tree = filepath.Join(p.cgroup, "tree")
		if err := os.Mkdir(p.cgroup, 0o755); err != nil {
			closeAll(lifeR, lifeW, statR, statW)
			return nil, fmt.Errorf("create cgroup: %w", err)
		}
		if err := os.Mkdir(p.tree, 0o755); err != nil {
			closeAll(lifeR, lifeW, statR, statW)
			_ = syscall.Rmdir(p.cgroup)
			return nil, fmt.Errorf("create cgroup: %w", err)
		}
		if cgFD, err = os.Open(p.cgroup); err != nil {
			closeAll(lifeR, lifeW, statR, statW)
			_ = removeCgroup(p.cgroup, removeGrace)
			return nil, fmt.Errorf("open cgroup: %w", err)
		}
		cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, int(cgFD.Fd())
		env = append(env, envCgroup+"="+p.tree)
	}
	cmd.Env = env
	// Pdeathsig follows the thread that forks, not the process: fork from a
	// locked thread. (The supervisor double-checks its parent on SIGHUP, since
	// Go may still end that thread later.)
	runtime.LockOSThread()
	err = cmd.Start()
	runtime.UnlockOSThread()
	closeAll(lifeR, statW, cgFD)
	if err != nil {
		closeAll(lifeW, statR)
		if p.cgroup != "" {
			_ = removeCgroup(p.cgroup, removeGrace)
		}
		return nil, err
	}
	m.mu.Lock()
	m.live[p] = struct{}{}
	m.mu.Unlock()
	p.ping(m.leaseMsg()) // a lease set since env was built
	go p.readStatus(statR)
	return p, nil
}

func closeAll(fs ...*os.File) {
	for _, f := range fs {
		if f != nil {
			_ = f.Close()
		}
	}
}

func sanitize(name string) string {
	if name == "" {
		return "task"
	}
	return strings.Map(func(r rune) rune {
		if r == '/' || r == 0 || r == '\n' {
			return '_'
		}
		return r
	}, name)
}

func (p *Process) readStatus(r *os.File) {
	defer close(p.statusDone)
	defer r.Close()
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, "pid "); ok {
			if pid, err := strconv.Atoi(rest); err == nil {
				p.shellPid.Store(int64(pid))
			}
			continue
		}
		p.exitLine = line
	}
}

// Kill kills the whole tree now. It does not wait; Wait does. The supervisor
// is left to reap the tree and exit (so no zombie is left to init).
func (p *Process) Kill() {
	p.killOnce.Do(func() {
		if p.tree != "" {
			cgroupKill(p.tree)
		}
		p.closeLife()
		close(p.killed)
	})
}

func (p *Process) closeLife() {
	p.lifeClose.Do(func() {
		p.lifeMu.Lock()
		defer p.lifeMu.Unlock()
		_ = p.life.Close()
		p.lifeClosed = true
	})
}

// ping writes a lease message to the life pipe unless it is closed. The supervisor reads all the
// time, so the write does not block (a stopped supervisor would fill the 64 KiB
// pipe only after hours of pings; the write is then dropped).
func (p *Process) ping(b []byte) {
	p.lifeMu.Lock()
	defer p.lifeMu.Unlock()
	if !p.lifeClosed {
		_ = p.life.SetWriteDeadline(time.Now().Add(time.Second))
		_, _ = p.life.Write(b)
	}
}

// Wait waits until the program and every process of its tree are gone (within
// the bounds KillGrace, OutputGrace and the cgroup removal deadline), and removes
// the attempt's cgroup.
func (p *Process) Wait() Exit {
	select {
	case <-p.statusDone:
	case <-p.killed:
		select {
		case <-p.statusDone:
		case <-time.After(KillGrace):
			// The supervisor did not end (stopped, or stuck): kill it and the
			// shell's process group from here.
			_ = p.cmd.Process.Kill()
			if pid := p.shellPid.Load(); pid > 0 {
				_ = syscall.Kill(-int(pid), syscall.SIGKILL)
			}
			<-p.statusDone
		}
	}
	// The supervisor is gone. Whatever of the tree is left dies now: all of it
	// with a cgroup; without one, the shell's process group (a supervisor that
	// was itself SIGKILLed could not kill the rest).
	if p.cgroup != "" {
		cgroupKill(p.cgroup)
	} else if !strings.HasPrefix(p.exitLine, "exit ") {
		if pid := p.shellPid.Load(); pid > 0 {
			_ = syscall.Kill(-int(pid), syscall.SIGKILL)
		}
	}
	waitErr := p.cmd.Wait()
	p.closeLife()
	if p.cgroup != "" {
		_ = removeCgroup(p.cgroup, removeGrace)
	}
	p.m.mu.Lock()
	delete(p.m.live, p)
	p.m.mu.Unlock()
	return p.exit(waitErr)
}

func (p *Process) exit(waitErr error) Exit {
	if rest, ok := strings.CutPrefix(p.exitLine, "exit "); ok {
		if n, err := strconv.ParseUint(rest, 10, 32); err == nil {
			ws := syscall.WaitStatus(uint32(n))
			switch {
			case ws.Exited() && ws.ExitStatus() == 0:
				return Exit{Code: 0}
			case ws.Exited():
				return Exit{Code: ws.ExitStatus(), Err: fmt.Errorf("exit status %d", ws.ExitStatus())}
			case ws.Signaled():
				return Exit{Code: -1, Err: fmt.Errorf("signal: %v", ws.Signal())}
			}
		}
	}
	if rest, ok := strings.CutPrefix(p.exitLine, "error "); ok {
		return Exit{Code: -1, Err: errors.New(rest)}
	}
	if rest, ok := strings.CutPrefix(p.exitLine, "lease "); ok {
		return Exit{Code: -1, Err: fmt.Errorf("%w: %s", ErrLeaseExpired, rest)}
	}
	if waitErr == nil {
		waitErr = errors.New("exited without a status")
	}
	return Exit{Code: -1, Err: fmt.Errorf("task supervisor ended before the command: %w", waitErr)}
}

// Close kills every process still running and removes the Manager's cgroup.
// Start fails afterwards.
func (m *Manager) Close() error {
	m.mu.Lock()
	if !m.closed {
		close(m.stopPing)
	}
	m.closed = true
	live := make([]*Process, 0, len(m.live))
	for p := range m.live {
		live = append(live, p)
	}
	m.mu.Unlock()
	for _, p := range live {
		p.Kill()
	}
	_ = m.SetLockConn(nil)
	if m.dir == "" {
		return nil
	}
	return removeCgroup(m.dir, removeGrace)
}
