package invoicing_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	_ "github.com/jackc/pgx/v5/stdlib"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"example.com/invoicing"
	"github.com/baton-scheduler/baton"
	"github.com/baton-scheduler/baton/batontest/apptest"
)

// app is one test's database with the application's migrations and baton's.
type app struct {
	dsn    string
	pool   *pgxpool.Pool
	client *baton.Client
	svc    *invoicing.Service
}

func newApp(t *testing.T) *app {
	t.Helper()
	ctx := context.Background()
	// The test server's role is named baton, so the default search_path
	// ("$user", public) would put baton's schema first: the application pins
	// its own search_path, as the README advises.
	dsn := withQuery(t, apptest.NewEmptyDatabase(t), "search_path", "public")
	sqlDB, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer sqlDB.Close()
	if err := invoicing.Migrate(ctx, sqlDB); err != nil {
		t.Fatalf("application migrations: %v", err)
	}
	if err := baton.Migrate(ctx, dsn); err != nil {
		t.Fatalf("baton migrations: %v", err)
	}
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	client, err := baton.NewClient(pool, &baton.ClientConfig{Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	return &app{dsn: dsn, pool: pool, client: client, svc: &invoicing.Service{Pool: pool, Jobs: client}}
}

func (a *app) count(t *testing.T, query string, args ...any) int {
	t.Helper()
	var n int
	if err := a.pool.QueryRow(context.Background(), query, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return n
}

// The application's goose migrations and baton's live in one database: each has
// its own version table, and the application's "tasks" is not baton's.
func TestGooseMigrationsCoexist(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	a := newApp(t)
	// Both migrate again, in the other order: nothing to do, no "newer than this binary".
	sqlDB, err := sql.Open("pgx", a.dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer sqlDB.Close()
	if err := baton.Migrate(ctx, a.dsn); err != nil {
		t.Fatal(err)
	}
	if err := invoicing.Migrate(ctx, sqlDB); err != nil {
		t.Fatal(err)
	}
	if err := baton.CheckSchema(ctx, a.dsn); err != nil {
		t.Fatal(err)
	}
	if n := a.count(t, "SELECT max(version_id) FROM public.goose_db_version"); n != 1 {
		t.Fatalf("application's goose version = %d, want 1", n)
	}
	if n := a.count(t, "SELECT count(*) FROM baton.goose_db_version WHERE version_id > 0"); n < 1 {
		t.Fatalf("baton's goose versions = %d", n)
	}
	if _, err := a.client.CreateGroup(ctx, invoicing.Group, "invoices"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := a.svc.CreateInvoice(ctx, "acme", 1200, nil); err != nil {
		t.Fatal(err)
	}
	if n := a.count(t, "SELECT count(*) FROM public.tasks"); n != 1 {
		t.Fatalf("application's tasks = %d, want its one to-do", n)
	}
	if n := a.count(t, "SELECT count(*) FROM baton.tasks"); n != 1 {
		t.Fatalf("baton's tasks = %d, want the one submitted", n)
	}
}

// A task submitted in a transaction that rolls back does not exist; one whose
// transaction commits does, and runs.
func TestSubmitTxRollbackSubmitsNothing(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	a := newApp(t)
	if _, err := a.client.CreateGroup(ctx, invoicing.Group, ""); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("payment provider said no")
	_, taskID, err := a.svc.CreateInvoice(ctx, "acme", 100, func(pgx.Tx) error { return boom })
	if !errors.Is(err, boom) || taskID == 0 {
		t.Fatalf("create = task %d, %v; want the submit to have happened inside, then %v", taskID, err, boom)
	}
	if _, err := a.client.Get(ctx, taskID); !errors.Is(err, baton.ErrNotFound) {
		t.Fatalf("rolled-back task: %v, want ErrNotFound", err)
	}
	apptest.RequireNotSubmitted(t, a.client, baton.ListParams{Kind: invoicing.KindSend})
	if n := a.count(t, "SELECT count(*) FROM invoices"); n != 0 {
		t.Fatalf("invoices = %d after rollback", n)
	}

	apptest.StartWorker(t, baton.WorkerConfig{DatabaseURL: a.dsn, Group: invoicing.Group,
		Handlers: map[string]baton.Handler{invoicing.KindSend: invoicing.SendHandler(a.pool)},
		Master:   &baton.MasterConfig{}})
	invoiceID, taskID, err := a.svc.CreateInvoice(ctx, "acme", 100, nil)
	if err != nil {
		t.Fatal(err)
	}
	tasks := apptest.RequireSubmitted(t, a.client, baton.ListParams{Kind: invoicing.KindSend, Group: invoicing.Group})
	if len(tasks) != 1 || tasks[0].ID != taskID || tasks[0].MaxRetries != 3 {
		t.Fatalf("submitted = %+v", tasks)
	}
	info := apptest.Wait(t, a.client, taskID, 30*time.Second)
	if info.State != baton.TaskSucceeded || info.Output != fmt.Sprintf("sent invoice %d (1 row)", invoiceID) {
		t.Fatalf("task = %+v", info)
	}
	if n := a.count(t, "SELECT count(*) FROM invoices WHERE sent_at IS NOT NULL"); n != 1 {
		t.Fatalf("sent invoices = %d", n)
	}
}

// An embedded worker refuses shell tasks unless it enables them.
func TestEmbeddedWorkerRefusesShell(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	a := newApp(t)
	apptest.StartMaster(t, baton.MasterConfig{DatabaseURL: a.dsn})
	apptest.StartWorker(t, baton.WorkerConfig{DatabaseURL: a.dsn, Group: "closed", Handlers: noopHandlers})
	apptest.StartWorker(t, baton.WorkerConfig{DatabaseURL: a.dsn, Group: "open", AllowShell: true})
	dir := t.TempDir()
	shell := func(group, file string) int64 {
		payload, _ := json.Marshal(map[string]string{"command": "touch " + filepath.Join(dir, file)})
		id, err := a.client.Submit(ctx, baton.TaskSpec{Group: group, Kind: baton.KindShell, Payload: payload})
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	refused, allowed := shell("closed", "refused"), shell("open", "allowed")
	if info := apptest.Wait(t, a.client, refused, 30*time.Second); info.State != baton.TaskFailed ||
		!strings.Contains(info.LastError, "AllowShell") {
		t.Fatalf("shell on a default embedded worker: %+v", info)
	}
	if _, err := os.Stat(filepath.Join(dir, "refused")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the refused command ran: %v", err)
	}
	if info := apptest.Wait(t, a.client, allowed, 30*time.Second); info.State != baton.TaskSucceeded {
		t.Fatalf("shell with AllowShell: %+v", info)
	}
	if _, err := os.Stat(filepath.Join(dir, "allowed")); err != nil {
		t.Fatalf("the allowed command did not run: %v", err)
	}
}

// An unmigrated database: every entry point of the Go API says so, clearly.
func TestUnmigratedDatabaseClearError(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn := apptest.NewEmptyDatabase(t)
	want := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, baton.ErrSchemaOutdated) || !strings.Contains(err.Error(), `schema "baton"`) ||
			!strings.Contains(err.Error(), "baton.Migrate") {
			t.Fatalf("%s on an unmigrated database: %v", what, err)
		}
	}
	_, err := baton.NewWorker(ctx, baton.WorkerConfig{DatabaseURL: dsn, Logger: zaptest.NewLogger(t), Handlers: noopHandlers})
	want("NewWorker", err)
	_, err = baton.NewMaster(ctx, baton.MasterConfig{DatabaseURL: dsn, Logger: zaptest.NewLogger(t)})
	want("NewMaster", err)
	want("CheckSchema", baton.CheckSchema(ctx, dsn))
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	client, err := baton.NewClient(pool, &baton.ClientConfig{Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	_, err = client.Submit(ctx, baton.TaskSpec{Group: "g", Kind: "k"})
	want("Submit", err)
	_, err = client.Get(ctx, 1)
	want("Get", err)
}

// The client from submit to cancel, without a worker, and the no-master warning.
func TestClient(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	a := newApp(t)
	if _, err := a.client.Submit(ctx, baton.TaskSpec{Group: "reports", Kind: "r"}); !errors.Is(err, baton.ErrUnknownGroup) ||
		strings.Contains(err.Error(), "--group") {
		t.Fatalf("unknown group: %v", err)
	}
	if created, err := a.client.CreateGroup(ctx, "reports", "monthly reports"); err != nil || !created {
		t.Fatalf("create group = %v, %v", created, err)
	}
	if created, err := a.client.CreateGroup(ctx, "reports", ""); err != nil || created {
		t.Fatalf("create again = %v, %v", created, err)
	}
	ids, err := a.client.SubmitMany(ctx, []baton.TaskSpec{
		{Group: "reports", Kind: "r", Payload: json.RawMessage(`{"month": 1}`), Priority: 5},
		{Group: "adhoc", Kind: "r", CreateGroup: true},
	})
	if err != nil || len(ids) != 2 {
		t.Fatalf("submit many = %v, %v", ids, err)
	}
	info, err := a.client.Get(ctx, ids[0])
	if err != nil || info.State != baton.TaskQueued || info.Priority != 5 || string(info.Payload) != `{"month": 1}` {
		t.Fatalf("get = %+v, %v", info, err)
	}
	if _, err := a.client.SubmitMany(ctx, []baton.TaskSpec{{Group: "reports", Kind: "r"}, {Group: "reports", Kind: "bad kind"}}); !errors.Is(err, baton.ErrInvalidTask) {
		t.Fatalf("batch with a bad spec: %v", err)
	}
	if got, err := a.client.List(ctx, baton.ListParams{Group: "reports"}); err != nil || len(got) != 1 {
		t.Fatalf("list = %d tasks, %v; the bad batch must have stored nothing", len(got), err)
	}
	if got, _ := a.client.List(ctx, baton.ListParams{BeforeID: ids[1]}); len(got) != 1 || got[0].ID != ids[0] {
		t.Fatalf("page before %d = %+v", ids[1], got)
	}

	// Cancel a queued task: canceled at once, Wait returns it.
	canceled, err := a.client.Cancel(ctx, ids[0])
	if err != nil || canceled.State != baton.TaskCanceled || canceled.FinishedAt == nil {
		t.Fatalf("cancel = %+v, %v", canceled, err)
	}
	if info := apptest.Wait(t, a.client, ids[0], 5*time.Second); info.State != baton.TaskCanceled {
		t.Fatalf("wait = %+v", info)
	}
	if _, err := a.client.Cancel(ctx, ids[0]); !errors.Is(err, baton.ErrTaskFinished) {
		t.Fatalf("cancel twice: %v", err)
	}
	if _, err := a.client.Cancel(ctx, 999999); !errors.Is(err, baton.ErrNotFound) {
		t.Fatalf("cancel unknown: %v", err)
	}
	wctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := a.client.Wait(wctx, ids[1]); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("wait bounded by ctx: %v", err)
	}

	// A worker with no master anywhere: a warning in its log, and in Groups.
	core, logs := observer.New(zap.InfoLevel)
	apptest.StartWorker(t, baton.WorkerConfig{DatabaseURL: a.dsn, Group: "reports", Logger: zap.New(core),
		MasterCheckInterval: 20 * time.Millisecond, Handlers: map[string]baton.Handler{"r": func(context.Context, baton.Task) (string, error) { return "", nil }}})
	waitFor(t, func() bool { return logs.FilterMessageSnippet("no live master").Len() > 0 })
	groups, err := a.client.Groups(ctx)
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]baton.GroupStatus{}
	for _, g := range groups {
		byName[g.Name] = g
	}
	if g := byName["reports"]; !g.NoMaster || g.LiveWorkers != 1 || g.LiveMasters != 0 || g.Description != "monthly reports" {
		t.Fatalf("reports = %+v", g)
	}
	if g := byName["adhoc"]; g.NoMaster || g.WaitingTasks != 1 {
		t.Fatalf("adhoc (no workers) = %+v", g)
	}
	apptest.StartMaster(t, baton.MasterConfig{DatabaseURL: a.dsn})
	waitFor(t, func() bool { return logs.FilterMessageSnippet("master is alive again").Len() > 0 })
}

// Cancel of a running task: canceled at once; the handler's later result is
// refused (fenced) and changes nothing. The handler ignores its context, so it
// always returns a result to refuse: one that honoured the context could see the
// cancel first and return canceled, which the worker does not report at all
// (a race CI once lost; that path is the root package's cancel tests).
func TestCancelRunning(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	a := newApp(t)
	started, release := make(chan struct{}), make(chan struct{})
	core, logs := observer.New(zap.InfoLevel)
	apptest.StartWorker(t, baton.WorkerConfig{DatabaseURL: a.dsn, Group: "slow", Logger: zap.New(core),
		Master: &baton.MasterConfig{},
		Handlers: map[string]baton.Handler{"block": func(context.Context, baton.Task) (string, error) {
			close(started)
			<-release
			return "finished after cancel", nil
		}}})
	id, err := a.client.Submit(ctx, baton.TaskSpec{Group: "slow", Kind: "block"})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-started:
	case <-time.After(30 * time.Second):
		t.Fatal("handler did not start")
	}
	info, err := a.client.Cancel(ctx, id)
	if err != nil || info.State != baton.TaskCanceled {
		t.Fatalf("cancel running = %+v, %v", info, err)
	}
	close(release)
	waitFor(t, func() bool { return logs.FilterMessageSnippet("fenced").Len() > 0 })
	info, err = a.client.Get(ctx, id)
	if err != nil || info.State != baton.TaskCanceled || info.Output != "" {
		t.Fatalf("after the handler returned: %+v, %v", info, err)
	}
	attempts, err := a.client.Attempts(ctx, id)
	if err != nil || len(attempts) != 1 || attempts[0].Outcome != "canceled" {
		t.Fatalf("attempts = %+v, %v", attempts, err)
	}
}

// Cancels racing a master's dispatch and a worker's claims and results: every
// task ends canceled or succeeded, a canceled task has no attempt left open and
// no dispatch row, and a succeeded one was not canceled.
func TestCancelRacesDispatch(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	a := newApp(t)
	apptest.StartWorker(t, baton.WorkerConfig{DatabaseURL: a.dsn, Group: "race", Slots: 8, Master: &baton.MasterConfig{},
		Handlers: map[string]baton.Handler{"ok": func(context.Context, baton.Task) (string, error) { return "ok", nil }}})
	specs := make([]baton.TaskSpec, 200)
	for i := range specs {
		specs[i] = baton.TaskSpec{Group: "race", Kind: "ok"}
	}
	ids, err := a.client.SubmitMany(ctx, specs)
	if err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, len(ids))
	for _, id := range ids {
		go func() {
			_, err := a.client.Cancel(ctx, id)
			if errors.Is(err, baton.ErrTaskFinished) {
				err = nil
			}
			errs <- err
		}()
	}
	for range ids {
		if err := <-errs; err != nil {
			t.Fatalf("cancel: %v", err)
		}
	}
	counts := map[baton.TaskState]int{}
	for _, id := range ids {
		info := apptest.Wait(t, a.client, id, 30*time.Second)
		counts[info.State]++
		attempts, err := a.client.Attempts(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		for _, at := range attempts {
			if at.Outcome == "" {
				t.Fatalf("task %d (%s) has an open attempt %+v", id, info.State, at)
			}
		}
		if info.State == baton.TaskSucceeded && (len(attempts) != 1 || attempts[0].Outcome != "succeeded") {
			t.Fatalf("succeeded task %d attempts %+v", id, attempts)
		}
	}
	if counts[baton.TaskCanceled]+counts[baton.TaskSucceeded] != len(ids) || counts[baton.TaskCanceled] == 0 {
		t.Fatalf("states = %v", counts)
	}
	if n := a.count(t, "SELECT count(*) FROM baton.dispatch_queue"); n != 0 {
		t.Fatalf("dispatch rows left: %d", n)
	}
	t.Logf("states: %v", counts)
}

// Ready means the group exists: a submit right after it cannot race the
// worker's registration.
func TestReadyThenSubmit(t *testing.T) {
	t.Parallel()
	a := newApp(t)
	w := apptest.StartWorker(t, baton.WorkerConfig{DatabaseURL: a.dsn, Group: "fresh", Master: &baton.MasterConfig{},
		Handlers: map[string]baton.Handler{"ok": func(context.Context, baton.Task) (string, error) { return "ok", nil }}})
	if w.SessionID() == 0 {
		t.Fatal("ready without a session")
	}
	id, err := a.client.Submit(context.Background(), baton.TaskSpec{Group: "fresh", Kind: "ok"})
	if err != nil {
		t.Fatalf("submit right after Ready: %v", err)
	}
	if info := apptest.Wait(t, a.client, id, 30*time.Second); info.State != baton.TaskSucceeded {
		t.Fatalf("task = %+v", info)
	}
}

// A schema other than "baton": Migrate, worker, master and client all follow it.
func TestCustomSchema(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn := apptest.NewEmptyDatabase(t)
	jobsDSN, err := baton.WithSchema(dsn, "jobs")
	if err != nil {
		t.Fatal(err)
	}
	if err := baton.Migrate(ctx, jobsDSN); err != nil {
		t.Fatal(err)
	}
	if err := baton.CheckSchema(ctx, dsn); !errors.Is(err, baton.ErrSchemaOutdated) {
		t.Fatalf("default schema untouched: %v", err)
	}
	apptest.StartWorker(t, baton.WorkerConfig{DatabaseURL: dsn, Schema: "jobs", Group: "g", Master: &baton.MasterConfig{},
		Handlers: map[string]baton.Handler{"ok": func(context.Context, baton.Task) (string, error) { return "ok", nil }}})
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	client, err := baton.NewClient(pool, &baton.ClientConfig{Schema: "jobs", Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	id, err := client.Submit(ctx, baton.TaskSpec{Group: "g", Kind: "ok"})
	if err != nil {
		t.Fatal(err)
	}
	if info := apptest.Wait(t, client, id, 30*time.Second); info.State != baton.TaskSucceeded {
		t.Fatalf("task = %+v", info)
	}
	var n int
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM jobs.tasks").Scan(&n); err != nil || n != 1 {
		t.Fatalf("jobs.tasks = %d, %v", n, err)
	}
}

// An install from before baton had its own schema (tables in public) is not
// silently left behind: the default schema refuses and says what to do, and
// keeping public works.
func TestLegacyPublicInstall(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn := apptest.NewEmptyDatabase(t)
	public, err := baton.WithSchema(dsn, "public")
	if err != nil {
		t.Fatal(err)
	}
	if err := baton.Migrate(ctx, public); err != nil {
		t.Fatal(err)
	}
	err = baton.Migrate(ctx, dsn)
	if !errors.Is(err, baton.ErrLegacyPublicSchema) || !strings.Contains(err.Error(), "baton_schema=public") ||
		!strings.Contains(err.Error(), "move-from-public") {
		t.Fatalf("migrate beside a legacy install: %v", err)
	}
	_, err = baton.NewWorker(ctx, baton.WorkerConfig{DatabaseURL: dsn, Logger: zaptest.NewLogger(t), Handlers: noopHandlers})
	if !errors.Is(err, baton.ErrLegacyPublicSchema) {
		t.Fatalf("worker beside a legacy install: %v", err)
	}
	apptest.StartWorker(t, baton.WorkerConfig{DatabaseURL: dsn, Schema: "public", Group: "old", Handlers: noopHandlers})
}

// A nil Logger is a real logger on stderr: a worker left without a master says
// so. (Not parallel: it swaps os.Stderr.)
func TestNilLoggerSpeaks(t *testing.T) {
	a := newApp(t)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	stderr := os.Stderr
	os.Stderr = w
	ctx, cancel := context.WithCancel(context.Background())
	worker, err := baton.NewWorker(ctx, baton.WorkerConfig{DatabaseURL: a.dsn, Group: "quiet", MasterCheckInterval: 20 * time.Millisecond, Handlers: noopHandlers})
	os.Stderr = stderr
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- worker.Run(ctx) }()
	lines := make(chan string, 1)
	go func() { // reads until the pipe closes, so the logger never blocks
		buf := make([]byte, 64<<10)
		var all []byte
		sent := false
		for {
			n, err := r.Read(buf)
			all = append(all, buf[:n]...)
			if !sent && strings.Contains(string(all), "no live master") {
				lines <- string(all)
				sent = true
			}
			if err != nil {
				return
			}
		}
	}()
	select {
	case out := <-lines:
		if !strings.Contains(out, `"level":"warn"`) {
			t.Fatalf("default logger output: %s", out)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the default logger said nothing about the missing master")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	w.Close()
}

// Configuration is validated as the binaries validate it, before connecting.
func TestConfigValidation(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	cases := []struct {
		name string
		cfg  baton.WorkerConfig
		want string
	}{
		{"no_url", baton.WorkerConfig{}, "DatabaseURL is empty"},
		{"slots", baton.WorkerConfig{DatabaseURL: "postgres://x@127.0.0.1:1/x", Slots: -1}, "slots -1 is outside"},
		{"self_fence_vs_master", baton.WorkerConfig{DatabaseURL: "postgres://x@127.0.0.1:1/x",
			SelfFenceAfter: 6 * time.Second, Master: &baton.MasterConfig{WorkerTimeout: 5 * time.Second}}, "must be below the masters' worker timeout"},
		{"self_fence_vs_masters", baton.WorkerConfig{DatabaseURL: "postgres://x@127.0.0.1:1/x", SelfFenceAfter: 5 * time.Second},
			"must be below the masters' worker timeout 5s"},
		{"day_long", baton.WorkerConfig{DatabaseURL: "postgres://x@127.0.0.1:1/x", ShutdownGrace: 25 * time.Hour}, "longer than 24h"},
		{"schema", baton.WorkerConfig{DatabaseURL: "postgres://x@127.0.0.1:1/x", Schema: "Bad Name"}, `schema "Bad Name" must be`},
		{"nil_handler", baton.WorkerConfig{DatabaseURL: "postgres://x@127.0.0.1:1/x", Handlers: map[string]baton.Handler{"k": nil}}, `handler for kind "k" is nil`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.Logger = zaptest.NewLogger(t)
			_, err := baton.NewWorker(ctx, tc.cfg)
			if !errors.Is(err, baton.ErrInvalidConfig) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want ErrInvalidConfig containing %q", err, tc.want)
			}
		})
	}
}

// A handler reads its retries, can fail a task for good, and can snooze it; the
// retry policy is stated once, on the group or the task, not on any process.
func TestHandlerControl(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	a := newApp(t)
	if _, err := a.client.CreateGroup(ctx, "ctl", "handler control"); err != nil {
		t.Fatal(err)
	}
	// The group's policy: the tasks below that state none wait 10-20 ms.
	if err := a.client.SetGroupRetryBackoff(ctx, "ctl", baton.RetryBackoff{Base: 10 * time.Millisecond, Max: 20 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	if err := a.client.SetGroupRetryBackoff(ctx, "ctl", baton.RetryBackoff{Base: time.Second, Max: time.Millisecond}); !errors.Is(err, baton.ErrInvalidTask) {
		t.Fatalf("cap below base: %v", err)
	}
	if err := a.client.SetGroupRetryBackoff(ctx, "nope", baton.RetryBackoff{}); !errors.Is(err, baton.ErrUnknownGroup) {
		t.Fatalf("unknown group: %v", err)
	}
	seen := make(chan [2]int, 10)
	snoozed := make(chan time.Time, 2)
	apptest.StartWorker(t, baton.WorkerConfig{DatabaseURL: a.dsn, Group: "ctl",
		Master: &baton.MasterConfig{},
		Handlers: map[string]baton.Handler{
			"flaky": func(ctx context.Context, task baton.Task) (string, error) {
				used, limit, err := task.Retries(ctx)
				if err != nil {
					return "", err
				}
				seen <- [2]int{used, limit}
				if used < limit {
					return "", errors.New("not yet")
				}
				return "last try worked", nil
			},
			"strict": func(context.Context, baton.Task) (string, error) {
				return "", baton.Permanent(errors.New("payload can never work"))
			},
			"fail": func(context.Context, baton.Task) (string, error) {
				return "", errors.New("always fails")
			},
			"later": func(ctx context.Context, task baton.Task) (string, error) {
				snoozed <- time.Now()
				if task.Attempt == 1 {
					return "", baton.Snooze(300 * time.Millisecond)
				}
				return "ready now", nil
			},
		}})
	flaky, err := a.client.Submit(ctx, baton.TaskSpec{Group: "ctl", Kind: "flaky", MaxRetries: 2})
	if err != nil {
		t.Fatal(err)
	}
	if info := apptest.Wait(t, a.client, flaky, 30*time.Second); info.State != baton.TaskSucceeded || info.Retries != 2 ||
		info.RetryBackoff != (baton.RetryBackoff{Base: 10 * time.Millisecond, Max: 20 * time.Millisecond}) {
		t.Fatalf("flaky = %+v", info)
	}
	for want := 0; want <= 2; want++ {
		if got := <-seen; got != [2]int{want, 2} {
			t.Fatalf("attempt %d saw retries %v, want [%d 2]", want+1, got, want)
		}
	}
	attempts, err := a.client.Attempts(ctx, flaky)
	if err != nil || len(attempts) != 3 || attempts[0].Outcome != "failed" || attempts[1].Reason != "retry" ||
		attempts[2].Outcome != "succeeded" || attempts[2].Reason != "retry" {
		t.Fatalf("flaky attempts = %+v, %v", attempts, err)
	}

	// A task's own policy beats its group's: a one-hour backoff keeps its retry
	// queued.
	slow, err := a.client.Submit(ctx, baton.TaskSpec{Group: "ctl", Kind: "fail", MaxRetries: 1,
		RetryBackoff: &baton.RetryBackoff{Base: time.Hour, Max: time.Hour}})
	if err != nil {
		t.Fatal(err)
	}
	if info, err := a.client.Get(ctx, slow); err != nil || info.RetryBackoff.Base != time.Hour {
		t.Fatalf("slow = %+v, %v", info, err)
	}
	if _, err := a.client.Submit(ctx, baton.TaskSpec{Group: "ctl", Kind: "strict", RetryBackoff: &baton.RetryBackoff{Base: -time.Second}}); !errors.Is(err, baton.ErrInvalidTask) {
		t.Fatalf("negative backoff: %v", err)
	}

	strict, err := a.client.Submit(ctx, baton.TaskSpec{Group: "ctl", Kind: "strict", MaxRetries: 5})
	if err != nil {
		t.Fatal(err)
	}
	info := apptest.Wait(t, a.client, strict, 30*time.Second)
	if info.State != baton.TaskFailed || info.Retries != 0 || !strings.Contains(info.LastError, "payload can never work") {
		t.Fatalf("strict = %+v", info)
	}
	if attempts, err := a.client.Attempts(ctx, strict); err != nil || len(attempts) != 1 {
		t.Fatalf("a permanent failure was retried: %+v, %v", attempts, err)
	}

	// Snooze: the task runs again after the snooze, without using a retry.
	later, err := a.client.Submit(ctx, baton.TaskSpec{Group: "ctl", Kind: "later"})
	if err != nil {
		t.Fatal(err)
	}
	info = apptest.Wait(t, a.client, later, 30*time.Second)
	if info.State != baton.TaskSucceeded || info.Retries != 0 || info.Attempt != 2 || info.Output != "ready now" {
		t.Fatalf("later = %+v", info)
	}
	first, second := <-snoozed, <-snoozed
	if gap := second.Sub(first); gap < 300*time.Millisecond {
		t.Fatalf("snoozed task ran again after %s, before its 300ms snooze", gap)
	}
	attempts, err = a.client.Attempts(ctx, later)
	if err != nil || len(attempts) != 2 || attempts[0].Outcome != "snoozed" || attempts[1].Reason != "snooze" || attempts[1].Outcome != "succeeded" {
		t.Fatalf("later attempts = %+v, %v", attempts, err)
	}
	if info, err := a.client.Get(ctx, slow); err != nil || info.State != baton.TaskQueued || info.Retries != 1 {
		t.Fatalf("slow = %+v, %v (its one-hour backoff should hold its retry)", info, err)
	}
}

// Wait is woken by the task's notification: with polling set to an hour it still
// returns as soon as the task ends.
func TestWaitWokenByNotification(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	a := newApp(t)
	client, err := baton.NewClient(a.pool, &baton.ClientConfig{WaitPollInterval: time.Hour, Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	apptest.StartWorker(t, baton.WorkerConfig{DatabaseURL: a.dsn, Group: "w", Master: &baton.MasterConfig{},
		Handlers: map[string]baton.Handler{"gate": func(ctx context.Context, _ baton.Task) (string, error) {
			select {
			case <-release:
				return "released", nil
			case <-ctx.Done():
				return "", ctx.Err()
			}
		}}})
	var ids []int64
	for range 3 {
		id, err := client.Submit(ctx, baton.TaskSpec{Group: "w", Kind: "gate"})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	// The third is canceled: a cancel notifies too.
	type result struct {
		info baton.TaskInfo
		err  error
	}
	results := make(chan result, len(ids))
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for _, id := range ids {
		go func() { info, err := client.Wait(wctx, id); results <- result{info, err} }()
	}
	waitFor(t, func() bool {
		info, err := client.Get(ctx, ids[0])
		return err == nil && info.State == baton.TaskRunning
	})
	time.Sleep(100 * time.Millisecond) // let the waiters read the task once and block
	if _, err := client.Cancel(ctx, ids[2]); err != nil {
		t.Fatal(err)
	}
	close(release)
	states := map[baton.TaskState]int{}
	for range ids {
		r := <-results
		if r.err != nil {
			t.Fatalf("wait (polling every hour, so only a notification can end it): %v", r.err)
		}
		states[r.info.State]++
	}
	if states[baton.TaskSucceeded] != 2 || states[baton.TaskCanceled] != 1 {
		t.Fatalf("states = %v", states)
	}
}

// apptest.RunTask runs a handler synchronously, without a database.
func TestRunTaskSynchronously(t *testing.T) {
	t.Parallel()
	out, err := apptest.RunTask(context.Background(), func(_ context.Context, task baton.Task) (string, error) {
		return string(task.Payload) + " " + task.Kind, nil
	}, baton.TaskSpec{Kind: "echo", Payload: json.RawMessage(`{"a":1}`)})
	if err != nil || out != `{"a":1} echo` {
		t.Fatalf("run = %q, %v", out, err)
	}
	_, err = apptest.RunTask(context.Background(), func(context.Context, baton.Task) (string, error) { panic("boom") }, baton.TaskSpec{Kind: "p"})
	if err == nil || !strings.Contains(err.Error(), "boom") {
		t.Fatalf("panic: %v", err)
	}
}

// The binaries' --help shows no database URL (it would show the password).
func TestHelpShowsNoPassword(t *testing.T) {
	t.Parallel()
	if testing.Short() && os.Getenv("CI") != "true" { // nothing skips under CI=true
		t.Skip("builds the binaries")
	}
	bin := t.TempDir()
	build := exec.Command("go", "build", "-o", bin+"/", "./cmd/baton-worker", "./cmd/baton-master", "./cmd/baton")
	build.Dir = "../.."
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	const secret = "hunter2-secret"
	for _, args := range [][]string{{"baton-worker", "--help"}, {"baton-master", "--help"}, {"baton", "migrate", "up", "--help"}} {
		cmd := exec.Command(filepath.Join(bin, args[0]), args[1:]...)
		cmd.Env = append(os.Environ(), "BATON_DATABASE_URL=postgres://invoicing:"+secret+"@db.internal:5432/invoicing")
		out, _ := cmd.CombinedOutput()
		if !strings.Contains(string(out), "database-url") || strings.Contains(string(out), secret) {
			t.Fatalf("%v --help:\n%s", args, out)
		}
	}
}

func withQuery(t *testing.T, dsn, key, value string) string {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set(key, value)
	u.RawQuery = q.Encode()
	return u.String()
}

// waitFor polls cond until it holds or 30 s pass (no sleeping on a guess).
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 30s")
		}
		<-tick.C
	}
}
