package cli

import (
	"context"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Under systemd (Type=notify, WatchdogSec=) the daemons send READY=1 once they
// serve (the worker: once its session is registered), WATCHDOG=1 every half
// WATCHDOG_USEC, and STOPPING=1 when SIGTERM starts the drain, before they exit.
// The test plays systemd: a unixgram socket named by NOTIFY_SOCKET.
func TestSystemdNotify(t *testing.T) {
	t.Parallel()
	dsn := srv.NewDatabase(t)
	for _, daemon := range []string{"baton-worker", "baton-master"} {
		t.Run(daemon, func(t *testing.T) {
			t.Parallel()
			sock := filepath.Join(t.TempDir(), "notify")
			conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			env := func(k string) string {
				return map[string]string{"BATON_DATABASE_URL": dsn, "NOTIFY_SOCKET": sock, "WATCHDOG_USEC": "200000", "BATON_GROUP": "sd"}[k]
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := make(chan int, 1)
			errb := &syncWriter{b: &strings.Builder{}}
			go func() {
				args := []string{"--log-level", "error"}
				if daemon == "baton-worker" {
					done <- WorkerMain(ctx, args, env, BuiltinHandlers(), errb)
				} else {
					done <- MasterMain(ctx, args, env, errb)
				}
			}()
			var msgs []string
			recv := func(want string) {
				t.Helper()
				buf := make([]byte, 4096)
				// One deadline for the wait: watchdog messages keep arriving.
				_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
				for {
					n, err := conn.Read(buf)
					if err != nil {
						t.Fatalf("waiting for %s: %v; got %q; stderr %s", want, err, msgs, errb.String())
					}
					msgs = append(msgs, string(buf[:n]))
					if strings.HasPrefix(string(buf[:n]), want) {
						return
					}
				}
			}
			recv("READY=1")
			ready := msgs[len(msgs)-1]
			wantStatus := map[string]string{"baton-worker": "STATUS=worker session ", "baton-master": "STATUS=master session "}[daemon]
			if !strings.Contains(ready, wantStatus) {
				t.Errorf("ready message %q lacks %q", ready, wantStatus)
			}
			recv("WATCHDOG=1")
			recv("WATCHDOG=1")
			cancel() // SIGTERM
			recv("STOPPING=1")
			if code := <-done; code != 0 {
				t.Fatalf("%s exited %d: %s", daemon, code, errb.String())
			}
		})
	}
}
