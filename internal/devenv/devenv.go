// Package devenv is `baton dev` (what `make run` starts): a development Postgres
// (Docker through testcontainers, else the host's server binaries), the schema, one
// master, two workers and demo tasks. It lives apart from internal/cli so that
// baton-master and baton-worker do not link testcontainers and the Docker client;
// only the baton CLI registers it (cmd/baton).
package devenv

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/testcontainers/testcontainers-go"
	tcpostgres "github.com/testcontainers/testcontainers-go/modules/postgres"

	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/cli"
	"github.com/baton-scheduler/baton/internal/httpapi"
	"github.com/baton-scheduler/baton/internal/migrate"
	"github.com/baton-scheduler/baton/internal/store"
	"github.com/baton-scheduler/baton/internal/submit"
	"github.com/baton-scheduler/baton/internal/workflow"
)

// Command is `baton dev`, for cli.BatonMain.
var Command = cli.Command{Name: "dev", Short: "start Postgres (if needed), a master, two workers and demo tasks", Run: Run}

// Run is `make run`: Postgres (its own when BATON_DATABASE_URL is unset), the
// schema, one master, two workers and a few demo tasks; Ctrl-C stops it all.
func Run(ctx context.Context, args []string, env cli.Env, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("baton dev", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dsnFlag := fs.String("database-url", env("BATON_DATABASE_URL"), "Postgres URL (env BATON_DATABASE_URL); empty: start a Postgres")
	dataDir := fs.String("data-dir", envDefault(env, "BATON_DEV_DIR", ".baton-dev"), "where the host-binaries Postgres keeps its data")
	images := fs.String("image", envDefault(env, "BATON_DEV_POSTGRES_IMAGE", "postgres:17"), "Postgres image for Docker")
	httpAddr := fs.String("http-addr", envDefault(env, "BATON_HTTP_ADDR", "127.0.0.1:8080"), "the master's HTTP API and status page (a free port instead if this one is taken)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q: baton dev takes only flags", fs.Arg(0))
	}
	dsn := *dsnFlag
	if dsn == "" {
		var stop func()
		var err error
		dsn, stop, err = startDevPostgres(ctx, *images, *dataDir, stdout)
		if err != nil {
			return err
		}
		defer stop()
	} else {
		fmt.Fprintln(stdout, "using BATON_DATABASE_URL")
	}
	if err := migrate.EnsureLatest(ctx, dsn); err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	binDir := filepath.Dir(self)
	var procs []*exec.Cmd
	startProc := func(name string, args ...string) error {
		cmd := exec.Command(filepath.Join(binDir, name), args...)
		cmd.Env = append(os.Environ(), "BATON_DATABASE_URL="+dsn, "BATON_LOG_FORMAT=console")
		cmd.Stdout, cmd.Stderr = stderr, stderr
		if err := cmd.Start(); err != nil {
			return fmt.Errorf("start %s (build it with `make build`): %w", name, err)
		}
		procs = append(procs, cmd)
		return nil
	}
	defer func() {
		for _, p := range procs {
			_ = p.Process.Signal(syscall.SIGTERM)
		}
		for _, p := range procs {
			_ = p.Wait()
		}
	}()
	addr, err := freeAddr(*httpAddr)
	if err != nil {
		return err
	}
	if err := startProc("baton-master", "--name", "master-1", "--http-addr", addr); err != nil {
		return err
	}
	for i := 1; i <= 2; i++ {
		if err := startProc("baton-worker", "--name", fmt.Sprintf("worker-%d", i), "--group", "default", "--slots", "2"); err != nil {
			return err
		}
	}
	pool, err := store.Open(ctx, dsn, 2)
	if err != nil {
		return err
	}
	// The group appears when the first worker registers.
	for i := 0; i < 100; i++ {
		var ok bool
		if err := pool.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM worker_groups WHERE name = 'default')").Scan(&ok); err == nil && ok {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	var specs []submit.Spec
	for i := 1; i <= 6; i++ {
		p, _ := json.Marshal(map[string]string{"command": fmt.Sprintf(`echo "demo task %d, attempt $BATON_ATTEMPT on $BATON_WORKER"; sleep 2`, i)})
		specs = append(specs, submit.Spec{Group: "default", Kind: submit.KindShell, Payload: p, MaxRetries: 2, Timeout: time.Minute})
	}
	ids, err := submit.Many(ctx, pool, specs)
	if err != nil {
		pool.Close()
		return err
	}
	run, err := demoRun(ctx, pool)
	if err != nil {
		// Not fatal: the demo workflow is read from the repository's root.
		fmt.Fprintf(stdout, "no demo workflow run: %v\n", err)
	}
	token, err := devToken(ctx, pool)
	pool.Close()
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, `
baton is running: 1 master, 2 workers (group "default"), %d demo tasks submitted.

  status page: http://%[6]s/ui/  (sign in with the token below)
  API token (operate scope, shown once): %[7]s
  curl -H 'Authorization: Bearer %[7]s' http://%[6]s/api/v1/tasks

  export BATON_DATABASE_URL='%[2]s'
  %[3]s/baton task list
  %[3]s/baton task show %[4]d
  %[3]s/baton worker list
  %[3]s/baton task submit --group default --shell 'echo hi; sleep 1'
  %[3]s/baton failover list        # kill -9 a worker's pid (baton worker list) and watch
  %[3]s/baton run show %[5]d             # the demo workflow (examples/workflows/nightly-report.yaml)
  %[3]s/baton run start nightly-report --param day=2026-12-31 --wait

Ctrl-C stops everything.
`, len(ids), dsn, binDir, ids[0], run, addr, token)
	<-ctx.Done()
	fmt.Fprintln(stdout, "stopping...")
	return nil
}

