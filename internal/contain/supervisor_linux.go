//go:build linux

package contain

import (
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"
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

	supervisorArg0 = "baton-supervise" // what ps shows
	probeArg0      = "baton-contain-probe"
	probeGreeting  = "baton-contain-probe ok\n"
)

// Descriptors the worker passes to the supervisor (ExtraFiles 0 and 1).
const (
	fdLife   = 3 // read end of a pipe only the worker writes to: EOF means the worker is gone or kills the task
	fdStatus = 4 // the supervisor reports "pid N", then "exit <wait status>" or "error <text>"
)

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
//   - with FrozenAfter set, the worker pings it over the life pipe; without a
//     ping for that long the worker is frozen (SIGSTOP, a stall), and the tree is
//     killed before masters move the attempt elsewhere;
//   - when the shell exits, its status is reported and the descendants it left
//     behind are killed: nothing of an attempt runs after the attempt ended.
func supervise() int {
	cgroup := os.Getenv(envCgroup)
	frozenMs, _ := strconv.Atoi(os.Getenv(envFrozen))
	frozenAfter := time.Duration(frozenMs) * time.Millisecond
	_ = os.Unsetenv(envMarker)
	_ = os.Unsetenv(envCgroup)
	_ = os.Unsetenv(envFrozen)
	// The task must not inherit the worker's pipes: a descendant holding the
	// status pipe would hide the supervisor's exit from the worker.
	syscall.CloseOnExec(fdLife)
	syscall.CloseOnExec(fdStatus)
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
	// The worker writes a byte to the life pipe every FrozenAfter/8 (if set);
	// EOF means it is gone or kills the attempt.
	lifeEnded := make(chan struct{})
	pinged := make(chan struct{}, 1)
	go func() {
		buf := make([]byte, 64)
		for {
			if _, err := life.Read(buf); err != nil {
				close(lifeEnded)
				return
			}
			select {
			case pinged <- struct{}{}:
			default:
			}
		}
	}()
	var frozen <-chan time.Time
	var frozenTimer *time.Timer
	if frozenAfter > 0 {
		frozenTimer = time.NewTimer(frozenAfter)
		frozen = frozenTimer.C
	}

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
			if frozenTimer != nil {
				frozenTimer.Reset(frozenAfter)
			}
		case <-frozen:
			// The worker is frozen (SIGSTOP, a stall): it can neither heartbeat
			// nor fence itself, and masters are about to move this attempt.
			fmt.Fprintf(status, "error the worker did not answer its task supervisor for %s (frozen?); the task was killed so that it cannot run alongside its failover\n", frozenAfter)
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
