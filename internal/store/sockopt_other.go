//go:build !linux

package store

import (
	"syscall"
	"time"
)

// setUserTimeout is a no-op where TCP_USER_TIMEOUT does not exist; keepalive and
// the callers' deadlines still bound a silent partition.
func setUserTimeout(time.Duration) func(network, address string, c syscall.RawConn) error {
	return nil
}
