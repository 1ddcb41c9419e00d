package baton_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/baton-scheduler/baton"
	"github.com/baton-scheduler/baton/batontest"
	"github.com/baton-scheduler/baton/internal/contain"
)

// cancelRig is one embedded worker (and master) of group "app" with one slot.
type cancelRig struct {
	pool   *pgxpool.Pool
	client *baton.Client
	worker *baton.Worker
}

func startCancelRig(t *testing.T, cfg baton.WorkerConfig) (*cancelRig, context.Context) {
	t.Helper()
	pool, dsn := srv.NewPool(t)
	ctx, cancel := context.WithCancel(context.Background())
	cfg.DatabaseURL, cfg.Group, cfg.Slots = dsn, "app", 1
	cfg.Logger = zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel))
	cfg.Master = &baton.MasterConfig{}
	if cfg.Handlers == nil {
		cfg.Handlers = map[string]baton.Handler{}
	}
	cfg.Handlers["noop"] = func(context.Context, baton.Task) (string, error) { return "noop", nil }
	w, err := baton.NewWorker(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	select {
	case <-w.Ready():
	case <-time.After(20 * time.Second):
		t.Fatal("worker not ready")
	}
	client, err := baton.NewClient(pool, &baton.ClientConfig{Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	return &cancelRig{pool: pool, client: client, worker: w}, ctx
}

// runsNext proves the worker's only slot is free: a new task runs and succeeds.
func (r *cancelRig) runsNext(t *testing.T, ctx context.Context) {
	t.Helper()
	id, err := r.client.Submit(ctx, baton.TaskSpec{Group: "app", Kind: "noop"})
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	info, err := r.client.Wait(wctx, id)
	if err != nil || info.State != baton.TaskSucceeded {
		t.Fatalf("the slot is not free after the cancel: next task %+v, %v", info, err)
	}
}

// stillCanceled checks the canceled task was not changed by its stopped attempt.
func (r *cancelRig) stillCanceled(t *testing.T, ctx context.Context, id int64, refused string) {
	t.Helper()
	info, err := r.client.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if info.State != baton.TaskCanceled || info.Output != "" {
		t.Fatalf("canceled task is now %s with output %q", info.State, info.Output)
	}
	atts, err := r.client.Attempts(ctx, id)
	if err != nil || len(atts) != 1 {
		t.Fatalf("attempts %+v, %v", atts, err)
	}
	if atts[0].Outcome != "canceled" || atts[0].RefusedOutcome != refused {
		t.Fatalf("attempt %+v: want outcome canceled, refused outcome %q", atts[0], refused)
	}
}

type seen struct {
	cause, lease error
}

// A running Go handler learns of the cancel: its ctx ends with ErrTaskCanceled as
// the cause and CheckLease reports it; nothing it returns afterwards changes the
// task; the slot is free again. Case "notify": the claim and check polls are off
// (a day), so only the cancel's NOTIFY can tell the worker. Case "poll": the task
// is canceled by a write that sends no NOTIFY (as a lost one, or a writer other
// than Client.Cancel), so only the worker's poll of its running attempts can.
func TestCancelStopsGoHandler(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"notify", "poll"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			started := make(chan int64, 1)
			got := make(chan seen, 1)
			poll := 24 * time.Hour
			if mode == "poll" {
				poll = 50 * time.Millisecond
			}
			r, ctx := startCancelRig(t, baton.WorkerConfig{PollInterval: poll, Handlers: map[string]baton.Handler{
				"block": func(ctx context.Context, task baton.Task) (string, error) {
					started <- task.ID
					<-ctx.Done()
					got <- seen{cause: context.Cause(ctx), lease: task.CheckLease()}
					return "", ctx.Err()
				},
			}})
			id, err := r.client.Submit(ctx, baton.TaskSpec{Group: "app", Kind: "block"})
			if err != nil {
				t.Fatal(err)
			}
			waitChan(t, started, "handler never started")
			if mode == "notify" {
				if _, err := r.client.Cancel(ctx, id); err != nil {
					t.Fatal(err)
				}
			} else {
				if _, err := r.pool.Exec(ctx, `UPDATE baton.tasks SET state = 'canceled', worker_session_id = NULL,
					finished_at = now(), last_error = 'canceled without a NOTIFY' WHERE id = $1 AND state = 'running'`, id); err != nil {
					t.Fatal(err)
				}
			}
			s := waitChan(t, got, "the handler's ctx was never canceled")
			if !errors.Is(s.cause, baton.ErrTaskCanceled) {
				t.Fatalf("ctx cause %v, want ErrTaskCanceled", s.cause)
			}
			if !errors.Is(s.lease, baton.ErrTaskCanceled) {
				t.Fatalf("CheckLease = %v, want ErrTaskCanceled", s.lease)
			}
			r.runsNext(t, ctx)
			if mode == "notify" {
				r.stillCanceled(t, ctx, id, "")
			}
		})
	}
}

