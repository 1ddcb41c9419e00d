package e2e

import (
	"fmt"
	"testing"
	"time"
)

// A worker process killed with SIGKILL (default flags: it holds its liveness lock
// and promised it) is declared dead by crash detection — its heartbeat younger than
// the 5 s worker timeout when the master marked it, which the heartbeat path can
// never do — and its tasks run again on the survivor, each exactly once more.
func TestSIGKILLDetectedByLivenessLock(t *testing.T) {
	t.Parallel()
	pool, dsn := srv.NewPool(t)
	c := NewCluster(t, pool, dsn, group)
	c.StartMaster("m1")
	c.StartWorker("survivor", slots)
	victim := c.StartWorker("victim", slots)
	c.WaitReady(readyTimeout)
	session := c.WorkerSession("victim", true)
	WaitFor(t, readyTimeout, func() (bool, string) {
		return c.Int(`SELECT count(*) FROM worker_sessions WHERE id = $1 AND liveness_lock`, session) == 1, "victim promised its liveness lock"
	})
	// Long only on the victim: the survivor's slots stay free for the failed-over tasks.
	c.SubmitLedgerTasks(12, `if [ "$BATON_WORKER" = victim ]; then exec sleep 600; fi`)
	WaitFor(t, startTimeout, func() (bool, string) {
		n := c.Int(`SELECT count(*) FROM tasks WHERE worker_session_id = $1 AND state = 'running'`, session)
		return n == slots && c.Int(`SELECT count(*) FROM tasks WHERE state = 'succeeded'`) == 12-slots, fmt.Sprintf("victim runs %d/%d tasks", n, slots)
	})
	victim.Kill()
	WaitFor(t, failoverTimeout, func() (bool, string) {
		return c.Int(`SELECT count(*) FROM worker_sessions WHERE id = $1 AND state = 'dead'`, session) == 1, "victim declared dead"
	})
	var age time.Duration
	c.Scan(`SELECT ended_at - last_heartbeat_at FROM worker_sessions WHERE id = $1`, []any{session}, &age)
	if age >= 5*time.Second {
		t.Fatalf("declared dead %s after its last heartbeat: the heartbeat timeout, not crash detection", age)
	}
	t.Logf("victim declared dead %s after its last heartbeat", age.Round(time.Millisecond))
	// Every task the victim ran runs again on the survivor (attempt 2), once.
	WaitFor(t, failoverTimeout, func() (bool, string) {
		n := c.Int(`SELECT count(*) FROM ledger l JOIN task_attempts a ON a.task_id = l.task_id AND a.attempt = l.attempt - 1
			WHERE a.worker_session_id = $1 AND a.outcome = 'failed_over'`, session)
		return n == slots, fmt.Sprintf("%d/%d failed-over tasks ran again", n, slots)
	})
	if n := c.Int(`SELECT count(*) FROM (SELECT task_id, attempt FROM ledger GROUP BY 1, 2 HAVING count(*) > 1) d`); n != 0 {
		t.Fatalf("%d attempts ran twice", n)
	}
}
