//go:build linux

package contain

import (
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// rawConn is the socket under conn (a TLS connection's included).
func rawConn(conn net.Conn) (syscall.RawConn, error) {
	if t, ok := conn.(interface{ NetConn() net.Conn }); ok {
		conn = t.NetConn()
	}
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return nil, fmt.Errorf("connection %T has no socket", conn)
	}
	return sc.SyscallConn()
}

// DupConn returns a new descriptor of conn's socket (close-on-exec). It leaves
// the socket in non-blocking mode: os.NewFile of a non-blocking descriptor keeps
// Fd() from switching it (and with it conn, which shares the mode) to blocking.
func DupConn(conn net.Conn) (*os.File, error) {
	raw, err := rawConn(conn)
	if err != nil {
		return nil, err
	}
	nfd, dupErr := -1, error(nil)
	if err := raw.Control(func(fd uintptr) {
		nfd, dupErr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return nil, fmt.Errorf("lock connection socket: %w", err)
	}
	if dupErr != nil {
		return nil, fmt.Errorf("dup lock connection socket: %w", dupErr)
	}
	return os.NewFile(uintptr(nfd), "liveness-lock"), nil
}

// HungUp reports, without waiting or reading, whether conn's socket has hung
// up: the peer closed it, it was reset or it failed (a closed conn counts too).
func HungUp(conn net.Conn) bool {
	raw, err := rawConn(conn)
	if err != nil {
		return true
	}
	hung := false
	if err := raw.Control(func(fd uintptr) {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLRDHUP}}
		for {
			n, err := unix.Poll(fds, 0)
			if errors.Is(err, unix.EINTR) {
				continue
			}
			hung = err != nil || (n > 0 && fds[0].Revents&(unix.POLLRDHUP|unix.POLLHUP|unix.POLLERR|unix.POLLNVAL) != 0)
			return
		}
	}); err != nil {
		return true
	}
	return hung
}
