package cli

import (
	"context"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/baton-scheduler/baton/batontest"
)

// baton-master --http-addr serves the API beside the master; baton healthcheck
// reads its /readyz and /livez, and fails when nothing listens.
func TestMasterHTTPAndHealthcheck(t *testing.T) {
	t.Parallel()
	dsn := srv.NewDatabase(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	url := "http://" + addr
	if _, e, code := baton(t, nil, "healthcheck", "--url", url, "--timeout", "2s"); code != 1 || !strings.Contains(e, "healthcheck") {
		t.Fatalf("healthcheck with nothing listening: %d %q", code, e)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	errb := &syncWriter{b: &strings.Builder{}}
	go func() {
		done <- MasterMain(ctx, []string{"--http-addr", addr, "--log-level", "error"}, func(k string) string {
			if k == "BATON_DATABASE_URL" {
				return dsn
			}
			return ""
		}, errb)
	}()
	defer func() {
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("baton-master exited %d: %s", code, errb.String())
		}
	}()
	var out, e string
	var code int
	for range 100 {
		out, e, code = baton(t, nil, "healthcheck", "--url", url, "--timeout", "2s")
		if code == 0 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if code != 0 || !strings.Contains(out, `"status":"ok"`) {
		t.Fatalf("healthcheck /readyz: %d %q %q", code, out, e)
	}
	if out, e, code := baton(t, nil, "healthcheck", "--url", url, "--path", "/livez"); code != 0 {
		t.Fatalf("healthcheck /livez: %d %q %q", code, out, e)
	}
	if out, e, code := baton(t, nil, "healthcheck", "--url", url, "--path", "/metrics"); code != 0 || !strings.Contains(out, "baton_") {
		t.Fatalf("/metrics: %d %q %q", code, out, e)
	}
	// The master's own counters and pool beside the cluster gauges.
	batontest.WaitFor(t, 20*time.Second, func() (bool, string) {
		got, _ := batontest.Scrape(t, url+"/metrics")
		return got["baton_master_heartbeat_duration_seconds_count"] >= 1 && got[`baton_db_pool_max_connections{pool="master"}`] > 0,
			"master heartbeats timed and its pool reported on /metrics"
	})
	if _, e, code := baton(t, nil, "healthcheck", "--url", url, "--path", "/api/v1/tasks"); code != 1 || !strings.Contains(e, "401") {
		t.Fatalf("healthcheck of an API route without a token: %d %q", code, e)
	}
}

// syncWriter serializes writes of the daemon's goroutines to a builder.
type syncWriter struct {
	mu sync.Mutex
	b  *strings.Builder
}

func (w *syncWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (w *syncWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}
