// Package batontest gives tests an isolated, migrated baton database per test on a
// real Postgres: the schema is migrated once into a template database and every
// test gets its own copy via CREATE DATABASE ... TEMPLATE (milliseconds).
//
// Where the server comes from, in order:
//  1. BATON_TEST_DATABASE_URL, a superuser-ish URL of a running server;
//  2. a testcontainers-go Postgres container from image BATON_TEST_POSTGRES_IMAGE
//     (default DefaultImage, the official image), started by internal/testpg.
//
// When neither works a test fails if CI=true and is skipped otherwise, with a
// message saying what to set.
//
// This is baton's own harness (it runs testcontainers through internal/testpg,
// without linking it, so it stays out of applications' module graphs). Applications that embed
// baton use batontest/apptest, which needs only a URL and no Docker client.
package batontest

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/baton-scheduler/baton/internal/migrate"
	"github.com/baton-scheduler/baton/internal/store"
	"github.com/baton-scheduler/baton/migrations"
)

// Environment variables the harness reads.
const (
	EnvDatabaseURL = "BATON_TEST_DATABASE_URL"
	EnvImage       = "BATON_TEST_POSTGRES_IMAGE"
	DefaultImage   = "postgres:17"
)

// Server is a Postgres server the tests of one package share.
type Server struct {
	adminURL  string
	template  string
	container *exec.Cmd // internal/testpg, holding the container while its stdin is open
	stdin     io.WriteCloser
	err       error
}

// Start finds or starts a server and migrates the template database. It never
// returns nil; a failure is kept and reported by every test that asks for a
// database (fail under CI=true, skip otherwise).
func Start(ctx context.Context) *Server {
	s := &Server{}
	s.err = s.start(ctx)
	return s
}

// Main is the body of a package's TestMain: it starts the server, runs the tests
// and tears the server down. Under CI=true an unavailable server fails at once.
func Main(m *testing.M, set func(*Server)) int {
	ctx := context.Background()
	s := Start(ctx)
	if s.err != nil {
		fmt.Fprintf(os.Stderr, "batontest: no Postgres for the tests: %v\n", s.err)
		if InCI() {
			fmt.Fprintln(os.Stderr, "batontest: CI=true, so this is a failure, not a skip")
			return 1
		}
	}
	set(s)
	code := m.Run()
	s.Close()
	return code
}

// InCI reports whether the tests run under CI=true (no skipping allowed).
func InCI() bool { return os.Getenv("CI") == "true" }

// Err is the reason the server is unavailable, or nil.
func (s *Server) Err() error { return s.err }

// AdminURL is the URL of the maintenance database (for tests that create databases).
func (s *Server) AdminURL() string { return s.adminURL }

func (s *Server) start(ctx context.Context) error {
	if u := os.Getenv(EnvDatabaseURL); u != "" {
		s.adminURL = u
	} else {
		image := os.Getenv(EnvImage)
		if image == "" {
			image = DefaultImage
		}
		u, err := s.startContainer(ctx, image)
		if err != nil {
			return fmt.Errorf("start Postgres container from image %q (set %s to a running server, or %s to an image that exists locally): %w",
				image, EnvDatabaseURL, EnvImage, err)
		}
		s.adminURL = u
	}
	return s.prepareTemplate(ctx)
}

// templateName is derived from the migrations' content, so a changed schema gets a
// fresh template and unchanged ones are reused across test binaries.
func templateName() (string, error) {
	entries, err := migrations.FS.ReadDir(".")
	if err != nil {
		return "", err
	}
	// The schema baton installs into is part of the layout: a template built
	// before baton had its own schema (tables in public) must not be reused.
	all := []byte("schema=" + store.SchemaDefault + ";")
	for _, e := range entries {
		b, err := migrations.FS.ReadFile(e.Name())
		if err != nil {
			return "", err
		}
		all = append(all, e.Name()...)
		all = append(all, b...)
	}
	return fmt.Sprintf("baton_tpl_%x", fnv64(all)), nil
}

func fnv64(b []byte) uint64 {
	h := uint64(14695981039346656037)
	for _, c := range b {
		h ^= uint64(c)
		h *= 1099511628211
	}
	return h
}

func (s *Server) prepareTemplate(ctx context.Context) error {
	name, err := templateName()
	if err != nil {
		return fmt.Errorf("hash migrations: %w", err)
	}
	s.template = name
	conn, err := s.adminConn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	// Several test binaries may race to build the same template.
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock(hashtext('batontest_template'))"); err != nil {
		return fmt.Errorf("lock template: %w", err)
	}
	defer conn.Exec(context.Background(), "SELECT pg_advisory_unlock(hashtext('batontest_template'))") //nolint:errcheck
	var ready bool
	err = conn.QueryRow(ctx, "SELECT datistemplate FROM pg_database WHERE datname = $1", name).Scan(&ready)
	if err == nil && ready {
		return nil
	}
	if err == nil {
		// A half-built template from a crashed run.
		if _, err := conn.Exec(ctx, "DROP DATABASE "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
			return fmt.Errorf("drop stale template: %w", err)
		}
	} else if !errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("look up template: %w", err)
	}
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return fmt.Errorf("create template: %w", err)
	}
	if err := migrate.EnsureLatest(ctx, s.urlFor(name)); err != nil {
		return fmt.Errorf("migrate template: %w", err)
	}
	if _, err := conn.Exec(ctx, "ALTER DATABASE "+pgx.Identifier{name}.Sanitize()+" WITH is_template = true"); err != nil {
		return fmt.Errorf("mark template: %w", err)
	}
	return nil
}