// freeAddr is want if it can be listened on, else a free port on its host
// (a second `make run`, or 8080 taken by something else, still starts).
func freeAddr(want string) (string, error) {
	ln, err := net.Listen("tcp", want)
	if err != nil {
		host, _, serr := net.SplitHostPort(want)
		if serr != nil {
			return "", fmt.Errorf("--http-addr %q: %w", want, serr)
		}
		if ln, err = net.Listen("tcp", net.JoinHostPort(host, "0")); err != nil {
			return "", fmt.Errorf("--http-addr %q: %w", want, err)
		}
	}
	addr := ln.Addr().String()
	return addr, ln.Close()
}

// devToken stores an operate-scope API token for the status page and the API.
func devToken(ctx context.Context, pool *pgxpool.Pool) (string, error) {
	tok, hash, err := httpapi.NewToken()
	if err != nil {
		return "", err
	}
	name := "baton dev " + time.Now().UTC().Format(time.RFC3339)
	if _, err := db.New(pool).TokenCreate(ctx, db.TokenCreateParams{Name: name, Scope: httpapi.ScopeOperate, TokenSha256: hash}); err != nil {
		return "", fmt.Errorf("create the dev API token: %w", err)
	}
	return tok, nil
}

// startDevPostgres tries Docker (testcontainers) first, then the host's Postgres
// server binaries in dataDir.
func startDevPostgres(ctx context.Context, image, dataDir string, stdout io.Writer) (string, func(), error) {
	var dockerErr error
	for _, img := range []string{image, "baton-postgres:15-local"} {
		startCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		ctr, err := tcpostgres.Run(startCtx, img, tcpostgres.WithDatabase("baton"), tcpostgres.WithUsername("baton"),
			tcpostgres.WithPassword("baton"), tcpostgres.BasicWaitStrategies())
		cancel()
		if err == nil {
			dsn, err := ctr.ConnectionString(ctx, "sslmode=disable")
			if err == nil {
				fmt.Fprintf(stdout, "started Postgres in Docker (%s)\n", img)
				return dsn, func() { _ = testcontainers.TerminateContainer(ctr) }, nil
			}
		}
		if ctr != nil {
			_ = testcontainers.TerminateContainer(ctr)
		}
		dockerErr = errors.Join(dockerErr, err)
	}
	fmt.Fprintf(stdout, "Docker Postgres unavailable (%v); using the host's Postgres binaries in %s\n", firstLine(dockerErr), dataDir)
	return startHostPostgres(ctx, dataDir)
}

