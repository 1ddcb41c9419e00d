//go:build linux

package e2e

import "syscall"

// procAttr makes a daemon die with the test binary (a panicking or timed-out test
// must not leave masters and workers running against a dropped database).
func procAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
