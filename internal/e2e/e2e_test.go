package e2e

import (
	"bytes"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/baton-scheduler/baton/batontest"
)

var srv *batontest.Server

func TestMain(m *testing.M) {
	os.Exit(func() int {
		defer RemoveBinaries()
		return batontest.MainNoLeaks(m, func(s *batontest.Server) { srv = s })
	}())
}

// The scenarios run with the default timing of the binaries: heartbeat 1 s, worker
// timeout 5 s, self-fence 4 s, master timeout 10 s.
const (
	group = "e2e"
	slots = 4

	// Upper bounds for a hung system, not performance assertions.
	readyTimeout    = 60 * time.Second
	startTimeout    = 60 * time.Second
	terminalTimeout = 150 * time.Second
	failoverTimeout = 60 * time.Second
)

// setup starts 2 masters (m1, m2) and 3 workers (w1, w2, w3; extra flags per worker
// from workerExtra) on a fresh database and waits until all have alive sessions.
func setup(t *testing.T, workerExtra map[string][]string) *Cluster {
	t.Helper()
	pool, dsn := srv.NewPool(t)
	c := NewCluster(t, pool, dsn, group)
	c.StartMaster("m1")
	c.StartMaster("m2")
	for _, name := range []string{"w1", "w2", "w3"} {
		c.StartWorker(name, slots, workerExtra[name]...)
	}
	c.WaitReady(readyTimeout)
	return c
}

// waitRunningOn waits until session has at least one running task.
func waitRunningOn(c *Cluster, session int64) {
	c.T.Helper()
	WaitFor(c.T, startTimeout, func() (bool, string) {
		n := c.Int(`SELECT count(*) FROM tasks WHERE state = 'running' AND worker_session_id = $1`, session)
		return n > 0, fmt.Sprintf("session %d runs %d tasks", session, n)
	})
}

// expectNone fails with the rows sql returns (rendered as text), if any.
func expectNone(c *Cluster, what, sql string, args ...any) {
	c.T.Helper()
	if rows := c.Strings(sql+" LIMIT 20", args...); len(rows) > 0 {
		c.T.Errorf("%s (first %d):\n  %s", what, len(rows), strings.Join(rows, "\n  "))
	}
}

// checkExactlyOnce asserts the end state every scenario must reach: n tasks, all
// succeeded; exactly one succeeded attempt per task, and it is the task's current
// attempt; no attempt left open; every task ran at least once according to the
// ledger, the succeeded attempt left its ledger row, and no attempt ran twice.
func checkExactlyOnce(c *Cluster, n int) {
	c.T.Helper()
	if got := c.Int(`SELECT count(*) FROM tasks`); got != int64(n) {
		c.T.Errorf("%d tasks in the database, want %d", got, n)
	}
	expectNone(c, "tasks not succeeded",
		`SELECT id || ' ' || state || ' ' || last_error FROM tasks WHERE state <> 'succeeded' ORDER BY id`)
	expectNone(c, "tasks without exactly one succeeded attempt",
		`SELECT t.id || ': ' || (SELECT count(*) FROM task_attempts a WHERE a.task_id = t.id AND a.outcome = 'succeeded')
		 FROM tasks t
		 WHERE (SELECT count(*) FROM task_attempts a WHERE a.task_id = t.id AND a.outcome = 'succeeded') <> 1
		 ORDER BY t.id`)
	expectNone(c, "succeeded attempts that are not the task's current attempt",
		`SELECT a.task_id || ' attempt ' || a.attempt || ' (task at ' || t.attempt || ')'
		 FROM task_attempts a JOIN tasks t ON t.id = a.task_id
		 WHERE a.outcome = 'succeeded' AND a.attempt <> t.attempt ORDER BY a.task_id`)
	expectNone(c, "attempts still open although every task is terminal",
		`SELECT task_id || ' attempt ' || attempt || ' session ' || worker_session_id FROM task_attempts
		 WHERE outcome IS NULL ORDER BY task_id`)
	expectNone(c, "tasks with no ledger row (never ran)",
		`SELECT t.id::text FROM tasks t WHERE NOT EXISTS (SELECT 1 FROM ledger l WHERE l.task_id = t.id) ORDER BY t.id`)
	expectNone(c, "succeeded attempts without their ledger row",
		`SELECT a.task_id || ' attempt ' || a.attempt || ' session ' || a.worker_session_id FROM task_attempts a
		 WHERE a.outcome = 'succeeded' AND NOT EXISTS (
		   SELECT 1 FROM ledger l WHERE l.task_id = a.task_id AND l.attempt = a.attempt AND l.session_id = a.worker_session_id)
		 ORDER BY a.task_id`)
	expectNone(c, "attempts that ran more than once (duplicate ledger rows)",
		`SELECT task_id || ' attempt ' || attempt || ': ' || count(*) FROM ledger
		 GROUP BY task_id, attempt HAVING count(*) > 1 ORDER BY task_id`)
	expectNone(c, "ledger rows of attempts that do not exist or ran on another session",
		`SELECT l.task_id || ' attempt ' || l.attempt || ' session ' || l.session_id FROM ledger l
		 WHERE NOT EXISTS (SELECT 1 FROM task_attempts a
		   WHERE a.task_id = l.task_id AND a.attempt = l.attempt AND a.worker_session_id = l.session_id)
		 ORDER BY l.task_id`)
}

