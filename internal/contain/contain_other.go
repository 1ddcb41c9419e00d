//go:build !linux

package contain

import (
	"errors"
	"net"
	"os"
	"runtime"
	"time"
)

var errNotLinux = errors.New("shell task containment needs Linux (a cgroup or a child-subreaper supervisor); this is " + runtime.GOOS)

// Manager is unavailable off Linux: Open fails, so shell tasks fail with the reason.
type Manager struct{}

// Process is unavailable off Linux.
type Process struct{}

// Open fails off Linux.
func Open(Options) (*Manager, error) { return nil, errNotLinux }

func (*Manager) Mechanism() Mechanism            { return Auto }
func (*Manager) Reason() string                  { return errNotLinux.Error() }
func (*Manager) StaleRemoved() int               { return 0 }
func (*Manager) StaleError() error               { return nil }
func (*Manager) Dir() string                     { return "" }
func (*Manager) Start(Command) (*Process, error) { return nil, errNotLinux }
func (*Manager) Close() error                    { return nil }
func (*Process) Kill()                           {}
func (*Process) Wait() Exit                      { return Exit{Code: -1, Err: errNotLinux} }

// Lease is the worker's lease as its supervisors enforce it (see the Linux build).
type Lease struct {
	Long, Short time.Time
}

func (*Manager) SetLease(Lease)             {}
func (*Manager) SetLockConn(net.Conn) error { return nil }
func (*Manager) StaleLock() bool            { return false }

// DupConn is unavailable off Linux.
func DupConn(net.Conn) (*os.File, error) { return nil, errNotLinux }

// HungUp reports false off Linux (no supervisor shares the lock socket there).
func HungUp(net.Conn) bool { return false }
