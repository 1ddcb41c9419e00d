package sdnotify

import (
	"context"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// listen opens a unixgram socket as systemd does and returns its path and a
// receive function.
func listen(t *testing.T, name string) func() string {
	t.Helper()
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return func() string {
		t.Helper()
		buf := make([]byte, 4096)
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("no notify message: %v", err)
		}
		return string(buf[:n])
	}
}

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestMessagesOverUnixgram(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "notify")
	recv := listen(t, path)
	n, err := New(env(map[string]string{"NOTIFY_SOCKET": path}))
	if err != nil || n == nil {
		t.Fatalf("New: %v %v", n, err)
	}
	if err := n.Ready("session 7\nregistered"); err != nil {
		t.Fatal(err)
	}
	if got := recv(); got != "READY=1\nSTATUS=session 7 registered" {
		t.Fatalf("ready message %q", got)
	}
	if err := n.Stopping("draining"); err != nil {
		t.Fatal(err)
	}
	if got := recv(); got != "STOPPING=1\nSTATUS=draining" {
		t.Fatalf("stopping message %q", got)
	}
	if n.WatchdogInterval() != 0 {
		t.Fatal("watchdog without WATCHDOG_USEC")
	}
}

func TestAbstractSocketAndWatchdog(t *testing.T) {
	t.Parallel()
	name := "baton-sdnotify-test-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	recv := listen(t, "\x00"+name)
	n, err := New(env(map[string]string{"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "100000"}))
	if err != nil {
		t.Fatal(err)
	}
	if n.WatchdogInterval() != 100*time.Millisecond {
		t.Fatalf("watchdog interval %s", n.WatchdogInterval())
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { n.Watchdog(ctx); close(done) }()
	for range 3 {
		if got := recv(); got != "WATCHDOG=1" {
			t.Fatalf("watchdog message %q", got)
		}
	}
	cancel()
	<-done
}

func TestOffAndMalformed(t *testing.T) {
	t.Parallel()
	n, err := New(env(nil))
	if n != nil || err != nil {
		t.Fatalf("without NOTIFY_SOCKET: %v %v", n, err)
	}
	if err := n.Ready("x"); err != nil { // nil does nothing
		t.Fatal(err)
	}
	n.Watchdog(context.Background()) // returns at once
	for _, e := range []map[string]string{
		{"NOTIFY_SOCKET": "relative/path"},
		{"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "soon"},
		{"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "-5"},
	} {
		if _, err := New(env(e)); err == nil || !strings.Contains(err.Error(), "want") {
			t.Errorf("New(%v): %v, want an error", e, err)
		}
	}
	// Another process's watchdog is not ours.
	n, err = New(env(map[string]string{"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"}))
	if err != nil || n.WatchdogInterval() != 0 {
		t.Fatalf("WATCHDOG_PID of another process: %v %v", n.WatchdogInterval(), err)
	}
}