// waitFailoverFinished waits for the worker failover event of session to be finished
// and returns its id and tasks_reassigned + tasks_queued.
func waitFailoverFinished(c *Cluster, kind string, session int64) (id, moved int64) {
	c.T.Helper()
	WaitFor(c.T, failoverTimeout, func() (bool, string) {
		n := c.Int(`SELECT count(*) FROM failover_events WHERE kind = $1 AND session_id = $2 AND finished_at IS NOT NULL`, kind, session)
		return n == 1, fmt.Sprintf("%d finished %s failover events for session %d", n, kind, session)
	})
	c.Scan(`SELECT id, tasks_reassigned + tasks_queued FROM failover_events WHERE kind = $1 AND session_id = $2`,
		[]any{kind, session}, &id, &moved)
	return id, moved
}

func attemptOutcomes(c *Cluster, session int64) map[string]int64 {
	c.T.Helper()
	out := map[string]int64{}
	for _, row := range c.Strings(`SELECT coalesce(outcome, 'open') || ' ' || count(*) FROM task_attempts
		WHERE worker_session_id = $1 GROUP BY outcome`, session) {
		var k string
		var v int64
		if _, err := fmt.Sscan(row, &k, &v); err != nil {
			c.T.Fatalf("parse %q: %v", row, err)
		}
		out[k] = v
	}
	return out
}

// TestSIGKILLWorker: a worker dies without a word while running tasks. A master
// declares it dead after the worker timeout and moves its tasks; every task still
// succeeds exactly once.
func TestSIGKILLWorker(t *testing.T) {
	c := setup(t, nil)
	const n = 300
	c.SubmitLedgerTasks(n, "sleep 0.3")

	victim := c.Workers[0]
	vs := c.WorkerSession(victim.Name, false)
	waitRunningOn(c, vs)
	victim.Kill()

	c.WaitAllTerminal(terminalTimeout)
	checkExactlyOnce(c, n)

	_, moved := waitFailoverFinished(c, "worker", vs)
	if got := c.Int(`SELECT count(*) FROM failover_events WHERE kind = 'worker' AND session_id = $1`, vs); got != 1 {
		t.Errorf("%d failover events for the killed session %d, want 1", got, vs)
	}
	if st := c.Strings(`SELECT state FROM worker_sessions WHERE id = $1`, vs); len(st) != 1 || st[0] != "dead" {
		t.Errorf("killed session %d is in state %v, want dead", vs, st)
	}
	outcomes := attemptOutcomes(c, vs)
	t.Logf("attempts of the killed session %d by outcome: %v; failover moved %d", vs, outcomes, moved)
	if outcomes["failed_over"] == 0 {
		t.Errorf("no attempt of the killed session %d was failed over, but it had running tasks", vs)
	}
	if moved != outcomes["failed_over"] {
		t.Errorf("failover event of session %d moved %d tasks (reassigned+queued), but %d of its attempts are failed_over",
			vs, moved, outcomes["failed_over"])
	}
	for k, v := range outcomes {
		if k != "succeeded" && k != "failed_over" {
			t.Errorf("killed session %d has %d attempts with outcome %s; a dead process reports nothing", vs, v, k)
		}
	}
	expectNone(c, "failover events for sessions that were not killed",
		`SELECT kind || ' session ' || session_id FROM failover_events WHERE NOT (kind = 'worker' AND session_id = $1) ORDER BY id`, vs)
}

