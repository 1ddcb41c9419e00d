package invoicing_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap/zaptest"

	"example.com/invoicing"

	"github.com/baton-scheduler/baton"
	"github.com/baton-scheduler/baton/batontest/apptest"
)

// A reminder submitted to run later runs then and not before: it stays
// scheduled (no worker claims it) until its time, then runs. Both times are
// Postgres' (Delay is relative to the database clock, StartedAt is its now()),
// so no process clock is compared.
func TestRunAtRunsThenNotBefore(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	a := newApp(t)
	var mu sync.Mutex
	var ran []int64
	apptest.StartWorker(t, baton.WorkerConfig{DatabaseURL: a.dsn, Group: "reminders", Logger: zaptest.NewLogger(t),
		PollInterval: 50 * time.Millisecond, Master: &baton.MasterConfig{},
		Handlers: map[string]baton.Handler{"reminder.send": func(_ context.Context, task baton.Task) (string, error) {
			mu.Lock()
			defer mu.Unlock()
			ran = append(ran, task.ID)
			return "sent", nil
		}}})
	later, err := a.client.Submit(ctx, baton.TaskSpec{Group: "reminders", Kind: "reminder.send", Delay: 1500 * time.Millisecond,
		Payload: json.RawMessage(`{"invoice": 1}`)})
	if err != nil {
		t.Fatal(err)
	}
	now, err := a.client.Submit(ctx, baton.TaskSpec{Group: "reminders", Kind: "reminder.send"})
	if err != nil {
		t.Fatal(err)
	}
	if info := apptest.Wait(t, a.client, now, 10*time.Second); info.State != baton.TaskSucceeded {
		t.Fatalf("task without RunAt = %+v", info)
	}
	info, err := a.client.Get(ctx, later)
	if err != nil {
		t.Fatal(err)
	}
	if info.State != baton.TaskScheduled && !info.State.Terminal() {
		t.Fatalf("delayed task is %s before its time", info.State)
	}
	done := apptest.Wait(t, a.client, later, 20*time.Second)
	if done.State != baton.TaskSucceeded || done.StartedAt == nil {
		t.Fatalf("delayed task = %+v", done)
	}
	if done.StartedAt.Before(done.RunAt) || done.RunAt.Sub(done.SubmittedAt) < 1500*time.Millisecond {
		t.Fatalf("delayed task: submitted %s, run at %s, started %s: started before its time",
			done.SubmittedAt.Format(time.RFC3339Nano), done.RunAt.Format(time.RFC3339Nano), done.StartedAt.Format(time.RFC3339Nano))
	}
	mu.Lock()
	defer mu.Unlock()
	if len(ran) != 2 || ran[0] != now || ran[1] != later {
		t.Fatalf("ran %v, want %d then %d", ran, now, later)
	}

	// RunAt and Delay together, or a negative delay, are refused.
	if _, err := a.client.Submit(ctx, baton.TaskSpec{Group: "reminders", Kind: "reminder.send", Delay: time.Second, RunAt: time.Now()}); !errorsIs(err, baton.ErrInvalidTask) {
		t.Fatalf("run at and delay: %v", err)
	}
	if _, err := a.client.Submit(ctx, baton.TaskSpec{Group: "reminders", Kind: "reminder.send", Delay: -time.Second}); !errorsIs(err, baton.ErrInvalidTask) {
		t.Fatalf("negative delay: %v", err)
	}
	// A scheduled task can be canceled before it runs.
	id, err := a.client.Submit(ctx, baton.TaskSpec{Group: "reminders", Kind: "reminder.send", RunAt: time.Now().Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	if info, err := a.client.Cancel(ctx, id); err != nil || info.State != baton.TaskCanceled {
		t.Fatalf("cancel scheduled = %+v, %v", info, err)
	}
}

func errorsIs(err, target error) bool { return errors.Is(err, target) }

// 50 processes' worth of clients (a pool each) submit the same unique key at
// once, half of them inside their own transactions (InsertTx): one task is
// stored, and every submit gets its id; all but one are told it was a duplicate.
func TestUniqueKeyConcurrentSubmits(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	a := newApp(t)
	if _, err := a.client.CreateGroup(ctx, invoicing.Group, ""); err != nil {
		t.Fatal(err)
	}
	spec := baton.TaskSpec{Group: invoicing.Group, Kind: invoicing.KindSend, Payload: json.RawMessage(`{"invoice": 7}`),
		Unique: &baton.UniqueOpts{Key: "invoice-7-send"}}
	const n = 50
	clients := make([]*baton.Client, n)
	for i := range clients {
		cfg, err := pgxpool.ParseConfig(a.dsn)
		if err != nil {
			t.Fatal(err)
		}
		cfg.MaxConns = 1
		pool, err := pgxpool.NewWithConfig(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(pool.Close)
		if err := pool.Ping(ctx); err != nil {
			t.Fatal(err)
		}
		if clients[i], err = baton.NewClient(pool, &baton.ClientConfig{Logger: zaptest.NewLogger(t)}); err != nil {
			t.Fatal(err)
		}
	}
	results := make([]baton.SubmitResult, n)
	errs := make([]error, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			if i%2 == 0 {
				results[i], errs[i] = clients[i].Insert(ctx, spec)
				return
			}
			pool := clientPool(t, a.dsn)
			errs[i] = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
				var err error
				results[i], err = clients[i].InsertTx(ctx, tx, spec)
				return err
			})
		})
	}
	close(start)
	wg.Wait()
	inserted := 0
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("submit %d: %v", i, errs[i])
		}
		if results[i].ID != results[0].ID {
			t.Fatalf("submit %d got task %d, submit 0 got %d", i, results[i].ID, results[0].ID)
		}
		if !results[i].Duplicate {
			inserted++
		}
	}
	if inserted != 1 {
		t.Fatalf("%d submits inserted, want 1", inserted)
	}
	if got := a.count(t, "SELECT count(*) FROM baton.tasks WHERE unique_key = 'invoice-7-send'"); got != 1 {
		t.Fatalf("tasks with the key = %d, want 1", got)
	}
	info, err := a.client.Get(ctx, results[0].ID)
	if err != nil || info.UniqueKey != "invoice-7-send" || info.UniqueScope != baton.UniqueWhileActive {
		t.Fatalf("get = %+v, %v", info, err)
	}

	// While active only: once the holder has ended, the key is free again.
	if _, err := a.client.Cancel(ctx, results[0].ID); err != nil {
		t.Fatal(err)
	}
	again, err := a.client.Insert(ctx, spec)
	if err != nil || again.Duplicate || again.ID == results[0].ID {
		t.Fatalf("submit after the holder ended = %+v, %v; want a new task", again, err)
	}
	// Until pruned: a finished holder still holds it. Per period: once per period.
	forever := spec
	forever.Unique = &baton.UniqueOpts{Key: "welcome-acme", Scope: baton.UniqueUntilPruned}
	first, err := a.client.Insert(ctx, forever)
	if err != nil || first.Duplicate {
		t.Fatalf("first = %+v, %v", first, err)
	}
	if _, err := a.client.Cancel(ctx, first.ID); err != nil {
		t.Fatal(err)
	}
	if r, err := a.client.Insert(ctx, forever); err != nil || !r.Duplicate || r.ID != first.ID {
		t.Fatalf("until pruned, after the holder ended = %+v, %v; want duplicate of %d", r, err, first.ID)
	}
	daily := spec
	daily.Unique = &baton.UniqueOpts{Key: "digest", Scope: baton.UniqueForPeriod, Period: 24 * time.Hour}
	ids, err := a.client.InsertMany(ctx, []baton.TaskSpec{daily, daily})
	if err != nil || ids[0].Duplicate || !ids[1].Duplicate || ids[0].ID != ids[1].ID {
		t.Fatalf("two daily submits = %+v, %v", ids, err)
	}
	// The same key under another kind is another key.
	other := spec
	other.Kind = "invoice.other"
	if r, err := a.client.Insert(ctx, other); err != nil || r.Duplicate {
		t.Fatalf("same key, other kind = %+v, %v", r, err)
	}
	bad := spec
	bad.Unique = &baton.UniqueOpts{Key: "x", Scope: baton.UniqueForPeriod}
	if _, err := a.client.Insert(ctx, bad); !errors.Is(err, baton.ErrInvalidTask) {
		t.Fatalf("period scope without a period: %v", err)
	}
}

