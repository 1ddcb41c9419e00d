//go:build !linux

package contain

import (
	"errors"
	"runtime"
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