// TestSIGSTOPWorker: a worker freezes (GC pause, VM stall) while its task children
// keep running. It is declared dead and its tasks move; when it wakes up, the
// results its children produced meanwhile are refused (fenced), and the worker
// registers a new session.
func TestSIGSTOPWorker(t *testing.T) {
	c := setup(t, nil)
	// Long tasks: the stopped worker's children finish while it is frozen, so it has
	// late results to report when it resumes. 120 x 2 s keeps the scenario short.
	const n = 120
	c.SubmitLedgerTasks(n, "sleep 2")

	victim := c.Workers[0]
	vs := c.WorkerSession(victim.Name, false)
	waitRunningOn(c, vs)
	victim.Stop()
	WaitFor(t, failoverTimeout, func() (bool, string) {
		var state string
		c.Scan(`SELECT state FROM worker_sessions WHERE id = $1`, []any{vs}, &state)
		return state == "dead", fmt.Sprintf("stopped session %d is %s", vs, state)
	})
	if got := c.Int(`SELECT count(*) FROM failover_events WHERE kind = 'worker' AND session_id = $1 AND detected_by IS NOT NULL`, vs); got != 1 {
		t.Errorf("session %d is dead but has %d failover events recorded by a master, want 1", vs, got)
	}
	victim.Cont()

	// The worker learns it was declared dead and registers a new session.
	WaitFor(t, failoverTimeout, func() (bool, string) {
		n := c.Int(`SELECT count(*) FROM worker_sessions WHERE name = $1 AND id <> $2 AND state = 'alive'`, victim.Name, vs)
		return n == 1, fmt.Sprintf("%d new alive sessions of %s", n, victim.Name)
	})
	c.WaitAllTerminal(terminalTimeout)
	checkExactlyOnce(c, n)

	_, moved := waitFailoverFinished(c, "worker", vs)
	outcomes := attemptOutcomes(c, vs)
	t.Logf("attempts of the stopped session %d by outcome: %v; failover moved %d", vs, outcomes, moved)
	for k, v := range outcomes {
		if k != "succeeded" && k != "failed_over" && k != "fenced" {
			t.Errorf("stopped session %d has %d attempts with outcome %s", vs, v, k)
		}
	}
	// Every attempt the failover took away is failed_over, or fenced if the worker
	// later tried to report it.
	if taken := outcomes["failed_over"] + outcomes["fenced"]; moved != taken {
		t.Errorf("failover event of session %d moved %d tasks, but %d of its attempts are failed_over or fenced", vs, moved, taken)
	}
	if refused := c.Int(`SELECT count(*) FROM task_attempts WHERE worker_session_id = $1 AND refused_at IS NOT NULL`, vs); refused == 0 {
		// Under load the woken worker may see its missed heartbeats before it
		// reaps its children: it fences itself, kills its attempts and leaves
		// them to failover, reporting nothing — the other way a zombie writes
		// nothing (the checks around this one hold either way).
		raw, err := os.ReadFile(victim.LogPath)
		if err != nil || !bytes.Contains(raw, []byte("self-fencing")) || !bytes.Contains(raw, []byte("left to failover")) {
			t.Errorf("no attempt of the stopped session %d recorded a refused write, and the worker did not fence itself and "+
				"leave its attempts to failover: its children finished while it was stopped, so its late results should have been refused", vs)
		} else {
			t.Logf("the woken worker fenced itself before it reaped its children: it reported nothing, so nothing was refused")
		}
	}
	expectNone(c, "tasks taken from the stopped session whose success is on that session",
		`SELECT a.task_id || ' attempt ' || a.attempt FROM task_attempts a
		 JOIN task_attempts s ON s.task_id = a.task_id AND s.outcome = 'succeeded'
		 WHERE a.worker_session_id = $1 AND a.outcome IN ('failed_over', 'fenced') AND s.worker_session_id = $1
		 ORDER BY a.task_id`, vs)
	expectNone(c, "fenced attempts whose result was not refused",
		`SELECT task_id || ' attempt ' || attempt || ': ' || error FROM task_attempts
		 WHERE worker_session_id = $1 AND outcome = 'fenced' AND (error NOT LIKE 'result refused%' OR refused_at IS NULL)`, vs)
	expectNone(c, "refused writes that rewrote a failed_over attempt's history",
		`SELECT task_id || ' attempt ' || attempt || ': ' || error FROM task_attempts
		 WHERE worker_session_id = $1 AND outcome = 'failed_over' AND error NOT LIKE 'worker session % is dead'`, vs)
	expectNone(c, "worker failover events other than the stopped session's",
		`SELECT kind || ' session ' || session_id FROM failover_events WHERE NOT (kind = 'worker' AND session_id = $1) ORDER BY id`, vs)
	if victim.Exited() {
		t.Errorf("the stopped worker exited (%s); it should have re-registered", victim.describeExit())
	}
}