func (s *Server) adminConn(ctx context.Context) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(s.adminURL)
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", EnvDatabaseURL, err)
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, store.DescribeConnError(err, cfg.Host, cfg.Port, cfg.User, cfg.Database)
	}
	return conn, nil
}

// urlFor returns the admin URL pointed at another database, with search_path set
// to baton's schema (unless the admin URL sets one) so that ad-hoc SQL in tests
// sees baton's tables the way baton's own connections do.
func (s *Server) urlFor(dbname string) string {
	if u, err := url.Parse(s.adminURL); err == nil && (u.Scheme == "postgres" || u.Scheme == "postgresql") {
		u.Path = "/" + dbname
		q := u.Query()
		if q.Get("search_path") == "" {
			q.Set("search_path", store.SchemaDefault)
		}
		u.RawQuery = q.Encode()
		return u.String()
	}
	// key=value form: a later keyword wins
	if strings.Contains(s.adminURL, "search_path=") {
		return s.adminURL + " dbname=" + dbname
	}
	return s.adminURL + " dbname=" + dbname + " search_path=" + store.SchemaDefault
}

// require fails or skips t when the server is unavailable.
func (s *Server) require(t testing.TB) {
	t.Helper()
	if s == nil {
		t.Fatal("batontest: server not started: call batontest.Main from TestMain")
	}
	if s.err == nil {
		return
	}
	msg := fmt.Sprintf("batontest: no Postgres: %v (set %s or %s)", s.err, EnvDatabaseURL, EnvImage)
	if InCI() {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// NewDatabase creates an empty-of-data, fully migrated database for t, dropped when
// t ends, and returns its URL.
func (s *Server) NewDatabase(t testing.TB) string {
	t.Helper()
	s.require(t)
	ctx := context.Background()
	name := "baton_t_" + randomHex(6)
	conn, err := s.adminConn(ctx)
	if err != nil {
		t.Fatalf("batontest: %v", err)
	}
	defer conn.Close(ctx)
	stmt := "CREATE DATABASE " + pgx.Identifier{name}.Sanitize() + " TEMPLATE " + pgx.Identifier{s.template}.Sanitize()
	for i := 0; ; i++ {
		_, err = conn.Exec(ctx, stmt)
		// 55006: the template is briefly in use by a concurrent CREATE DATABASE.
		if err == nil || store.Code(err) != "55006" || i == 50 {
			break
		}
		time.Sleep(time.Duration(20+i*10) * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("batontest: create database: %v", err)
	}
	t.Cleanup(func() {
		c, err := s.adminConn(context.Background())
		if err != nil {
			t.Logf("batontest: drop %s: %v", name, err)
			return
		}
		defer c.Close(context.Background())
		if _, err := c.Exec(context.Background(), "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
			t.Logf("batontest: drop %s: %v", name, err)
		}
	})
	return s.urlFor(name)
}

// NewPool returns a pool on a fresh database for t, closed when t ends.
func (s *Server) NewPool(t testing.TB) (*pgxpool.Pool, string) {
	t.Helper()
	dsn := s.NewDatabase(t)
	pool, err := store.Open(context.Background(), dsn, 20)
	if err != nil {
		t.Fatalf("batontest: open pool: %v", err)
	}
	t.Cleanup(pool.Close)
	return pool, dsn
}

// NewEmptyDatabase creates an unmigrated database (for migration tests).
func (s *Server) NewEmptyDatabase(t testing.TB) string {
	t.Helper()
	s.require(t)
	ctx := context.Background()
	name := "baton_e_" + randomHex(6)
	conn, err := s.adminConn(ctx)
	if err != nil {
		t.Fatalf("batontest: %v", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		t.Fatalf("batontest: create database: %v", err)
	}
	t.Cleanup(func() {
		c, err := s.adminConn(context.Background())
		if err != nil {
			return
		}
		defer c.Close(context.Background())
		_, _ = c.Exec(context.Background(), "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
	})
	return s.urlFor(name)
}

// Close stops the container, if the harness started one.
func (s *Server) Close() {
	if s.container != nil {
		_ = s.stdin.Close() // testpg stops the container and exits
		done := make(chan struct{})
		go func() { _ = s.container.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(45 * time.Second):
			_ = s.container.Process.Kill()
			<-done
		}
	}
}

// startContainer runs internal/testpg (go run), which starts a testcontainers
// Postgres and prints its URL; the container lives while testpg's stdin is open.
// batontest does not link testcontainers itself (see internal/testpg).
func (s *Server) startContainer(ctx context.Context, image string) (string, error) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("no go command on PATH to run internal/testpg: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	cmd := exec.Command(goBin, "run", "github.com/baton-scheduler/baton/internal/testpg", image)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return "", err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return "", err
	}
	if err := cmd.Start(); err != nil {
		return "", fmt.Errorf("go run internal/testpg: %w", err)
	}
	s.container, s.stdin = cmd, stdin
	line := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		if sc.Scan() {
			line <- sc.Text()
		}
		close(line)
		_, _ = io.Copy(io.Discard, stdout)
	}()
	select {
	case u, ok := <-line:
		if !ok || u == "" {
			s.Close()
			return "", errors.New("internal/testpg exited without a URL (its error is above)")
		}
		return u, nil
	case <-ctx.Done():
		s.Close()
		return "", fmt.Errorf("internal/testpg: %w", ctx.Err())
	}
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return strings.ToLower(hex.EncodeToString(b))
}
