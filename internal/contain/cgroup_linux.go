//go:build linux

package contain

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// cgroupDirName is the directory baton creates under the worker's own cgroup;
// under it each worker (Manager) has one directory, and under that each task
// attempt has its own cgroup.
const cgroupDirName = "baton"

// ownCgroup finds the cgroup v2 directory of the calling process: the cgroup2
// mount (pure v2 at /sys/fs/cgroup, hybrid at /sys/fs/cgroup/unified, or
// anywhere else) joined with the process's path from the "0::" line of
// /proc/self/cgroup.
func ownCgroup() (string, error) {
	raw, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", fmt.Errorf("read /proc/self/cgroup: %w", err)
	}
	own := ""
	for _, line := range strings.Split(string(raw), "\n") {
		if rest, ok := strings.CutPrefix(line, "0::"); ok {
			own = rest
		}
	}
	if own == "" {
		return "", errors.New(`no cgroup v2 membership in /proc/self/cgroup (no "0::" line)`)
	}
	mi, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("read /proc/self/mountinfo: %w", err)
	}
	defer mi.Close()
	sc := bufio.NewScanner(mi)
	for sc.Scan() {
		// id parent major:minor root mountpoint options [optional...] - fstype source superoptions
		f := strings.Fields(sc.Text())
		sep := -1
		for i, x := range f {
			if x == "-" {
				sep = i
				break
			}
		}
		if sep < 5 || sep+1 >= len(f) || f[sep+1] != "cgroup2" {
			continue
		}
		root, mountpoint := unescapeMount(f[3]), unescapeMount(f[4])
		rel, err := filepath.Rel(root, own)
		if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
			continue
		}
		dir := filepath.Join(mountpoint, rel)
		if st, err := os.Stat(dir); err == nil && st.IsDir() {
			return dir, nil
		}
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("read /proc/self/mountinfo: %w", err)
	}
	return "", fmt.Errorf("no cgroup2 mount shows this process's cgroup %q", own)
}

// unescapeMount undoes the octal escapes of /proc/self/mountinfo (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// cgroupKill kills every process in dir and its descendants: cgroup.kill
// (Linux 5.14+) does it atomically; without it every pid listed in cgroup.procs
// is SIGKILLed, recursively.
func cgroupKill(dir string) {
	if err := os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0); err == nil || errors.Is(err, os.ErrNotExist) && !exists(dir) {
		return
	}
	_ = filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		raw, err := os.ReadFile(filepath.Join(path, "cgroup.procs"))
		if err != nil {
			return nil
		}
		for _, f := range strings.Fields(string(raw)) {
			if pid, err := strconv.Atoi(f); err == nil && pid > 0 {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		return nil
	})
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// populated reports whether any process is still in dir or below it.
func populated(dir string) bool {
	raw, err := os.ReadFile(filepath.Join(dir, "cgroup.events"))
	if err != nil {
		return exists(dir)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, "populated "); ok {
			return v != "0"
		}
	}
	return true
}

// removeCgroup kills what is left in dir and removes it and its sub-cgroups,
// waiting up to deadline for the killed processes to leave.
func removeCgroup(dir string, deadline time.Duration) error {
	end := time.Now().Add(deadline)
	for {
		cgroupKill(dir)
		if !populated(dir) {
			break
		}
		if time.Now().After(end) {
			return fmt.Errorf("cgroup %s still holds processes after %s", dir, deadline)
		}
		time.Sleep(2 * time.Millisecond)
	}
	var dirs []string
	_ = filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, path)
		}
		return nil
	})
	var errs []error
	for i := len(dirs) - 1; i >= 0; i-- { // children first
		if err := syscall.Rmdir(dirs[i]); err != nil && err != syscall.ENOENT {
			errs = append(errs, fmt.Errorf("remove cgroup %s: %w", dirs[i], err))
		}
	}
	return errors.Join(errs...)
}

// managerName names a Manager's cgroup directory after its owner: the pid
// namespace (pids of another namespace cannot be judged), the pid, its start
// time (pids are reused) and a sequence number (several workers per process).
func managerName(seq int64) (string, error) {
	ns, err := pidNamespace()
	if err != nil {
		return "", err
	}
	start, err := StartTime(os.Getpid())
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("%d-%d-%d-%d", ns, os.Getpid(), start, seq), nil
}

func pidNamespace() (uint64, error) {
	var st syscall.Stat_t
	if err := syscall.Stat("/proc/self/ns/pid", &st); err != nil {
		return 0, fmt.Errorf("stat /proc/self/ns/pid: %w", err)
	}
	return st.Ino, nil
}

// staleOwner reports whether a Manager directory name belongs to a process of
// this pid namespace that no longer exists.
func staleOwner(name string, ns uint64) bool {
	f := strings.Split(name, "-")
	if len(f) != 4 {
		return false
	}
	n, err1 := strconv.ParseUint(f[0], 10, 64)
	pid, err2 := strconv.Atoi(f[1])
	start, err3 := strconv.ParseUint(f[2], 10, 64)
	if err1 != nil || err2 != nil || err3 != nil || n != ns {
		return false
	}
	st, err := readStat(pid)
	return err != nil || st.start != start
}

// cleanStale removes the Manager directories under base whose owner is gone,
// killing whatever still runs in them. It returns how many it removed.
func cleanStale(base string) (int, error) {
	ns, err := pidNamespace()
	if err != nil {
		return 0, err
	}
	entries, err := os.ReadDir(base)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return 0, nil
		}
		return 0, err
	}
	n := 0
	var errs []error
	for _, e := range entries {
		if !e.IsDir() || !staleOwner(e.Name(), ns) {
			continue
		}
		if err := removeCgroup(filepath.Join(base, e.Name()), 10*time.Second); err != nil {
			errs = append(errs, err)
			continue
		}
		n++
	}
	return n, errors.Join(errs...)
}
