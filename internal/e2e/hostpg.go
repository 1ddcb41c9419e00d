package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/baton-scheduler/baton/batontest"
	"github.com/baton-scheduler/baton/internal/migrate"
	"github.com/baton-scheduler/baton/internal/store"
)

// EnvPGBinDir names a directory holding initdb, pg_ctl, pg_basebackup (overrides
// the search).
const EnvPGBinDir = "BATON_TEST_PG_BINDIR"

// FindPGBinDir looks for the host's PostgreSQL server binaries the way
// scripts/hostpg.sh does: $BATON_TEST_PG_BINDIR, then the newest of
// /usr/lib/postgresql/*/bin (Debian, Ubuntu), /usr/pgsql-*/bin (RHEL),
// /usr/local/pgsql/bin, /opt/homebrew/opt/postgresql*/bin, /usr/local/opt/postgresql*/bin
// (macOS), then initdb on PATH.
func FindPGBinDir() (string, error) {
	need := []string{"initdb", "pg_ctl", "pg_basebackup"}
	ok := func(dir string) bool {
		for _, b := range need {
			if fi, err := os.Stat(filepath.Join(dir, b)); err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
				return false
			}
		}
		return true
	}
	if d := os.Getenv(EnvPGBinDir); d != "" {
		if ok(d) {
			return d, nil
		}
		return "", fmt.Errorf("%s=%s does not hold %s", EnvPGBinDir, d, strings.Join(need, ", "))
	}
	var cands []string
	for _, pat := range []string{"/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin", "/opt/homebrew/opt/postgresql*/bin", "/usr/local/opt/postgresql*/bin"} {
		m, _ := filepath.Glob(pat)
		sort.Slice(m, func(i, j int) bool { return versionOf(m[i]) > versionOf(m[j]) })
		cands = append(cands, m...)
	}
	cands = append(cands, "/usr/local/pgsql/bin")
	if p, err := exec.LookPath("initdb"); err == nil {
		cands = append(cands, filepath.Dir(p))
	}
	for _, d := range cands {
		if ok(d) {
			return d, nil
		}
	}
	return "", fmt.Errorf("no PostgreSQL server binaries (%s) found in /usr/lib/postgresql/*/bin, /usr/pgsql-*/bin, "+
		"/usr/local/pgsql/bin, Homebrew or PATH; install the postgresql server package or set %s",
		strings.Join(need, ", "), EnvPGBinDir)
}

// versionOf extracts the first number in a path (".../15/bin" -> 15) for sorting.
func versionOf(p string) int {
	num := ""
	for _, r := range p {
		switch {
		case r >= '0' && r <= '9':
			num += string(r)
		case num != "":
			v, _ := strconv.Atoi(num)
			return v
		}
	}
	v, _ := strconv.Atoi(num)
	return v
}

// RequireHostPG returns the binaries' directory, or skips the test with the reason
// (fails it under CI=true, where nothing may be skipped).
func RequireHostPG(t testing.TB) string {
	t.Helper()
	dir, err := FindPGBinDir()
	if err != nil {
		if batontest.InCI() {
			t.Fatalf("e2e: CI=true and this test needs host Postgres: %v", err)
		}
		t.Skipf("e2e: needs host Postgres server binaries: %v", err)
	}
	return dir
}

// PGNode is one Postgres cluster run from the host binaries on 127.0.0.1, its data
// under a temporary directory. As root it runs as user postgres (Postgres refuses
// root). Superuser baton, trust authentication, database baton.
type PGNode struct {
	Name   string
	Port   int
	BinDir string
	Dir    string // holds data/ and postgres.log
}

// DataDir is the cluster's data directory.
func (n *PGNode) DataDir() string { return filepath.Join(n.Dir, "data") }

// DSN is a URL of database db on this node.
func (n *PGNode) DSN(db string) string {
	return fmt.Sprintf("postgres://baton@127.0.0.1:%d/%s?sslmode=disable", n.Port, db)
}