// TestSIGKILLMaster: one of two masters dies. Tasks need no master in particular,
// so the run completes on the other one, which later records the dead master.
func TestSIGKILLMaster(t *testing.T) {
	c := setup(t, nil)
	const n = 300
	c.SubmitLedgerTasks(n, "sleep 0.3")

	victim := c.Masters[0]
	ms := c.MasterSession(victim.Name)
	survivor := c.MasterSession(c.Masters[1].Name)
	WaitFor(t, startTimeout, func() (bool, string) {
		done := c.Int(`SELECT count(*) FROM tasks WHERE state = 'succeeded'`)
		return done >= 2*3*slots, fmt.Sprintf("%d tasks succeeded", done)
	})
	victim.Kill()

	c.WaitAllTerminal(terminalTimeout)
	checkExactlyOnce(c, n)

	WaitFor(t, failoverTimeout, func() (bool, string) {
		var state string
		c.Scan(`SELECT state FROM master_sessions WHERE id = $1`, []any{ms}, &state)
		ev := c.Int(`SELECT count(*) FROM failover_events WHERE kind = 'master' AND session_id = $1`, ms)
		return state == "dead" && ev == 1, fmt.Sprintf("killed master session %d is %s with %d failover events", ms, state, ev)
	})
	expectNone(c, "master failover event not finished or not recorded by the surviving master",
		`SELECT id || ' detected_by=' || coalesce(detected_by::text, 'NULL') || ' finished=' || coalesce(finished_at::text, 'NULL')
		 FROM failover_events WHERE kind = 'master' AND session_id = $1
		   AND (finished_at IS NULL OR detected_by IS DISTINCT FROM $2)`, ms, survivor)
	expectNone(c, "failover events other than the killed master's",
		`SELECT kind || ' session ' || session_id FROM failover_events WHERE NOT (kind = 'master' AND session_id = $1) ORDER BY id`, ms)
	expectNone(c, "worker sessions not alive although no worker was touched",
		`SELECT id || ' ' || name || ' ' || state FROM worker_sessions WHERE state <> 'alive' ORDER BY id`)
}