func firstLine(err error) string {
	if err == nil {
		return ""
	}
	s := err.Error()
	for i, r := range s {
		if r == '\n' {
			return s[:i]
		}
	}
	return s
}

func startHostPostgres(ctx context.Context, dataDir string) (string, func(), error) {
	var bin string
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	if len(matches) > 0 {
		bin = filepath.Dir(matches[len(matches)-1])
	} else if p, err := exec.LookPath("initdb"); err == nil {
		bin = filepath.Dir(p)
	} else {
		return "", nil, errors.New("no Postgres for `make run`: Docker failed and no PostgreSQL server binaries (initdb) are installed; set BATON_DATABASE_URL")
	}
	abs, err := filepath.Abs(dataDir)
	if err != nil {
		return "", nil, err
	}
	if err := os.MkdirAll(abs, 0o755); err != nil {
		return "", nil, err
	}
	// Postgres refuses to run as root; run it as the postgres user then.
	run := func(name string, args ...string) *exec.Cmd {
		if os.Geteuid() == 0 {
			return exec.CommandContext(ctx, "runuser", append([]string{"-u", "postgres", "--", filepath.Join(bin, name)}, args...)...)
		}
		return exec.CommandContext(ctx, filepath.Join(bin, name), args...)
	}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return "", nil, fmt.Errorf("running as root needs a postgres user to run the server: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		_ = os.Chown(abs, uid, -1)
	}
	data := filepath.Join(abs, "data")
	if _, err := os.Stat(filepath.Join(data, "PG_VERSION")); err != nil {
		if out, err := run("initdb", "-D", data, "-U", "baton", "--auth=trust", "-E", "UTF8").CombinedOutput(); err != nil {
			return "", nil, fmt.Errorf("initdb: %v: %s", err, out)
		}
	}
	port := freePort()
	opts := fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1", port, abs)
	if out, err := run("pg_ctl", "-D", data, "-l", filepath.Join(abs, "postgres.log"), "-w", "-t", "60", "-o", opts, "start").CombinedOutput(); err != nil {
		return "", nil, fmt.Errorf("start host Postgres: %v: %s (see %s/postgres.log)", err, out, abs)
	}
	stop := func() {
		// ctx is already canceled (Ctrl-C): stopping needs a context of its own.
		stopCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		args := []string{filepath.Join(bin, "pg_ctl"), "-D", data, "-m", "fast", "stop"}
		if os.Geteuid() == 0 {
			args = append([]string{"-u", "postgres", "--"}, args...)
			_ = exec.CommandContext(stopCtx, "runuser", args...).Run()
			return
		}
		_ = exec.CommandContext(stopCtx, args[0], args[1:]...).Run()
	}
	return fmt.Sprintf("postgres://baton@127.0.0.1:%d/postgres?sslmode=disable", port), stop, nil
}

func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 55432
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func envDefault(env cli.Env, key, def string) string {
	if v := env(key); v != "" {
		return v
	}
	return def
}

// DemoWorkflow is the workflow `baton dev` applies and starts (run from the
// repository's root, as make run does).
const DemoWorkflow = "examples/workflows/nightly-report.yaml"

// demoRun applies DemoWorkflow and starts one run of it.
func demoRun(ctx context.Context, pool *pgxpool.Pool) (int64, error) {
	data, err := os.ReadFile(DemoWorkflow)
	if err != nil {
		return 0, fmt.Errorf("demo workflow: %w", err)
	}
	d, err := workflow.Parse(data)
	if err != nil {
		return 0, fmt.Errorf("demo workflow: %w", err)
	}
	var s workflow.Started
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		q := db.New(tx)
		if _, err := workflow.Apply(ctx, q, d); err != nil {
			return err
		}
		s, err = workflow.Start(ctx, q, workflow.StartParams{Workflow: d.Name})
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("demo workflow: %w", err)
	}
	return s.RunID, nil
}
