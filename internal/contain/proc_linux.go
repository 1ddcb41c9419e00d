//go:build linux

package contain

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"syscall"
	"time"
	"unsafe"
)

// procStat is what baton reads of /proc/<pid>/stat.
type procStat struct {
	state byte
	ppid  int
	start uint64 // clock ticks after boot: with the pid, a process's identity
}

// readStat parses /proc/<pid>/stat. The command name is in parentheses and may
// itself contain spaces and parentheses, so fields are counted from the last ')'.
func readStat(pid int) (procStat, error) {
	raw, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procStat{}, err
	}
	i := bytes.LastIndexByte(raw, ')')
	if i < 0 {
		return procStat{}, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := bytes.Fields(raw[i+1:])
	// f[0] is field 3 (state), f[1] field 4 (ppid), f[19] field 22 (starttime).
	if len(f) < 20 {
		return procStat{}, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f)+2)
	}
	ppid, err := strconv.Atoi(string(f[1]))
	if err != nil {
		return procStat{}, fmt.Errorf("/proc/%d/stat ppid: %w", pid, err)
	}
	start, err := strconv.ParseUint(string(f[19]), 10, 64)
	if err != nil {
		return procStat{}, fmt.Errorf("/proc/%d/stat starttime: %w", pid, err)
	}
	return procStat{state: f[0][0], ppid: ppid, start: start}, nil
}

// StartTime is the start time of pid in clock ticks after boot; with the pid it
// names a process even after the pid is reused.
func StartTime(pid int) (uint64, error) {
	st, err := readStat(pid)
	return st.start, err
}

// Alive reports whether the process (pid, start) still exists and is not a
// zombie (a zombie has ended: it only waits to be reaped).
func Alive(pid int, start uint64) bool {
	st, err := readStat(pid)
	return err == nil && st.start == start && st.state != 'Z' && st.state != 'X'
}

// descendants lists the live (non-zombie) descendants of root, from /proc.
func descendants(root int) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	children := map[int][]int{}
	live := map[int]bool{}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := readStat(pid)
		if err != nil {
			continue
		}
		children[st.ppid] = append(children[st.ppid], pid)
		live[pid] = st.state != 'Z' && st.state != 'X'
	}
	var out []int
	queue := []int{root}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, c := range children[p] {
			if live[c] {
				out = append(out, c)
			}
			queue = append(queue, c)
		}
	}
	return out
}

// killDescendants SIGKILLs every descendant of the calling process until it has
// no child left at all, or the deadline passes. The caller must be a child
// subreaper, so orphans of the tree (double forks, setsid daemons) are reparented
// to it and stay visible, and must reap its children meanwhile (the supervisor's
// reaper does): when this returns true every process of the tree has ended and
// been reaped, so none lingers as a zombie.
func killDescendants(deadline time.Duration) bool {
	self := os.Getpid()
	end := time.Now().Add(deadline)
	for hasChildren() {
		if time.Now().After(end) {
			return false
		}
		// Every live descendant of a subreaper is a child or below one.
		for _, p := range descendants(self) {
			_ = syscall.Kill(p, syscall.SIGKILL)
		}
		time.Sleep(time.Millisecond)
	}
	return true
}

// hasChildren reports whether the calling process has a child, live or zombie,
// without reaping it: waitid(P_ALL, WEXITED|WNOHANG|WNOWAIT) fails with ECHILD
// only when there is none.
func hasChildren() bool {
	var info [128]byte // siginfo_t
	const pAll, wExited, wNoHang, wNoWait = 0, 4, 1, 0x1000000
	_, _, errno := syscall.Syscall6(syscall.SYS_WAITID, pAll, 0, uintptr(unsafe.Pointer(&info[0])), wExited|wNoHang|wNoWait, 0, 0)
	return errno != syscall.ECHILD
}