// clientPool is a pool of its own for one test client (closed with the test).
func clientPool(t *testing.T, dsn string) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 1
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// Every public call reports a canceled context as context.Canceled, and each
// documented error (docs/errors.md) matches with errors.Is.
func TestErrorsIs(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	a := newApp(t)
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := a.client.CreateGroup(ctx, "g", ""); err != nil {
		t.Fatal(err)
	}
	handlers := map[string]baton.Handler{"k": func(context.Context, baton.Task) (string, error) { return "", nil }}
	calls := map[string]func(context.Context) error{
		"Migrate":     func(ctx context.Context) error { return baton.Migrate(ctx, a.dsn) },
		"CheckSchema": func(ctx context.Context) error { return baton.CheckSchema(ctx, a.dsn) },
		"NewWorker": func(ctx context.Context) error {
			_, err := baton.NewWorker(ctx, baton.WorkerConfig{DatabaseURL: a.dsn, Group: "g", Handlers: handlers})
			return err
		},
		"NewMaster": func(ctx context.Context) error {
			_, err := baton.NewMaster(ctx, baton.MasterConfig{DatabaseURL: a.dsn})
			return err
		},
		"Submit": func(ctx context.Context) error {
			_, err := a.client.Submit(ctx, baton.TaskSpec{Group: "g", Kind: "k"})
			return err
		},
		"Insert unique": func(ctx context.Context) error {
			_, err := a.client.Insert(ctx, baton.TaskSpec{Group: "g", Kind: "k", Unique: &baton.UniqueOpts{Key: "u"}})
			return err
		},
		"Get":      func(ctx context.Context) error { _, err := a.client.Get(ctx, 1); return err },
		"Attempts": func(ctx context.Context) error { _, err := a.client.Attempts(ctx, 1); return err },
		"List":     func(ctx context.Context) error { _, err := a.client.List(ctx, baton.ListParams{}); return err },
		"Cancel":   func(ctx context.Context) error { _, err := a.client.Cancel(ctx, 1); return err },
		"Wait":     func(ctx context.Context) error { _, err := a.client.Wait(ctx, 1); return err },
		"Groups":   func(ctx context.Context) error { _, err := a.client.Groups(ctx); return err },
		"CreateGroup": func(ctx context.Context) error {
			_, err := a.client.CreateGroup(ctx, "h", "")
			return err
		},
		"SetGroupRetryBackoff": func(ctx context.Context) error {
			return a.client.SetGroupRetryBackoff(ctx, "g", baton.RetryBackoff{Base: time.Second, Max: time.Minute})
		},
	}
	for name, call := range calls {
		if err := call(canceled); !errors.Is(err, context.Canceled) {
			t.Errorf("%s with a canceled context: %v, want context.Canceled", name, err)
		}
	}
	if _, err := a.client.Attempts(ctx, 987654); !errors.Is(err, baton.ErrNotFound) {
		t.Errorf("Attempts of a missing task: %v, want ErrNotFound", err)
	}
	id, err := a.client.Submit(ctx, baton.TaskSpec{Group: "g", Kind: "k"})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := a.client.Attempts(ctx, id); err != nil || len(got) != 0 {
		t.Errorf("Attempts of a task not yet run = %v, %v; want none, nil", got, err)
	}
	for _, p := range []baton.ListParams{{State: "done"}, {Limit: -1}, {Limit: 10001}, {BeforeID: -5}} {
		if _, err := a.client.List(ctx, p); !errors.Is(err, baton.ErrInvalidArgument) {
			t.Errorf("List(%+v): %v, want ErrInvalidArgument", p, err)
		}
	}
	if got, err := a.client.List(ctx, baton.ListParams{State: baton.TaskQueued}); err != nil || len(got) != 1 {
		t.Errorf("List(queued) = %d tasks, %v", len(got), err)
	}
	if err := (baton.WorkerConfig{DatabaseURL: a.dsn}).Validate(); !errors.Is(err, baton.ErrInvalidConfig) {
		t.Errorf("Validate of a worker that can run nothing: %v, want ErrInvalidConfig", err)
	}
	if err := (baton.WorkerConfig{DatabaseURL: a.dsn, AllowShell: true}).Validate(); err != nil {
		t.Errorf("Validate of a shell-only worker: %v", err)
	}
	if _, err := a.client.Submit(ctx, baton.TaskSpec{Group: "nope", Kind: "k"}); !errors.Is(err, baton.ErrUnknownGroup) {
		t.Errorf("unknown group: %v", err)
	}
	if _, err := a.client.Submit(ctx, baton.TaskSpec{Group: "g", Kind: "bad kind"}); !errors.Is(err, baton.ErrInvalidTask) {
		t.Errorf("bad kind: %v", err)
	}
	if _, err := a.client.Get(ctx, 987654); !errors.Is(err, baton.ErrNotFound) {
		t.Errorf("Get of a missing task: %v", err)
	}
	if _, err := a.client.Cancel(ctx, id); err != nil {
		t.Fatal(err)
	}
	if _, err := a.client.Cancel(ctx, id); !errors.Is(err, baton.ErrTaskFinished) {
		t.Errorf("Cancel twice: %v", err)
	}
	if _, err := baton.NewClient(nil, nil); !errors.Is(err, baton.ErrInvalidConfig) {
		t.Errorf("NewClient(nil): %v", err)
	}
	if _, err := a.client.SubmitTx(ctx, nil, baton.TaskSpec{Group: "g", Kind: "k"}); !errors.Is(err, baton.ErrInvalidTask) {
		t.Errorf("SubmitTx(nil tx): %v", err)
	}
	empty := withQuery(t, apptest.NewEmptyDatabase(t), "search_path", "public")
	if err := baton.CheckSchema(ctx, empty); !errors.Is(err, baton.ErrSchemaOutdated) {
		t.Errorf("CheckSchema of an empty database: %v", err)
	}
}

