package e2e

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/baton-scheduler/baton/internal/submit"
)

// TestSIGKILLWorkerKillsItsTasks (issue #6.1): the shell tasks of a SIGKILLed
// worker, with the detached grandchildren that do their work, die with it. Each
// task's work — its ledger row — comes at the end of an 8 s setsid grandchild, so
// a survivor would write it after the failover deadline (kill + 5 s) while the
// task's next attempt runs elsewhere: the overlap this test refuses.
func TestSIGKILLWorkerKillsItsTasks(t *testing.T) {
	c := setup(t, nil)
	const n = 24
	payload, err := json.Marshal(map[string]any{
		"command": "setsid sh -c 'sleep 8 && " + c.LedgerCommand("") + "' & wait $!",
		"env":     map[string]string{"BATON_LEDGER_DSN": c.DSN},
	})
	if err != nil {
		t.Fatal(err)
	}
	specs := make([]submit.Spec, n)
	for i := range specs {
		specs[i] = submit.Spec{Group: c.Group, Kind: submit.KindShell, Payload: payload}
	}
	if _, err := submit.Many(context.Background(), c.Pool, specs); err != nil {
		t.Fatal(err)
	}

	victim := c.Workers[0]
	vs := c.WorkerSession(victim.Name, false)
	waitRunningOn(c, vs)
	victim.Kill()

	c.WaitAllTerminal(terminalTimeout)
	checkExactlyOnce(c, n)
	waitFailoverFinished(c, "worker", vs)
	if got := c.Int(`SELECT count(*) FROM task_attempts WHERE worker_session_id = $1 AND outcome = 'failed_over'`, vs); got == 0 {
		t.Fatalf("no attempt of the killed session %d was failed over: the test killed nothing", vs)
	}
	expectNone(c, "work done by the killed worker's tasks after its failover deadline",
		`SELECT l.task_id || ' attempt ' || l.attempt || ' at deadline + ' || (l.at - f.deadline)
		 FROM ledger l JOIN failover_events f ON f.kind = 'worker' AND f.session_id = l.session_id
		 WHERE l.session_id = $1 AND l.at > f.deadline ORDER BY l.task_id`, vs)
}
