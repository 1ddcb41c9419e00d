//go:build linux

package store

import (
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestDialerSetsTCPOptions(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := Dialer(time.Second).Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var userTimeout, keepalive, idle int
	var gerr error
	if err := raw.Control(func(fd uintptr) {
		userTimeout, gerr = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT)
		if gerr == nil {
			keepalive, gerr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_KEEPALIVE)
		}
		if gerr == nil {
			idle, gerr = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_KEEPIDLE)
		}
	}); err != nil || gerr != nil {
		t.Fatal(err, gerr)
	}
	if userTimeout != int(TCPUserTimeoutDefault.Milliseconds()) {
		t.Fatalf("TCP_USER_TIMEOUT = %d ms", userTimeout)
	}
	if keepalive != 1 || idle != int(KeepAliveIdle.Seconds()) {
		t.Fatalf("keepalive = %d, idle = %d s", keepalive, idle)
	}
}
