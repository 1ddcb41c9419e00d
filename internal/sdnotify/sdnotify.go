// Package sdnotify speaks systemd's notify protocol (sd_notify(3)) without a
// dependency: datagrams such as "READY=1" to the unix socket named by
// $NOTIFY_SOCKET, which systemd sets for a Type=notify service. Without that
// variable every call does nothing, so the daemons call it unconditionally.
//
// The watchdog: when the unit sets WatchdogSec=, systemd passes WATCHDOG_USEC
// (and WATCHDOG_PID); the process must send "WATCHDOG=1" more often than that,
// or systemd kills and restarts it. Watchdog sends it every half interval from
// its own goroutine, so it catches a process that is stopped (SIGSTOP, a frozen
// cgroup) or wedged as a whole, not one whose database is unreachable — that is
// the self-fence's and the masters' business, and a restart would not help.
package sdnotify

import (
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

// Notifier sends to one notify socket; the zero value and nil do nothing.
type Notifier struct {
	addr     *net.UnixAddr
	watchdog time.Duration
}

// New reads NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID through getenv
// (os.Getenv in the daemons). It returns a nil *Notifier, which does nothing,
// when NOTIFY_SOCKET is unset, and an error when a variable is malformed.
func New(getenv func(string) string) (*Notifier, error) {
	path := getenv("NOTIFY_SOCKET")
	if path == "" {
		return nil, nil
	}
	if !strings.HasPrefix(path, "/") && !strings.HasPrefix(path, "@") {
		return nil, fmt.Errorf("NOTIFY_SOCKET=%q: want an absolute path or @abstract name", path)
	}
	n := &Notifier{addr: &net.UnixAddr{Name: path, Net: "unixgram"}}
	if path[0] == '@' {
		n.addr.Name = "\x00" + path[1:] // Linux abstract namespace
	}
	if us := getenv("WATCHDOG_USEC"); us != "" {
		v, err := strconv.ParseInt(us, 10, 64)
		if err != nil || v <= 0 {
			return nil, fmt.Errorf("WATCHDOG_USEC=%q: want a positive integer", us)
		}
		// For this process only: a child started with the environment must not
		// think it is watched.
		if pid := getenv("WATCHDOG_PID"); pid == "" || pid == strconv.Itoa(os.Getpid()) {
			n.watchdog = time.Duration(v) * time.Microsecond
		}
	}
	return n, nil
}

// Send sends one datagram of newline-separated assignments, e.g. "READY=1".
func (n *Notifier) Send(state string) error {
	if n == nil {
		return nil
	}
	conn, err := net.DialUnix("unixgram", nil, n.addr)
	if err != nil {
		return fmt.Errorf("sd_notify: %w", err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(state)); err != nil {
		return fmt.Errorf("sd_notify %q: %w", state, err)
	}
	return nil
}

// Ready says the service is up, with a status line shown by systemctl status.
func (n *Notifier) Ready(status string) error {
	return n.Send("READY=1\nSTATUS=" + oneLine(status))
}

// Stopping says the service is shutting down (before a drain, which may take
// up to TimeoutStopSec).
func (n *Notifier) Stopping(status string) error {
	return n.Send("STOPPING=1\nSTATUS=" + oneLine(status))
}

// WatchdogInterval is WATCHDOG_USEC (0 when the unit has no WatchdogSec).
func (n *Notifier) WatchdogInterval() time.Duration {
	if n == nil {
		return 0
	}
	return n.watchdog
}

// Watchdog sends "WATCHDOG=1" every half watchdog interval until ctx ends; it
// returns at once without a watchdog.
func (n *Notifier) Watchdog(ctx context.Context) {
	if n.WatchdogInterval() <= 0 {
		return
	}
	t := time.NewTicker(n.watchdog / 2)
	defer t.Stop()
	for {
		_ = n.Send("WATCHDOG=1")
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func oneLine(s string) string { return strings.ReplaceAll(s, "\n", " ") }
