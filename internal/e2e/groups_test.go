package e2e

import (
	"fmt"
	"testing"
	"time"
)

// One baton-worker process serving two groups (--groups ga=2,gb=2) is killed
// with SIGKILL while running tasks of both. Its one liveness connection held both
// sessions' locks, so both are declared dead by crash detection (heartbeat younger
// than the 5 s worker timeout); each group's tasks run again only on the survivor
// of that group, each attempt once.
func TestSIGKILLMultiGroupWorker(t *testing.T) {
	t.Parallel()
	pool, dsn := srv.NewPool(t)
	c := NewCluster(t, pool, dsn, "ga")
	c.StartMaster("m1")
	Start(t, "sa", c.Bins.Worker, WorkerArgs(dsn, "sa", "ga", 4))
	Start(t, "sb", c.Bins.Worker, WorkerArgs(dsn, "sb", "gb", 4))
	victim := Start(t, "multi", c.Bins.Worker, []string{"--database-url", dsn, "--log-format", "console", "--name", "multi", "--groups", "ga=2,gb=2"})
	WaitFor(t, readyTimeout, func() (bool, string) {
		n := c.Int(`SELECT count(*) FROM worker_sessions WHERE state = 'alive' AND liveness_lock`)
		return n == 4, fmt.Sprintf("%d/4 sessions alive with their liveness lock promised", n)
	})
	sessions := map[string]int64{}
	for _, g := range []string{"ga", "gb"} {
		sessions[g] = c.Int(`SELECT id FROM worker_sessions WHERE name = 'multi' AND group_name = $1`, g)
		c.Group = g
		c.SubmitLedgerTasks(6, `if [ "$BATON_WORKER" = multi ]; then exec sleep 600; fi`)
	}
	WaitFor(t, startTimeout, func() (bool, string) {
		a := c.Int(`SELECT count(*) FROM tasks WHERE worker_session_id = $1 AND state = 'running'`, sessions["ga"])
		b := c.Int(`SELECT count(*) FROM tasks WHERE worker_session_id = $1 AND state = 'running'`, sessions["gb"])
		done := c.Int(`SELECT count(*) FROM tasks WHERE state = 'succeeded'`)
		return a == 2 && b == 2 && done == 8, fmt.Sprintf("multi runs ga %d/2, gb %d/2; succeeded %d/8", a, b, done)
	})
	victim.Kill()
	for g, id := range sessions {
		WaitFor(t, failoverTimeout, func() (bool, string) {
			return c.Int(`SELECT count(*) FROM worker_sessions WHERE id = $1 AND state = 'dead'`, id) == 1, "multi's " + g + " session declared dead"
		})
		var age time.Duration
		c.Scan(`SELECT ended_at - last_heartbeat_at FROM worker_sessions WHERE id = $1`, []any{id}, &age)
		if age >= 5*time.Second {
			t.Fatalf("%s session declared dead %s after its last heartbeat: the heartbeat timeout, not crash detection", g, age)
		}
		t.Logf("%s session declared dead %s after its last heartbeat", g, age.Round(time.Millisecond))
	}
	c.WaitAllTerminal(terminalTimeout)
	if n := c.Int(`SELECT count(*) FROM tasks WHERE state <> 'succeeded'`); n != 0 {
		t.Fatalf("%d tasks did not succeed", n)
	}
	for g, id := range sessions {
		survivor := map[string]string{"ga": "sa", "gb": "sb"}[g]
		n := c.Int(`SELECT count(*) FROM task_attempts a JOIN task_attempts b ON b.task_id = a.task_id AND b.attempt = a.attempt + 1
			JOIN worker_sessions s ON s.id = b.worker_session_id
			WHERE a.worker_session_id = $1 AND a.outcome = 'failed_over' AND s.name = $2 AND b.outcome = 'succeeded'`, id, survivor)
		if n != 2 {
			t.Fatalf("%d of the %s session's 2 tasks ran again on %s", n, g, survivor)
		}
	}
	expectNone(c, "attempts on a session of another group",
		`SELECT a.task_id || ' attempt ' || a.attempt FROM task_attempts a JOIN tasks t ON t.id = a.task_id
		 JOIN worker_sessions s ON s.id = a.worker_session_id WHERE s.group_name <> t.group_name`)
	if n := c.Int(`SELECT count(*) FROM (SELECT task_id, attempt FROM ledger GROUP BY 1, 2 HAVING count(*) > 1) d`); n != 0 {
		t.Fatalf("%d attempts ran twice", n)
	}
	if n := c.Int(`SELECT count(*) FROM ledger`); n != 16 {
		t.Fatalf("ledger rows = %d, want 16 (12 first attempts, 4 reruns)", n)
	}
}