// TestSIGTERMWorker: a worker is told to stop. It drains (no new claims), lets
// running tasks finish within the grace, kills the rest and marks its session
// stopped, so masters hand its tasks back at once — nobody waits for a timeout.
func TestSIGTERMWorker(t *testing.T) {
	c := setup(t, map[string][]string{"w1": {"--shutdown-grace", "1s"}})
	// Tasks longer than the grace, so the drain has to kill and hand back.
	const n = 96
	c.SubmitLedgerTasks(n, "sleep 3")

	victim := c.Workers[0]
	vs := c.WorkerSession(victim.Name, false)
	waitRunningOn(c, vs)
	victim.Term()
	if code := victim.Wait(60 * time.Second); code != 0 {
		t.Errorf("worker exited with code %d after SIGTERM, want 0", code)
	}
	var state string
	c.Scan(`SELECT state FROM worker_sessions WHERE id = $1`, []any{vs}, &state)
	if state != "stopped" {
		t.Errorf("session %d of the terminated worker is %s, want stopped", vs, state)
	}

	c.WaitAllTerminal(terminalTimeout)
	checkExactlyOnce(c, n)

	outcomes := attemptOutcomes(c, vs)
	var moved int64
	if c.Int(`SELECT count(*) FROM failover_events WHERE kind = 'worker' AND session_id = $1`, vs) > 0 {
		_, moved = waitFailoverFinished(c, "worker", vs)
	}
	t.Logf("attempts of the terminated session %d by outcome: %v; failover moved %d", vs, outcomes, moved)
	if moved != outcomes["failed_over"] {
		t.Errorf("failover of session %d moved %d tasks, but %d of its attempts are failed_over", vs, moved, outcomes["failed_over"])
	}
	if moved == 0 {
		// Its tasks run 3 s and the grace is 1 s: the ones running at SIGTERM cannot finish.
		t.Errorf("no task of the terminated session %d was handed back", vs)
	}
	for k, v := range outcomes {
		if k != "succeeded" && k != "failed_over" {
			t.Errorf("terminated session %d has %d attempts with outcome %s", vs, v, k)
		}
	}
	expectNone(c, "failed-over attempts of the terminated session not attributed to its stop",
		`SELECT task_id || ' attempt ' || attempt || ': ' || error FROM task_attempts
		 WHERE worker_session_id = $1 AND outcome = 'failed_over' AND error NOT LIKE '%is stopped'`, vs)
	expectNone(c, "worker sessions declared dead (nothing should have waited for the timeout)",
		`SELECT id || ' ' || name FROM worker_sessions WHERE state = 'dead' ORDER BY id`)
	expectNone(c, "failover events other than the terminated session's",
		`SELECT kind || ' session ' || session_id FROM failover_events WHERE NOT (kind = 'worker' AND session_id = $1) ORDER BY id`, vs)
}

// TestSIGTERMWorkerWithinGrace: tasks shorter than the shutdown grace finish during
// the drain and must not run again: every attempt of the terminated session
// succeeds, none is failed over or fenced.
// (The worker waits for the completer before marking its session stopped.)
func TestSIGTERMWorkerWithinGrace(t *testing.T) {
	c := setup(t, nil) // default grace 10 s
	const n = 60
	c.SubmitLedgerTasks(n, "sleep 1")

	victim := c.Workers[0]
	vs := c.WorkerSession(victim.Name, false)
	waitRunningOn(c, vs)
	victim.Term()
	if code := victim.Wait(60 * time.Second); code != 0 {
		t.Errorf("worker exited with code %d after SIGTERM, want 0", code)
	}
	c.WaitAllTerminal(terminalTimeout)
	checkExactlyOnce(c, n)
	outcomes := attemptOutcomes(c, vs)
	t.Logf("attempts of the terminated session %d by outcome: %v", vs, outcomes)
	for k, v := range outcomes {
		if k != "succeeded" {
			t.Errorf("terminated session %d has %d attempts with outcome %s; they finished within the grace", vs, v, k)
		}
	}
	expectNone(c, "worker sessions declared dead",
		`SELECT id || ' ' || name FROM worker_sessions WHERE state = 'dead' ORDER BY id`)
}
