//go:build linux

package contain

import (
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The supervisor is the worker's own executable run again (/proc/self/exe) with
// envMarker set: init() below notices the marker and runs the supervisor instead
// of the program's main, the way moby's reexec package works. Any Go binary that
// links this package (every binary that embeds a baton worker does, through the
// executor) can therefore supervise its tasks without a separate program on disk.
// Packages initialised before this one run their init() in the supervisor too,
// so they must not have side effects beyond their own process.
const (
	envMarker = "BATON_CONTAIN_SUPERVISOR" // "task": supervise argv[1:]; "probe": see probe
	envCgroup = "BATON_CONTAIN_CGROUP"     // the cgroup the task's tree runs in (below the supervisor's), if any
	envFrozen = "BATON_CONTAIN_FROZEN_MS"  // Options.FrozenAfter in milliseconds; "" or 0: off
	envLease  = "BATON_CONTAIN_LEASE"      // "<long>,<short>": the lease at start (see leaseMsg); "": none
	envLock   = "BATON_CONTAIN_LOCK"       // lockFD: fdLock is the liveness lock's socket; lockLost: none, the short deadline applies; "": crash detection off

	supervisorArg0 = "baton-supervise" // what ps shows
	probeArg0      = "baton-contain-probe"
	probeGreeting  = "baton-contain-probe ok\n"
)

// Descriptors the worker passes to the supervisor (ExtraFiles 0 and 1).
const (
	fdLife   = 3 // read end of a pipe only the worker writes to: EOF means the worker is gone or kills the task
	fdStatus = 4 // the supervisor reports "pid N", then "exit <wait status>" or "error <text>"
	fdLock   = 5 // with envLock=lockFD: the worker's liveness lock connection (never read or written)
)

// Values of envLock.
const (
	lockFD   = "fd"
	lockLost = "lost"
)

// leaseLen is the size of one lease message on the life pipe: two int64 CLOCK_MONOTONIC
// readings in nanoseconds, little endian — long (0: none) and short (0: none).
// Writes of this size are atomic on a pipe, so messages never interleave.
const leaseLen = 16

// monoNow is CLOCK_MONOTONIC in nanoseconds: one clock for every process of the
// machine (Go's own monotonic readings cannot be passed between processes).
func monoNow() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		panic("contain: clock_gettime(CLOCK_MONOTONIC): " + err.Error())
	}
	return ts.Nano()
}

// lease is what a supervisor knows of its worker's lease: it kills the tree at
// long, or at short once the worker's liveness lock connection hung up.
type lease struct {
	long, short int64 // CLOCK_MONOTONIC ns; 0: none
	hungUp      bool
}

// deadline is the moment the tree must be dead (0: none).
func (l lease) deadline() int64 {
	d := l.long
	if l.hungUp && l.short > 0 && (d == 0 || l.short < d) {
		d = l.short
	}
	return d
}

// update takes the later of each deadline: the worker's lease only moves forward
// (each successful heartbeat), so an older message that arrives late changes nothing.
func (l *lease) update(long, short int64) {
	l.long = max(l.long, long)
	l.short = max(l.short, short)
}

// unread reports whether fd has data waiting to be read.
func unread(fd int) bool {
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, 0)
	return err == nil && n > 0 && fds[0].Revents&unix.POLLIN != 0
}

func parseLease(s string) (long, short int64) {
	a, b, _ := strings.Cut(s, ",")
	long, _ = strconv.ParseInt(a, 10, 64)
	short, _ = strconv.ParseInt(b, 10, 64)
	return long, short
}

// watchHangup closes hung once the socket fd reports a hangup (the peer closed
// it, it was reset, or it failed). It polls without reading: the bytes belong to
// the worker.
func watchHangup(fd int, hung chan<- struct{}) {
	const gone = unix.POLLRDHUP | unix.POLLHUP | unix.POLLERR | unix.POLLNVAL
	for {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLRDHUP}}
		n, err := unix.Poll(fds, -1)
		if err == unix.EINTR {
			continue
		}
		if err != nil || (n > 0 && fds[0].Revents&gone != 0) {
			close(hung)
			return
		}
	}
}

// prSetChildSubreaper is PR_SET_CHILD_SUBREAPER from linux/prctl.h.
const prSetChildSubreaper = 36

