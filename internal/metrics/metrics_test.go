package metrics

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"

	"github.com/baton-scheduler/baton/batontest"
)

var srv *batontest.Server

func TestMain(m *testing.M) {
	os.Exit(batontest.MainNoLeaks(m, func(s *batontest.Server) { srv = s }))
}

// The cluster gauges follow the rows, and every metric passes promlint.
func TestClusterGaugesAndLint(t *testing.T) {
	t.Parallel()
	pool, _ := srv.NewPool(t)
	ctx := context.Background()
	batontest.NewWorkerSession(t, pool, &batontest.WorkerSessionOpts{Group: batontest.Ptr("g"), HeartbeatAge: batontest.Ptr(30 * time.Second)})
	batontest.NewWorkerSession(t, pool, &batontest.WorkerSessionOpts{Group: batontest.Ptr("g"), State: batontest.Ptr("draining")})
	batontest.NewGroup(t, pool, &batontest.GroupOpts{Name: batontest.Ptr("idle")})
	for range 3 {
		batontest.NewTask(t, pool, &batontest.TaskOpts{Group: batontest.Ptr("g")})
	}
	// One runs in an hour: scheduled, not queued.
	if _, err := pool.Exec(ctx, `INSERT INTO tasks (group_name, kind, state, available_at) VALUES ('g', 'k', 'scheduled', now() + interval '1 hour')`); err != nil {
		t.Fatal(err)
	}
	// The oldest became runnable 90 s ago.
	if _, err := pool.Exec(ctx, `UPDATE tasks SET available_at = now() - interval '90 seconds' WHERE id = (SELECT min(id) FROM tasks)`); err != nil {
		t.Fatal(err)
	}
	c := NewCluster(pool, "baton", time.Hour, nil)
	reg := NewRegistry("test")
	w, m := NewWorker("g"), NewMaster()
	reg.MustRegister(c, NewPoolCollector(pool, "test"), w, m)
	// Every per-process series once, so promlint sees them all.
	w.AttemptStarted()
	w.AttemptFinished("succeeded", time.Second)
	w.ResultsFenced(1)
	w.SelfFenced()
	w.SessionLost()
	w.Heartbeat(time.Millisecond)
	w.Claim(time.Millisecond)
	m.Failover("worker")
	m.TasksMoved("g", 1, 1, 1)
	m.Heartbeat(time.Millisecond)
	m.SessionLost()
	c.Refresh(ctx)

	want := `
# HELP baton_tasks Unfinished tasks by group and state (scheduled, queued, dispatched, running), from SQL.
# TYPE baton_tasks gauge
baton_tasks{group="g",state="dispatched"} 0
baton_tasks{group="g",state="queued"} 3
baton_tasks{group="g",state="running"} 0
baton_tasks{group="g",state="scheduled"} 1
baton_tasks{group="idle",state="dispatched"} 0
baton_tasks{group="idle",state="queued"} 0
baton_tasks{group="idle",state="running"} 0
baton_tasks{group="idle",state="scheduled"} 0
# HELP baton_workers Live worker sessions by group and state (alive, draining).
# TYPE baton_workers gauge
baton_workers{group="g",state="alive"} 1
baton_workers{group="g",state="draining"} 1
baton_workers{group="idle",state="alive"} 0
baton_workers{group="idle",state="draining"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "baton_tasks", "baton_workers"); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	values := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			key := mf.GetName()
			for _, l := range m.GetLabel() {
				key += "/" + l.GetValue()
			}
			values[key] = m.GetGauge().GetValue() + m.GetCounter().GetValue()
		}
	}
	if age := values["baton_queue_oldest_runnable_age_seconds/g"]; age < 89 || age > 3600 {
		t.Errorf("oldest runnable age %v, want about 90 s", age)
	}
	if age := values["baton_queue_oldest_runnable_age_seconds/idle"]; age != 0 {
		t.Errorf("idle group's oldest runnable age %v, want 0", age)
	}
	var pgNow float64
	if err := pool.QueryRow(ctx, `SELECT extract(epoch FROM now())`).Scan(&pgNow); err != nil {
		t.Fatal(err)
	}
	// The newest heartbeat of g is the draining session's (fresh), not the alive one's (30 s old).
	if hb := values["baton_group_last_heartbeat_timestamp_seconds/g"]; pgNow-hb > 10 || hb > pgNow+1 {
		t.Errorf("group heartbeat timestamp %v, Postgres now %v", hb, pgNow)
	}
	if _, ok := values["baton_group_last_heartbeat_timestamp_seconds/idle"]; ok {
		t.Error("a group without sessions has a heartbeat timestamp")
	}
	found := false
	for k := range values {
		found = found || strings.HasPrefix(k, "baton_build_info/")
	}
	if !found {
		t.Error("no baton_build_info")
	}

	// Naming conventions, on everything the registry exposes.
	problems, err := promlint.NewWithMetricFamilies(mfs).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
	// Bounded labels: only these label names on baton's own metrics.
	allowed := map[string]bool{"group": true, "state": true, "outcome": true, "pool": true, "version": true, "goversion": true, "kind": true}
	for _, mf := range mfs {
		if !strings.HasPrefix(mf.GetName(), "baton_") {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if !allowed[l.GetName()] {
					t.Errorf("%s has label %q: unbounded label sets are not allowed", mf.GetName(), l.GetName())
				}
			}
		}
	}
}
