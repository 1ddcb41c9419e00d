package master

import (
	"net"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zaptest"

	"github.com/baton-scheduler/baton/batontest"
	"github.com/baton-scheduler/baton/internal/metrics"
)

// The master's counters move when the events happen, read through a real
// /metrics endpoint: a worker failover (its event and the tasks it moved), a
// master failover, heartbeats, and a re-registration after being declared dead.
func TestMasterMetricsCountEvents(t *testing.T) {
	t.Parallel()
	mm := metrics.NewMaster()
	b := setup(t, Config{Metrics: mm, CrashDetectAfter: CrashDetectOff})
	reg := prometheus.NewRegistry()
	reg.MustRegister(mm)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	stop := metrics.Serve(ln, reg, zaptest.NewLogger(t))
	defer stop()
	url := "http://" + ln.Addr().String() + "/metrics"

	before, _ := batontest.Scrape(t, url)
	if n := before[`baton_master_failovers_total{kind="worker"}`]; n != 0 {
		t.Fatalf("worker failovers before any = %v", n)
	}

	b.exec("INSERT INTO worker_groups (name) VALUES ('g')")
	dead := b.session("g", 2, time.Hour)
	b.running("g", dead, 0, time.Minute)
	b.running("g", dead, 0, time.Minute)
	if res, err := b.m.workerSweeper.runOnce(b.within()); err != nil || res.FailedOver != 1 || res.Queued != 2 {
		t.Fatalf("worker sweep = %+v, %v; want one failover queueing 2 tasks", res, err)
	}
	// A second sweep finds the event finished: nothing is counted twice.
	if _, err := b.m.workerSweeper.runOnce(b.within()); err != nil {
		t.Fatal(err)
	}
	b.exec("INSERT INTO master_sessions (name, last_heartbeat_at) VALUES ('m', now() - interval '1 hour')")
	if res, err := b.m.masterSweeper.runOnce(b.within()); err != nil || res.Recorded != 1 {
		t.Fatalf("master sweep = %+v, %v", res, err)
	}
	if _, err := b.m.heartbeat.runOnce(b.within()); err != nil {
		t.Fatal(err)
	}
	b.exec("UPDATE master_sessions SET state = 'dead', ended_at = now() WHERE id = $1", b.m.SessionID())
	if res, err := b.m.heartbeat.runOnce(b.within()); err != nil || !res.Reregistered {
		t.Fatalf("heartbeat = %+v, %v", res, err)
	}

	got, _ := batontest.Scrape(t, url)
	for series, want := range map[string]float64{
		`baton_master_failovers_total{kind="worker"}`:                   1,
		`baton_master_failovers_total{kind="master"}`:                   1,
		`baton_master_failover_tasks_total{group="g",outcome="queued"}`: 2,
		`baton_master_sessions_lost_total`:                              1,
		`baton_master_heartbeat_duration_seconds_count`:                 2,
		`baton_master_heartbeat_duration_seconds_bucket{le="+Inf"}`:     2,
	} {
		if got[series] != want {
			t.Errorf("%s = %v, want %v", series, got[series], want)
		}
	}
	if n := b.int64("SELECT count(*) FROM failover_events WHERE kind = 'worker'"); n != 1 {
		t.Fatalf("worker failover events = %d", n)
	}
}
