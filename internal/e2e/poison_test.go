package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/baton-scheduler/baton/internal/chaos"
	"github.com/baton-scheduler/baton/internal/submit"
)

// TestPoisonTaskFailsAfterMaxFailovers: a task that kills every worker running it
// — a shell task that SIGKILLs its worker process (BATON_WORKER_PID), and a Go
// handler that crashes its embedded worker with an unrecovered panic — is failed
// over --max-failovers times, then fails: the masters run with --max-failovers 2,
// so each must kill 3 workers (restarted by the rig's supervisor) and end failed
// with running_failovers 2 and a last error saying so (chaos.CheckPoison).
func TestPoisonTaskFailsAfterMaxFailovers(t *testing.T) {
	const maxFailovers = 2
	r := newRigOnServer(t, rigConfig{masters: 2, groups: []string{"poison"}, perGroup: 3, slots: 2,
		masterArgs: []string{"--max-failovers", "2"}})
	r.mustWait(readyTimeout, "cluster ready", func() (bool, string, error) { return r.whole(time.Time{}) })

	var sub submitted
	if err := r.submitMany(&sub, poisonTask, []submit.Spec{r.spec(poisonTask, "poison", 0)}); err != nil {
		t.Fatal(err)
	}
	if err := r.submitMany(&sub, crashTask, []submit.Spec{r.spec(crashTask, "poison", 0)}); err != nil {
		t.Fatal(err)
	}
	if ok, desc := r.waitTerminal(&sub, terminalTimeout); !ok {
		t.Fatalf("poison tasks not terminal within %s: %s\n%s", terminalTimeout, desc, r.describe())
	}
	f := r.check(&sub)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := f.CheckPoison(ctx, r.pool, sub.all(), maxFailovers); err != nil {
		t.Fatal(err)
	}
	if s := f.String(); s != "" {
		t.Errorf("poison tasks:\n%s", s)
	}
	// Each killed worker was a process that died, not a session that moved on.
	if n := r.restarts(); n < maxFailovers+1 {
		t.Errorf("%d worker processes restarted, want at least %d (each poison attempt kills its worker)", n, maxFailovers+1)
	}
	for _, id := range sub.all() {
		var failovers, running int64
		var lastErr string
		if err := chaos.Retry(ctx, func(ctx context.Context) error {
			return r.pool.QueryRow(ctx, `SELECT failover_count, running_failovers, last_error FROM tasks WHERE id = $1`, id).
				Scan(&failovers, &running, &lastErr)
		}); err != nil {
			t.Fatal(err)
		}
		t.Logf("poison task %d: failover_count %d, running_failovers %d, last error %q", id, failovers, running, lastErr)
	}
	r.shutdown()
}
