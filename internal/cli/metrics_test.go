package cli

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"

	"github.com/baton-scheduler/baton/batontest"
	"github.com/baton-scheduler/baton/internal/submit"
)

// baton-worker --metrics-addr serves /metrics and /livez: the worker's counters
// (a task it runs moves them), its pool and build info, promlint clean; a taken
// address fails the start.
func TestWorkerMetricsEndpoint(t *testing.T) {
	t.Parallel()
	pool, dsn := srv.NewPool(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	env := func(k string) string {
		if k == "BATON_DATABASE_URL" {
			return dsn
		}
		return ""
	}
	// Taken (ln still listens): a clear error, exit 1.
	errb := &syncWriter{b: &strings.Builder{}}
	if code := WorkerMain(context.Background(), []string{"--metrics-addr", addr, "--log-level", "error"}, env, BuiltinHandlers(), errb); code != 1 || !strings.Contains(errb.String(), "--metrics-addr "+addr) {
		t.Fatalf("worker on a taken metrics address: exit %d: %s", code, errb.String())
	}
	ln.Close()

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	errb = &syncWriter{b: &strings.Builder{}}
	go func() {
		done <- WorkerMain(ctx, []string{"--metrics-addr", addr, "--group", "mg", "--log-level", "error"}, env, BuiltinHandlers(), errb)
	}()
	defer func() {
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("baton-worker exited %d: %s", code, errb.String())
		}
	}()
	url := "http://" + addr
	batontest.WaitFor(t, 20*time.Second, func() (bool, string) {
		out, _, code := baton(t, nil, "healthcheck", "--url", url, "--path", "/livez", "--timeout", "1s")
		return code == 0 && strings.Contains(out, `"status":"ok"`), "worker /livez answers"
	})
	batontest.WaitFor(t, 20*time.Second, func() (bool, string) {
		n := batontest.Int64(t, pool, "SELECT count(*) FROM worker_sessions WHERE group_name = 'mg' AND state = 'alive'")
		return n == 1, "worker registered"
	})
	if _, err := submit.Many(context.Background(), pool, []submit.Spec{{Group: "mg", Kind: "noop", Payload: []byte(`{}`)}}); err != nil {
		t.Fatal(err)
	}
	var got map[string]float64
	var text string
	batontest.WaitFor(t, 20*time.Second, func() (bool, string) {
		got, text = batontest.Scrape(t, url+"/metrics")
		return got[`baton_worker_attempts_finished_total{group="mg",outcome="succeeded"}`] == 1, "the noop task counted as succeeded"
	})
	if got[`baton_worker_attempts_started_total{group="mg"}`] != 1 {
		t.Errorf("attempts started = %v, want 1", got[`baton_worker_attempts_started_total{group="mg"}`])
	}
	for _, want := range []string{`baton_db_pool_max_connections{pool="worker"}`, `baton_worker_self_fences_total{group="mg"}`, "baton_build_info{"} {
		if !strings.Contains(text, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	problems, err := promlint.New(strings.NewReader(text)).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
}