// noopHandlers is a worker's handler set for tests whose worker runs nothing in
// particular (a worker that can run nothing is refused).
var noopHandlers = map[string]baton.Handler{"noop": func(context.Context, baton.Task) (string, error) { return "", nil }}

// reminder is a typed payload that checks itself.
type reminder struct {
	Invoice int64  `json:"invoice"`
	Email   string `json:"email"`
}

func (r reminder) Validate() error {
	if r.Invoice <= 0 {
		return fmt.Errorf("invoice %d is not an invoice id", r.Invoice)
	}
	return nil
}

// A typed handler gets its payload decoded; its worker declares the group's
// kinds with their payload types, so a submit of an unknown kind, or of a
// payload of the wrong shape (null, an array), fails at submit, and nothing is
// stored. The typed submit refuses what Validate refuses before any round trip.
func TestTypedHandlersAndDeclaredKinds(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	a := newApp(t)
	got := make(chan reminder, 1)
	cfg := baton.WorkerConfig{DatabaseURL: a.dsn, Group: "typed", Master: &baton.MasterConfig{}, DeclareKinds: true,
		Logger: zaptest.NewLogger(t)}
	baton.AddHandler(&cfg, "reminder.send", func(_ context.Context, _ baton.Task, r reminder) (string, error) {
		got <- r
		return r.Email, nil
	})
	apptest.StartWorker(t, cfg)

	spec, err := baton.TaskSpecFor("typed", "reminder.send", reminder{Invoice: 7, Email: "a@example.com"})
	if err != nil {
		t.Fatal(err)
	}
	id, err := a.client.Submit(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	if info := apptest.Wait(t, a.client, id, 10*time.Second); info.State != baton.TaskSucceeded || info.Output != "a@example.com" {
		t.Fatalf("typed task = %+v", info)
	}
	if r := <-got; r.Invoice != 7 {
		t.Fatalf("handler got %+v", r)
	}
	if _, err := baton.TaskSpecFor("typed", "reminder.send", reminder{}); !errors.Is(err, baton.ErrInvalidTask) {
		t.Fatalf("typed submit of an invalid payload: %v", err)
	}
	if _, err := baton.TaskSpecFor[*reminder]("typed", "reminder.send", nil); !errors.Is(err, baton.ErrInvalidTask) {
		t.Fatalf("typed submit of nil: %v", err)
	}
	before := a.count(t, "SELECT count(*) FROM baton.tasks")
	for _, payload := range []string{`null`, `[1,2]`, `"x"`} {
		_, err := a.client.Submit(ctx, baton.TaskSpec{Group: "typed", Kind: "reminder.send", Payload: json.RawMessage(payload)})
		if !errors.Is(err, baton.ErrInvalidTask) || !strings.Contains(err.Error(), "must be a JSON object") {
			t.Fatalf("payload %s: %v, want ErrInvalidTask at submit", payload, err)
		}
	}
	_, err = a.client.Submit(ctx, baton.TaskSpec{Group: "typed", Kind: "reminder.new"})
	if !errors.Is(err, baton.ErrUnknownKind) || !strings.Contains(err.Error(), "reminder.send") {
		t.Fatalf("unknown kind: %v, want ErrUnknownKind naming the declared kinds", err)
	}
	// Inside the caller's transaction too (which the refusal aborts).
	err = pgx.BeginFunc(ctx, a.pool, func(tx pgx.Tx) error {
		_, err := a.client.SubmitTx(ctx, tx, baton.TaskSpec{Group: "typed", Kind: "reminder.new"})
		return err
	})
	if !errors.Is(err, baton.ErrUnknownKind) {
		t.Fatalf("unknown kind in SubmitTx: %v", err)
	}
	if after := a.count(t, "SELECT count(*) FROM baton.tasks"); after != before {
		t.Fatalf("tasks %d -> %d: a refused submit stored something", before, after)
	}
	// A client declares a new kind ahead of the workers that will run it.
	if err := a.client.DeclareKinds(ctx, "typed", "reminder.new"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.client.Submit(ctx, baton.TaskSpec{Group: "typed", Kind: "reminder.new"}); err != nil {
		t.Fatalf("declared kind: %v", err)
	}
	// A group that declares nothing takes any kind.
	if _, err := a.client.Submit(ctx, baton.TaskSpec{Group: "open", Kind: "anything", CreateGroup: true}); err != nil {
		t.Fatal(err)
	}
	// The handler itself refuses a payload of the wrong shape for good.
	h := baton.HandlerFor(func(context.Context, baton.Task, reminder) (string, error) { return "", nil })
	for _, payload := range []string{`null`, `[1,2]`, `{"invoice": 0}`, `{"invoice": "x"}`} {
		_, err := apptest.RunTask(ctx, h, baton.TaskSpec{Kind: "reminder.send", Payload: json.RawMessage(payload)})
		if !baton.IsPermanent(err) || !errors.Is(err, baton.ErrInvalidTask) {
			t.Fatalf("handler on %s: %v, want a permanent ErrInvalidTask", payload, err)
		}
	}
}

// baton's test harness (testcontainers, the Docker client) is not in an
// adopter's module graph: no path from this module to testcontainers.
func TestNoTestcontainersInModuleGraph(t *testing.T) {
	t.Parallel()
	cmd := exec.Command("go", "mod", "why", "-m", "github.com/testcontainers/testcontainers-go")
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go mod why: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "main module does not need module github.com/testcontainers/testcontainers-go") {
		t.Fatalf("testcontainers is reachable from the adopter module:\n%s", out)
	}
}

// The README's quick start, compiled from README.md as an application of its
// own: it migrates, runs a task, prints it, and on Ctrl-C (SIGINT) drains and
// exits 0, its worker session closed as stopped (not left alive to be failed
// over).
func TestReadmeQuickStart(t *testing.T) {
	t.Parallel()
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(readme), "Put this in `main.go`")
	if !ok {
		t.Fatal("README.md has no quick start (\"Put this in `main.go`\")")
	}
	_, rest, _ = strings.Cut(rest, "```go\n")
	src, _, ok := strings.Cut(rest, "```\n")
	if !ok {
		t.Fatal("quick start code block not closed")
	}
	dir := t.TempDir()
	repo, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	gomod, err := os.ReadFile("go.mod")
	if err != nil {
		t.Fatal(err)
	}
	mod := strings.Replace(string(gomod), "module example.com/invoicing", "module example.com/app", 1)
	mod = strings.Replace(mod, "=> ../..", "=> "+repo, 1)
	gosum, err := os.ReadFile("go.sum")
	if err != nil {
		t.Fatal(err)
	}
	for name, body := range map[string]string{"main.go": src, "go.mod": mod, "go.sum": string(gosum)} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	bin := filepath.Join(dir, "app")
	build := exec.Command("go", "build", "-mod=mod", "-o", bin, ".")
	build.Dir = dir
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("the README quick start does not compile: %v\n%s", err, out)
	}
	dsn := withQuery(t, apptest.NewEmptyDatabase(t), "search_path", "public")
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), "DATABASE_URL="+dsn)
	r, w := io.Pipe()
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait(); w.Close() }()
	var out strings.Builder
	printed := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(r)
		sc.Buffer(nil, 1<<20)
		once := false
		for sc.Scan() {
			out.WriteString(sc.Text() + "\n")
			if !once && strings.Contains(sc.Text(), `: succeeded "sent"`) {
				once = true
				close(printed)
			}
		}
	}()
	select {
	case <-printed:
	case err := <-exited:
		t.Fatalf("quick start exited before printing its task: %v", err)
	case <-time.After(60 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatal("quick start printed no succeeded task in 60 s")
	}
	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("quick start after Ctrl-C: %v", err)
		}
	case <-time.After(60 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatal("quick start did not exit within 60 s of Ctrl-C")
	}
	pool := clientPool(t, dsn)
	var alive, stopped int
	if err := pool.QueryRow(context.Background(), `SELECT count(*) FILTER (WHERE state = 'alive'), count(*) FILTER (WHERE state = 'stopped')
		FROM baton.worker_sessions`).Scan(&alive, &stopped); err != nil {
		t.Fatal(err)
	}
	if alive != 0 || stopped != 1 {
		t.Fatalf("after Ctrl-C: %d alive, %d stopped worker sessions; want 0, 1 (drained)", alive, stopped)
	}
}

