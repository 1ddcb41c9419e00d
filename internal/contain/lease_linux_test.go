//go:build linux

package contain

import (
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// lockPair is a stand-in for the liveness lock connection: client is the
// worker's end, server is Postgres's (closing it = pg_terminate_backend).
func lockPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server = <-accepted
	if server == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// startSleeper starts `sleep 600` contained, recording its pid in dir/pid, and
// returns the process and the sleeper's pid.
func startSleeper(t *testing.T, m *Manager, dir string) (*Process, int) {
	t.Helper()
	pidFile := filepath.Join(dir, "pid")
	p, err := m.Start(Command{Args: []string{"/bin/sh", "-c", `echo $$ > "$1.tmp" && mv "$1.tmp" "$1" && exec sleep 600`, "sh", pidFile},
		Env: []string{"PATH=/usr/bin:/bin"}, Stdout: io.Discard, Stderr: io.Discard, Name: "lease-test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Kill(); p.Wait() })
	deadline := time.Now().Add(30 * time.Second) // bound for a hung machine only
	for {
		b, err := os.ReadFile(pidFile)
		if err == nil {
			pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
			if err != nil {
				t.Fatal(err)
			}
			return p, pid
		}
		if time.Now().After(deadline) {
			t.Fatal("the task did not start")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func alive(pid int) bool { return syscall.Kill(pid, 0) == nil }

// waitExit waits (bounded, for a hung machine only) for p to end and returns its
// exit and the CLOCK_MONOTONIC reading right after.
func waitExit(t *testing.T, p *Process) (Exit, int64) {
	t.Helper()
	done := make(chan Exit, 1)
	go func() { done <- p.Wait() }()
	select {
	case e := <-done:
		return e, monoNow()
	case <-time.After(30 * time.Second):
		t.Fatal("the task was not killed")
		return Exit{}, 0
	}
}

func openLeaseManager(t *testing.T) *Manager {
	t.Helper()
	m, err := Open(Options{FrozenAfter: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// A supervisor kills its tree at the lease's short deadline only once its lock
// socket hung up (Postgres closed the session, freeing the lock): before that the
// long deadline applies, after it the short one — at once when already past.
func TestLeaseShortDeadlineAfterLockHangup(t *testing.T) {
	t.Parallel()
	t.Run("hangup after short", func(t *testing.T) {
		t.Parallel()
		m := openLeaseManager(t)
		client, server := lockPair(t)
		if err := m.SetLockConn(client); err != nil {
			t.Fatal(err)
		}
		short := time.Now().Add(200 * time.Millisecond)
		m.SetLease(Lease{Long: time.Now().Add(time.Minute), Short: short})
		p, pid := startSleeper(t, m, t.TempDir())
		time.Sleep(time.Until(short) + 300*time.Millisecond)
		if !alive(pid) {
			t.Fatal("killed at the short deadline although the lock socket was fine")
		}
		server.Close() // Postgres ends the session: the lock is free
		e, _ := waitExit(t, p)
		if e.Err == nil || !strings.Contains(e.Err.Error(), "liveness lock connection closed") {
			t.Fatalf("exit %+v", e)
		}
		if alive(pid) {
			t.Fatal("the task outlived its supervisor")
		}
	})
	t.Run("hangup before short", func(t *testing.T) {
		t.Parallel()
		m := openLeaseManager(t)
		client, server := lockPair(t)
		if err := m.SetLockConn(client); err != nil {
			t.Fatal(err)
		}
		short := time.Now().Add(time.Second)
		m.SetLease(Lease{Long: time.Now().Add(time.Minute), Short: short})
		shortMono := monoOf(short)
		p, _ := startSleeper(t, m, t.TempDir())
		server.Close()
		e, at := waitExit(t, p)
		if e.Err == nil || !strings.Contains(e.Err.Error(), "liveness lock connection closed") {
			t.Fatalf("exit %+v", e)
		}
		if at < shortMono {
			t.Fatalf("killed %s before the short deadline", time.Duration(shortMono-at))
		}
	})
	t.Run("started without the lock", func(t *testing.T) {
		// Crash detection on, no lock connection held: the short deadline applies.
		t.Parallel()
		m := openLeaseManager(t)
		m.SetLease(Lease{Long: time.Now().Add(time.Minute), Short: time.Now().Add(300 * time.Millisecond)})
		p, err := m.Start(Command{Args: []string{"/bin/sleep", "600"}, Env: []string{"PATH=/usr/bin:/bin"},
			Stdout: io.Discard, Stderr: io.Discard, Name: "lease-test"})
		if err != nil {
			t.Fatal(err)
		}
		if e, _ := waitExit(t, p); e.Err == nil || !strings.Contains(e.Err.Error(), "liveness lock connection closed") {
			t.Fatalf("exit %+v", e)
		}
	})
	t.Run("renewed lease keeps the task", func(t *testing.T) {
		t.Parallel()
		m := openLeaseManager(t)
		renew := func() { m.SetLease(Lease{Long: time.Now().Add(time.Minute), Short: time.Now().Add(2 * time.Second)}) }
		renew()
		stop := make(chan struct{})
		renewed := make(chan struct{})
		go func() { // heartbeats every 100 ms renew the short deadline
			defer close(renewed)
			for {
				select {
				case <-stop:
					return
				case <-time.After(100 * time.Millisecond):
					renew()
				}
			}
		}()
		_, pid := startSleeper(t, m, t.TempDir())
		if !m.StaleLock() {
			t.Fatal("a supervisor without the lock socket is not reported stale")
		}
		until := monoNow() + int64(3*time.Second) // past several short deadlines
		for monoNow() < until {
			time.Sleep(100 * time.Millisecond)
		}
		alive := alive(pid)
		close(stop)
		<-renewed
		if !alive {
			t.Fatal("killed although the lease was renewed")
		}
	})
	t.Run("crash of the worker frees the lock only after the tree is gone", func(t *testing.T) {
		t.Parallel()
		m := openLeaseManager(t)
		client, server := lockPair(t)
		if err := m.SetLockConn(client); err != nil {
			t.Fatal(err)
		}
		m.SetLease(Lease{Long: time.Now().Add(time.Minute), Short: time.Now().Add(time.Minute)})
		p, pid := startSleeper(t, m, t.TempDir())
		// The worker dies: every descriptor it has closes, the life pipe included.
		_ = m.SetLockConn(nil)
		client.Close()
		p.closeLife()
		// "Postgres" sees the session end only when the supervisor has exited.
		_ = server.SetReadDeadline(time.Now().Add(30 * time.Second))
		if _, err := server.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
			t.Fatalf("read: %v", err)
		}
		if alive(pid) {
			t.Fatal("the lock socket closed while the task still ran")
		}
	})
}