func init() {
	switch os.Getenv(envMarker) {
	case "":
		return
	case "probe":
		exit(probe())
	default:
		exit(supervise())
	}
}

// exit ends the process without the runtime's exit hooks: a race-enabled build
// would otherwise sleep a second at exit (GORACE atexit_sleep_ms), on every task.
func exit(code int) { syscall.Exit(code) }

// probe lets Open check, with a real process, that re-executing this binary
// reaches this hook and (in cgroup mode) that a process starts in the cgroup it
// was cloned into: it greets, then lives until its stdin closes.
func probe() int {
	_, _ = os.Stdout.WriteString(probeGreeting)
	_, _ = io.Copy(io.Discard, os.Stdin)
	return 0
}

// supervise runs argv[1:] as the task's shell and keeps its whole process tree
// from outliving the worker:
//
//   - it is a child subreaper, so descendants that double-fork or call setsid are
//     reparented to it and stay in the tree it can see and kill;
//   - when the life pipe reaches EOF (the worker exited, was SIGKILLed, or kills
//     the attempt) it kills the tree: cgroup.kill of the tree's cgroup when it has
//     one, and a SIGKILL of every descendant until none is left, reaping them all;
//   - the worker starts it with Pdeathsig SIGHUP; SIGHUP kills the tree when the
//     parent process is gone (SIGHUP alone can also mean only the forking thread
//     ended, so the parent pid is checked); SIGTERM and SIGINT kill the tree;
//   - it holds the worker's lease: the worker sends it over the life pipe (and
//     in its environment at start) as absolute CLOCK_MONOTONIC deadlines, long =
//     last successful heartbeat sent + self-fence, short = the same + crash fence.
//     It kills the tree at long, and at short once the socket of the worker's
//     liveness lock connection, which it shares (fd 5) but never uses, hangs up —
//     Postgres freed the lock, and a master may declare the session dead at
//     last heartbeat + crash-detect-after, later than short. It runs in its own
//     process, so a worker that is frozen (SIGSTOP, a stall) delays none of this.
//     Without a lease (FrozenAfter only), a ping extends long to now + FrozenAfter;
//   - holding the lock socket, it also keeps the lock held after a worker crash
//     until it has killed its tree and exited: a freed lock means its tree is gone;
//   - when the shell exits, its status is reported and the descendants it left
//     behind are killed: nothing of an attempt runs after the attempt ended.
func supervise() int {
	cgroup := os.Getenv(envCgroup)
	frozenMs, _ := strconv.Atoi(os.Getenv(envFrozen))
	frozenAfter := time.Duration(frozenMs) * time.Millisecond
	var l lease
	l.long, l.short = parseLease(os.Getenv(envLease))
	if l.long == 0 && frozenAfter > 0 {
		l.long = monoNow() + int64(frozenAfter)
	}
	lockMode := os.Getenv(envLock)
	l.hungUp = lockMode == lockLost
	for _, k := range []string{envMarker, envCgroup, envFrozen, envLease, envLock} {
		_ = os.Unsetenv(k)
	}
	// The task must not inherit the worker's pipes: a descendant holding the
	// status pipe would hide the supervisor's exit from the worker. Nor the lock
	// socket, which is the worker's alone.
	syscall.CloseOnExec(fdLife)
	syscall.CloseOnExec(fdStatus)
	hung := make(chan struct{})
	if lockMode == lockFD {
		syscall.CloseOnExec(fdLock)
		go watchHangup(fdLock, hung)
	}
	life := os.NewFile(fdLife, "life")
	status := os.NewFile(fdStatus, "status")
	ppid := os.Getppid()

	// killTree kills the whole tree and reaps it. The supervisor lives in the
	// attempt's cgroup and the tree in a cgroup below it, so cgroup.kill kills
	// everything of the tree at once but not the supervisor, which stays to reap:
	// no process of the attempt is left as a zombie.
	killTree := func() {
		if cgroup != "" {
			_ = os.WriteFile(cgroup+"/cgroup.kill", []byte("1"), 0)
		}
		killDescendants(10 * time.Second)
	}
	if _, _, errno := syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 1, 0); errno != 0 {
		fmt.Fprintf(status, "error prctl(PR_SET_CHILD_SUBREAPER): %v\n", errno)
		return 1
	}
	if len(os.Args) < 2 {
		fmt.Fprintf(status, "error supervisor started without a command\n")
		return 2
	}

	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT)
	sigchld := make(chan os.Signal, 1)
	signal.Notify(sigchld, syscall.SIGCHLD)

	sys := &syscall.SysProcAttr{Setpgid: true}
	if cgroup != "" {
		fd, err := syscall.Open(cgroup, syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
		if err != nil {
			fmt.Fprintf(status, "error open cgroup %s: %v\n", cgroup, err)
			return 1
		}
		sys.UseCgroupFD, sys.CgroupFD = true, fd
	}
	pid, err := syscall.ForkExec(os.Args[1], os.Args[1:], &syscall.ProcAttr{
		Env:   os.Environ(),
		Files: []uintptr{0, 1, 2},
		Sys:   sys,
	})
	if err != nil {
		fmt.Fprintf(status, "error start %s: %v\n", os.Args[1], err)
		return 1
	}
	fmt.Fprintf(status, "pid %d\n", pid)

	// Reap every child: the shell, and orphans reparented to this subreaper.
	exited := make(chan syscall.WaitStatus, 1)
	go func() {
		for {
			for {
				var ws syscall.WaitStatus
				p, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
				if err == syscall.EINTR {
					continue
				}
				if err != nil || p <= 0 {
					break
				}
				if p == pid {
					exited <- ws
				}
			}
			<-sigchld
		}
	}()
	// The worker writes its lease to the life pipe (leaseLen bytes) when it
	// changes and every FrozenAfter/8; EOF means it is gone or kills the attempt.
	lifeEnded := make(chan struct{})
	pinged := make(chan struct{}, 1)
	var recvMu sync.Mutex
	var recv lease
	go func() {
		buf := make([]byte, leaseLen)
		for {
			if _, err := io.ReadFull(life, buf); err != nil {
				close(lifeEnded)
				return
			}
			long, short := int64(binary.LittleEndian.Uint64(buf)), int64(binary.LittleEndian.Uint64(buf[8:]))
			if long == 0 && frozenAfter > 0 {
				long = monoNow() + int64(frozenAfter) // a ping without a lease
			}
			recvMu.Lock()
			recv.update(long, short)
			recvMu.Unlock()
			select {
			case pinged <- struct{}{}:
			default:
			}
		}
	}()
	// One timer, at the lease's deadline; re-checked against the clock when it fires.
	expired := time.NewTimer(time.Hour)
	expired.Stop()
	arm := func() {
		if d := l.deadline(); d != 0 {
			expired.Reset(time.Duration(max(d-monoNow(), 0)))
		} else {
			expired.Stop()
		}
	}
	arm()

	for {
		select {
		case ws := <-exited:
			fmt.Fprintf(status, "exit %d\n", uint32(ws))
			killTree()
			return 0
		case <-lifeEnded:
			killTree()
			return 137
		case <-pinged:
			recvMu.Lock()
			l.update(recv.long, recv.short)
			recvMu.Unlock()
			arm()
		case <-hung:
			hung = nil
			l.hungUp = true
			arm()
		case <-expired.C:
			recvMu.Lock()
			l.update(recv.long, recv.short)
			recvMu.Unlock()
			if d := l.deadline(); d == 0 || monoNow() < d {
				arm()
				continue
			}
			if unread(fdLife) {
				// Leases the worker sent before now are not read yet (this
				// process was slow to start or scheduled late): read them first.
				expired.Reset(time.Millisecond)
				continue
			}
			// The worker's lease ran out: it did not heartbeat in time, and it
			// is frozen (SIGSTOP, a stall) or cut off; masters may move this
			// attempt from now on (sooner once its lock connection is gone).
			if l.hungUp && l.short > 0 && l.short <= l.long {
				fmt.Fprintf(status, "lease the worker's liveness lock connection closed and it did not heartbeat within its crash fence (frozen?); the task was killed so that it cannot run alongside its failover\n")
			} else {
				fmt.Fprintf(status, "lease the worker did not renew its lease with its task supervisor (frozen?); the task was killed so that it cannot run alongside its failover\n")
			}
			killTree()
			return 137
		case sig := <-sigs:
			if sig == syscall.SIGHUP && os.Getppid() == ppid {
				continue // the thread that started us ended, not the worker
			}
			killTree()
			return 137
		}
	}
}