// A handler that ignores the cancel: one that returns success after its ctx
// ended has its result refused (recorded as the canceled attempt's refused
// outcome); one that never returns has its slot freed KillGrace after the cancel,
// and its late result is dropped.
func TestCancelFencesIgnoringHandler(t *testing.T) {
	t.Parallel()
	started := make(chan int64, 2)
	release := make(chan struct{})
	r, ctx := startCancelRig(t, baton.WorkerConfig{KillGrace: 300 * time.Millisecond, Handlers: map[string]baton.Handler{
		"anyway": func(ctx context.Context, task baton.Task) (string, error) {
			started <- task.ID
			<-ctx.Done()
			return "did it anyway", nil
		},
		"stuck": func(_ context.Context, task baton.Task) (string, error) {
			started <- task.ID
			<-release
			return "late", nil
		},
	}})
	defer close(release)

	id, err := r.client.Submit(ctx, baton.TaskSpec{Group: "app", Kind: "anyway"})
	if err != nil {
		t.Fatal(err)
	}
	waitChan(t, started, "handler never started")
	if _, err := r.client.Cancel(ctx, id); err != nil {
		t.Fatal(err)
	}
	r.runsNext(t, ctx)
	batontest.WaitFor(t, 30*time.Second, func() (bool, string) {
		atts, err := r.client.Attempts(ctx, id)
		return err == nil && len(atts) == 1 && atts[0].RefusedOutcome != "", "the result reported after the cancel was never refused"
	})
	r.stillCanceled(t, ctx, id, "succeeded")

	id, err = r.client.Submit(ctx, baton.TaskSpec{Group: "app", Kind: "stuck"})
	if err != nil {
		t.Fatal(err)
	}
	waitChan(t, started, "handler never started")
	if _, err := r.client.Cancel(ctx, id); err != nil {
		t.Fatal(err)
	}
	r.runsNext(t, ctx) // while "stuck" still runs: its slot was freed without it
	r.stillCanceled(t, ctx, id, "")
}

// A canceled shell task's whole process tree is killed — a background child and
// a double-forked setsid daemon included — and the slot is free again. The claim
// poll is off: the cancel's NOTIFY stops it.
func TestCancelKillsShellTree(t *testing.T) {
	t.Parallel()
	r, ctx := startCancelRig(t, baton.WorkerConfig{AllowShell: true, PollInterval: 24 * time.Hour})
	dir := t.TempDir()
	script := `
rec() { echo "$2" > "$D/$1.tmp" && mv "$D/$1.tmp" "$D/$1.pid"; }
rec shell $$
sh -c 'setsid sh -c '"'"'echo $$ > "$D/daemon.tmp" && mv "$D/daemon.tmp" "$D/daemon.pid" && exec sleep 1000'"'"' </dev/null >/dev/null 2>&1 & exit 0'
sleep 1000 &
rec child $!
wait
`
	if err := os.WriteFile(filepath.Join(dir, "tree.sh"), []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	payload, _ := json.Marshal(map[string]any{"command": `. "$D/tree.sh"`, "env": map[string]string{"D": dir}})
	id, err := r.client.Submit(ctx, baton.TaskSpec{Group: "app", Kind: baton.KindShell, Payload: payload})
	if err != nil {
		t.Fatal(err)
	}
	type proc struct {
		name  string
		pid   int
		start uint64
	}
	var procs []proc
	for _, name := range []string{"shell", "daemon", "child"} {
		var p proc
		batontest.WaitFor(t, 30*time.Second, func() (bool, string) {
			raw, err := os.ReadFile(filepath.Join(dir, name+".pid"))
			if err != nil {
				return false, name + " never recorded its pid"
			}
			pid, err := strconv.Atoi(strings.TrimSpace(string(raw)))
			if err != nil {
				t.Fatal(err)
			}
			start, err := contain.StartTime(pid)
			if err != nil {
				t.Fatalf("%s (pid %d) gone before the cancel: %v", name, pid, err)
			}
			p = proc{name, pid, start}
			return true, ""
		})
		t.Cleanup(func() {
			if contain.Alive(p.pid, p.start) {
				_ = syscall.Kill(p.pid, syscall.SIGKILL)
			}
		})
		procs = append(procs, p)
	}
	if _, err := r.client.Cancel(ctx, id); err != nil {
		t.Fatal(err)
	}
	for _, p := range procs {
		batontest.WaitFor(t, 30*time.Second, func() (bool, string) {
			return !contain.Alive(p.pid, p.start), p.name + " survived the cancel"
		})
	}
	r.runsNext(t, ctx)
	r.stillCanceled(t, ctx, id, "")
}

func waitChan[T any](t *testing.T, ch <-chan T, msg string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(30 * time.Second):
		t.Fatal(msg)
	}
	var zero T
	return zero
}