// Tags find a customer's tasks; after Permanent the submitted retry limit is
// still visible; a Worker or Master that is never run is closed with Close.
func TestTagsPermanentAndClose(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	a := newApp(t)
	cfg := baton.WorkerConfig{DatabaseURL: a.dsn, Group: "tags", Master: &baton.MasterConfig{}, Logger: zaptest.NewLogger(t),
		Handlers: map[string]baton.Handler{"fail": func(context.Context, baton.Task) (string, error) {
			return "", baton.Permanent(errors.New("no such customer"))
		}}}
	apptest.StartWorker(t, cfg)
	ids, err := a.client.SubmitMany(ctx, []baton.TaskSpec{
		{Group: "tags", Kind: "fail", MaxRetries: 3, Tags: []string{"customer=acme", "invoice"}},
		{Group: "tags", Kind: "fail", Tags: []string{"customer=globex"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	got, err := a.client.List(ctx, baton.ListParams{Tags: []string{"customer=acme"}})
	if err != nil || len(got) != 1 || got[0].ID != ids[0] || len(got[0].Tags) != 2 {
		t.Fatalf("list by tag = %+v, %v", got, err)
	}
	if got, err := a.client.List(ctx, baton.ListParams{Tags: []string{"customer=acme", "customer=globex"}}); err != nil || len(got) != 0 {
		t.Fatalf("list by two tags = %+v, %v; want none has both", got, err)
	}
	if _, err := a.client.Submit(ctx, baton.TaskSpec{Group: "tags", Kind: "fail", Tags: []string{"bad tag"}}); !errors.Is(err, baton.ErrInvalidTask) {
		t.Fatalf("bad tag: %v", err)
	}
	info := apptest.Wait(t, a.client, ids[0], 10*time.Second)
	if info.State != baton.TaskFailed || info.MaxRetries != 0 || info.SubmittedMaxRetries != 3 || info.Retries != 0 {
		t.Fatalf("after Permanent = state %s, max retries %d, submitted %d, retries %d; want failed, 0, 3, 0",
			info.State, info.MaxRetries, info.SubmittedMaxRetries, info.Retries)
	}

	w, err := baton.NewWorker(ctx, baton.WorkerConfig{DatabaseURL: a.dsn, Group: "idle", Handlers: noopHandlers,
		Master: &baton.MasterConfig{}, Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := w.Run(ctx); err == nil {
		t.Fatal("Run after Close returned nil")
	}
	m, err := baton.NewMaster(ctx, baton.MasterConfig{DatabaseURL: a.dsn, Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	// Nothing left open: goleak (TestMain) checks the goroutines; the
	// sessions are not left alive.
	if n := a.count(t, "SELECT count(*) FROM baton.master_sessions WHERE state = 'alive'"); n != 1 {
		t.Fatalf("alive masters = %d, want 1 (the running worker's)", n)
	}
}

// An application logging with log/slog gets baton's logs there.
func TestSlogLogger(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	a := newApp(t)
	var mu sync.Mutex
	var buf strings.Builder
	h := slog.NewJSONHandler(writerFunc(func(p []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		return buf.Write(p)
	}), &slog.HandlerOptions{Level: slog.LevelInfo})
	apptest.StartWorker(t, baton.WorkerConfig{DatabaseURL: a.dsn, Group: "slog", Handlers: noopHandlers,
		Logger: baton.SlogLogger(h), MasterCheckInterval: 20 * time.Millisecond})
	if _, err := a.client.Groups(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return strings.Contains(buf.String(), `"level":"WARN","msg":"no live master`) && strings.Contains(buf.String(), `"group":"slog"`)
	})
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
