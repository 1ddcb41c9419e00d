package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/baton-scheduler/baton/internal/chaos"
	"github.com/baton-scheduler/baton/internal/submit"
)

// A worker that stalls (SIGSTOP of the worker process alone: a GC pause, CPU
// starvation, a debugger; its task processes keep running) while Postgres closes
// its connections (pg_terminate_backend: a DBA, idle_session_timeout, a proxy
// reset) must not have its tasks run twice at once. Postgres frees the liveness
// lock with the connection, so masters may declare the session dead before the
// heartbeat timeout — which is only sound if the stalled worker's shell tasks are
// killed before that. Issue 15.1: on the code before the fix, the masters declared
// the session dead ~1.4 s after the fault and the old trees ran ~2.2 s longer.
//
// The tasks write a ledger row when they start and a tick every 50 ms (Postgres
// clock_timestamp()); the verdict is read from those timestamps only: no two
// attempts of a task overlap, and the stalled worker's last tick precedes the
// moment its session was declared dead (so it also precedes every new attempt).
func TestStalledWorkerLosingConnectionsRunsNothingTwice(t *testing.T) {
	for _, tc := range []struct {
		name string
		// which of the victim's backends are terminated
		terminate string
	}{
		{"lock connection", `SELECT pg_terminate_backend(pid) FROM pg_locks
			WHERE locktype = 'advisory' AND classid = 1650524164 AND objid = hashtext($1::bigint::text)::oid AND granted
			  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`},
		{"all connections", `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
			WHERE application_name = 'baton-victim' AND datname = current_database() AND $1::bigint IS NOT NULL`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			pool, dsn := srv.NewPool(t)
			c := NewCluster(t, pool, dsn, group)
			c.StartMaster("m1")
			c.StartWorker("survivor", slots)
			victim := Start(t, "victim", c.Bins.Worker, WorkerArgs(withAppName(dsn, "baton-victim"), "victim", group, slots))
			c.Workers = append(c.Workers, victim)
			c.WaitReady(readyTimeout)
			session := c.WorkerSession("victim", true)
			WaitFor(t, readyTimeout, func() (bool, string) {
				return c.Int(`SELECT count(*) FROM worker_sessions WHERE id = $1 AND liveness_lock`, session) == 1, "victim promised its liveness lock"
			})

			// A first attempt on the victim: start, then tick every 50 ms for a
			// long time. Any other attempt (the victim, continued, may claim one
			// too): start, a few ticks, end.
			ledger := shellQuote(c.Bins.Ledger)
			cmd := fmt.Sprintf(`%[1]s start && if [ "$BATON_WORKER" = victim ] && [ "$BATON_ATTEMPT" = 1 ]; then exec %[1]s ticks 100000 50ms; fi; %[1]s ticks 3 50ms && %[1]s end`, ledger)
			payload, err := json.Marshal(map[string]any{"command": cmd, "env": map[string]string{"BATON_LEDGER_DSN": dsn}})
			if err != nil {
				t.Fatal(err)
			}
			specs := make([]submit.Spec, 12)
			for i := range specs {
				specs[i] = submit.Spec{Group: group, Kind: submit.KindShell, Payload: payload}
			}
			ids, err := submit.Many(context.Background(), pool, specs)
			if err != nil {
				t.Fatal(err)
			}
			WaitFor(t, startTimeout, func() (bool, string) {
				n := c.Int(`SELECT count(DISTINCT l.task_id) FROM ledger l JOIN tasks t ON t.id = l.task_id AND t.attempt = l.attempt
					WHERE t.worker_session_id = $1 AND t.state = 'running' AND l.kind = 'tick'`, session)
				return n == slots, fmt.Sprintf("victim's tasks ticking: %d/%d", n, slots)
			})

			victim.Stop() // SIGSTOP of the worker process only; its supervisors and tasks run on
			terminated := c.Int(`SELECT count(*) FROM (`+tc.terminate+`) k`, session)
			if terminated == 0 {
				t.Fatal("no backend of the victim was terminated")
			}
			var faultAt time.Time
			c.Scan(`SELECT clock_timestamp()`, nil, &faultAt)
			t.Logf("victim stopped, %d backend(s) terminated at %s", terminated, faultAt.Format("15:04:05.000"))

			// Stay stopped until the session is declared dead (crash detection or
			// the heartbeat timeout), and a moment longer than the supervisors'
			// 4 s frozen timer of the old code, so every overlap can show.
			WaitFor(t, failoverTimeout, func() (bool, string) {
				return c.Int(`SELECT count(*) FROM worker_sessions WHERE id = $1 AND state = 'dead'`, session) == 1, "victim declared dead"
			})
			WaitFor(t, failoverTimeout, func() (bool, string) {
				var since time.Duration
				c.Scan(`SELECT clock_timestamp() - $1::timestamptz`, []any{faultAt}, &since)
				return since > 6*time.Second, "6 s after the fault"
			})
			victim.Cont()
			c.WaitAllTerminal(terminalTimeout)

			var endedAt, lastHB time.Time
			c.Scan(`SELECT ended_at, last_heartbeat_at FROM worker_sessions WHERE id = $1`, []any{session}, &endedAt, &lastHB)
			var lastOld time.Time
			c.Scan(`SELECT max(at) FROM ledger WHERE session_id = $1`, []any{session}, &lastOld)
			t.Logf("victim: last heartbeat %s, last task write %s, declared dead %s (%s after its last heartbeat)",
				lastHB.Format("15:04:05.000"), lastOld.Format("15:04:05.000"), endedAt.Format("15:04:05.000"),
				endedAt.Sub(lastHB).Round(time.Millisecond))

			f, err := chaos.Check(context.Background(), pool, ids)
			if err != nil {
				t.Fatal(err)
			}
			if f.Overlaps != 0 || f.Lost != 0 || f.Reruns != 0 || f.Foreign != 0 {
				t.Fatalf("overlapping attempts %d %v; lost %d %v; reruns %d %v; foreign %d %v",
					f.Overlaps, f.OverRows, f.Lost, f.LostRows, f.Reruns, f.RerunRows, f.Foreign, f.ForeignRows)
			}
			// The old trees were killed before the session was declared dead, so
			// before any of their tasks could start elsewhere.
			if !lastOld.Before(endedAt) {
				t.Fatalf("the stalled worker's tasks wrote until %s, %s after its session was declared dead at %s",
					lastOld.Format("15:04:05.000"), lastOld.Sub(endedAt).Round(time.Millisecond), endedAt.Format("15:04:05.000"))
			}
			if n := c.Int(`SELECT count(*) FROM task_attempts WHERE worker_session_id = $1 AND outcome = 'failed_over'`, session); n != slots {
				t.Fatalf("%d of the victim's %d attempts failed over", n, slots)
			}
		})
	}
}

// withAppName sets application_name in a URL DSN, so a test can find the
// connections of one process in pg_stat_activity.
func withAppName(dsn, name string) string {
	sep := "?"
	if strings.Contains(dsn, "?") {
		sep = "&"
	}
	return dsn + sep + "application_name=" + name
}