// HostPort is "127.0.0.1:port".
func (n *PGNode) HostPort() string { return fmt.Sprintf("127.0.0.1:%d", n.Port) }

func asRoot() bool { return os.Geteuid() == 0 }

// pgCmd runs a Postgres binary, as user postgres when root.
func (n *PGNode) pgCmd(ctx context.Context, bin string, args ...string) *exec.Cmd {
	path := filepath.Join(n.BinDir, bin)
	if asRoot() {
		return exec.CommandContext(ctx, "runuser", append([]string{"-u", "postgres", "--", path}, args...)...)
	}
	return exec.CommandContext(ctx, path, args...)
}

func (n *PGNode) run(bin string, args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := n.pgCmd(ctx, bin, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s on %s: %w\n%s%s", bin, strings.Join(args, " "), n.Name, err, out.String(), n.logTail())
	}
	return nil
}

func (n *PGNode) logTail() string {
	b, err := os.ReadFile(filepath.Join(n.Dir, "postgres.log"))
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 20 {
		lines = lines[len(lines)-20:]
	}
	return "postgres.log:\n" + strings.Join(lines, "\n")
}

// newPGNode makes the node's directory (readable by user postgres when root) and
// picks a free port.
func newPGNode(t testing.TB, binDir, name string) *PGNode {
	t.Helper()
	dir, err := os.MkdirTemp("", "baton-pg-"+name+"-")
	if err != nil {
		t.Fatal(err)
	}
	if asRoot() {
		if err := ensurePostgresUser(); err != nil {
			t.Fatalf("e2e: %v", err)
		}
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Fatalf("e2e: %v", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	n := &PGNode{Name: name, Port: freePort(t), BinDir: binDir, Dir: dir}
	t.Cleanup(func() {
		n.kill()
		_ = os.RemoveAll(dir)
	})
	return n
}

func ensurePostgresUser() error {
	if _, err := user.Lookup("postgres"); err == nil {
		return nil
	}
	out, err := exec.Command("useradd", "--system", "--home", "/nonexistent", "--shell", "/usr/sbin/nologin", "postgres").CombinedOutput()
	if err != nil {
		return fmt.Errorf("create user postgres (Postgres refuses to run as root): %v: %s", err, out)
	}
	return nil
}

func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// serverOptions are the flags every node starts with (pg_ctl -o). fsync=off is
// safe here (the faults crash Postgres, never the kernel, which keeps what was
// written); synchronous_commit stays on: with it off, a restart -m immediate
// loses commits already acknowledged, which no client could survive.
func (n *PGNode) serverOptions() string {
	return fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c max_connections=400 -c fsync=off "+
		"-c full_page_writes=off -c wal_level=replica -c max_wal_senders=10 "+
		"-c hot_standby=on -c wal_keep_size=256MB", n.Port, n.Dir)
}

// StartPrimary initializes a new cluster, starts it, creates database baton and
// migrates it.
func StartPrimary(t testing.TB, binDir, name string) *PGNode {
	t.Helper()
	n := newPGNode(t, binDir, name)
	if err := n.run("initdb", "-D", n.DataDir(), "-U", "baton", "--auth=trust", "-E", "UTF8"); err != nil {
		t.Fatalf("e2e: %v", err)
	}
	if err := n.Start(); err != nil {
		t.Fatalf("e2e: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, n.DSN("postgres"))
	if err != nil {
		t.Fatalf("e2e: connect to %s: %v", n.Name, err)
	}
	_, err = conn.Exec(ctx, "CREATE DATABASE baton")
	_ = conn.Close(ctx)
	if err != nil {
		t.Fatalf("e2e: create database on %s: %v", n.Name, err)
	}
	if err := migrate.EnsureLatest(ctx, n.DSN("baton")); err != nil {
		t.Fatalf("e2e: migrate %s: %v", n.Name, err)
	}
	return n
}

// StartReplica makes a streaming replica of primary (pg_basebackup -R) and starts it.
func StartReplica(t testing.TB, primary *PGNode, name string) *PGNode {
	t.Helper()
	n := newPGNode(t, primary.BinDir, name)
	if err := n.CloneFrom(primary); err != nil {
		t.Fatalf("e2e: %v", err)
	}
	return n
}

// CloneFrom replaces this node's data with a base backup of primary (a streaming
// replica, standby.signal written by -R) and starts it.
func (n *PGNode) CloneFrom(primary *PGNode) error {
	n.kill()
	if err := os.RemoveAll(n.DataDir()); err != nil {
		return err
	}
	if err := n.run("pg_basebackup", "-h", "127.0.0.1", "-p", strconv.Itoa(primary.Port), "-U", "baton",
		"-D", n.DataDir(), "-R", "-X", "stream", "-c", "fast"); err != nil {
		return err
	}
	return n.Start()
}

// Start starts the server and waits until it accepts connections.
func (n *PGNode) Start() error {
	return n.run("pg_ctl", "-D", n.DataDir(), "-l", filepath.Join(n.Dir, "postgres.log"), "-w", "-t", "120",
		"-o", n.serverOptions(), "start")
}

// Restart is pg_ctl restart -m mode (fast: clients are disconnected, a clean
// shutdown; immediate: a crash, recovery at start).
func (n *PGNode) Restart(mode string) error {
	return n.run("pg_ctl", "-D", n.DataDir(), "-l", filepath.Join(n.Dir, "postgres.log"), "-w", "-t", "120",
		"-m", mode, "-o", n.serverOptions(), "restart")
}

// Stop is pg_ctl stop -m mode.
func (n *PGNode) Stop(mode string) error {
	return n.run("pg_ctl", "-D", n.DataDir(), "-w", "-t", "120", "-m", mode, "stop")
}

// Promote turns a replica into a primary and waits until it accepts writes.
func (n *PGNode) Promote() error {
	return n.run("pg_ctl", "-D", n.DataDir(), "-w", "-t", "120", "promote")
}

// WaitReplicating waits until the replica has replayed everything primary had
// written when called.
func (n *PGNode) WaitReplicating(primary *PGNode, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var lsn string
	pc, err := pgx.Connect(ctx, primary.DSN("postgres"))
	if err != nil {
		return err
	}
	err = pc.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text").Scan(&lsn)
	_ = pc.Close(ctx)
	if err != nil {
		return err
	}
	for {
		rc, err := pgx.Connect(ctx, n.DSN("postgres"))
		if err == nil {
			var ok bool
			err = rc.QueryRow(ctx, "SELECT coalesce(pg_last_wal_replay_lsn() >= $1::pg_lsn, false)", lsn).Scan(&ok)
			_ = rc.Close(ctx)
			if err == nil && ok {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("replica %s did not replay up to %s: %w (last error: %v)", n.Name, lsn, ctx.Err(), err)
		case <-time.After(PollInterval):
		}
	}
}

// kill stops the server at once if it runs (cleanup; errors ignored).
func (n *PGNode) kill() {
	if _, err := os.Stat(filepath.Join(n.DataDir(), "postmaster.pid")); errors.Is(err, os.ErrNotExist) {
		return
	}
	_ = n.run("pg_ctl", "-D", n.DataDir(), "-w", "-t", "60", "-m", "immediate", "stop")
}

// MultiHostDSN is a URL naming every node, that connects to whichever accepts
// writes (target_session_attrs=read-write), as clients of a switchover see it.
// Its search_path is baton's schema, so the harness, the ledger writers and the
// checker see baton's tables and the ledger unqualified (baton's own processes set
// it themselves).
func MultiHostDSN(db string, hostports ...string) string {
	return fmt.Sprintf("postgres://baton@%s/%s?sslmode=disable&target_session_attrs=read-write&connect_timeout=5&search_path=%s",
		strings.Join(hostports, ","), db, store.SchemaDefault)
}
