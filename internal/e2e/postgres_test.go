package e2e

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
)

// Postgres goes away and comes back (issue #6.10). Each test runs its own Postgres
// from the host's server binaries (skipped with the reason where there are none,
// failed under CI=true), two masters and three workers as real processes, and a
// load of shell tasks (task shell -> child shell -> setsid grandchild writing
// ledger ticks) and Go-handler tasks. In the middle of the load the database goes
// away; afterwards every process must still be the same process (it reconnected,
// nothing crashed), be alive and heartbeating, every task terminal and succeeded,
// and the ledger checker must find nothing: no task lost, none with two succeeded
// attempts, no two attempts whose side effects overlap, every failover finished,
// nothing dispatched to a dead session.

const pgGroup = "pg"

func pgRigConfig(replica bool) rigConfig {
	return rigConfig{masters: 2, groups: []string{pgGroup}, perGroup: 3, slots: 4, replica: replica}
}

// pgOutageScenario submits load, waits until it runs, calls outage, submits more
// (new work must flow after the outage), and checks everything.
func pgOutageScenario(t *testing.T, r *rig, outage func()) {
	t.Helper()
	r.mustWait(readyTimeout, "cluster ready", func() (bool, string, error) { return r.whole(time.Time{}) })
	rng := rand.New(rand.NewPCG(1, 2))
	var sub submitted
	shell, gotasks := r.randomLoad(rng, 160, 12, []string{pgGroup})
	if err := r.submitMany(&sub, shellTask, shell); err != nil {
		t.Fatal(err)
	}
	if err := r.submitMany(&sub, goTask, gotasks); err != nil {
		t.Fatal(err)
	}
	r.mustWait(startTimeout, "load running", func() (bool, string, error) {
		running, err := r.tryInt(`SELECT count(*) FROM tasks WHERE state = 'running'`)
		if err != nil {
			return false, "", err
		}
		done, err := r.tryInt(`SELECT count(*) FROM tasks WHERE state = 'succeeded'`)
		return running >= 6 && done >= 10, fmt.Sprintf("%d running, %d succeeded", running, done), err
	})
	outage()
	back, err := r.pgNow()
	if err != nil {
		t.Fatalf("e2e: Postgres after the outage: %v", err)
	}
	shell, gotasks = r.randomLoad(rng, 60, 12, []string{pgGroup})
	if err := r.submitMany(&sub, shellTask, shell); err != nil {
		t.Fatal(err)
	}
	if err := r.submitMany(&sub, goTask, gotasks); err != nil {
		t.Fatal(err)
	}
	if ok, desc := r.waitTerminal(&sub, terminalTimeout); !ok {
		t.Errorf("e2e: not every task terminal within %s: %s", terminalTimeout, desc)
	}
	if ok, desc := r.waitFor(failoverTimeout, func() (bool, string, error) { return r.whole(back) }); !ok {
		t.Errorf("e2e: the cluster is not whole again after the outage: %s", desc)
	}
	if ok, desc := r.waitLedgerQuiet(5*time.Second, time.Minute); !ok {
		t.Errorf("e2e: ledger still written to: %s", desc)
	}
	if n := r.restarts(); n > 0 {
		t.Errorf("e2e: %d process(es) exited and had to be started again; every process should reconnect", n)
	}
	f := r.check(&sub)
	if s := f.String(); s != "" {
		t.Errorf("e2e: ledger check:\n%s", s)
	}
	if f.Succeeded != f.Submitted {
		t.Errorf("e2e: %d of %d tasks succeeded (%d failed); a Postgres outage should fail none",
			f.Succeeded, f.Submitted, f.Failed)
	}
	fo, _ := r.tryInt(`SELECT count(*) FROM failover_events`)
	t.Logf("tasks %d, succeeded %d, fenced %d, failover events %d", f.Tasks, f.Succeeded, f.Fenced, fo)
	if t.Failed() {
		t.Logf("database state:\n%s", r.describe())
	}
	r.shutdown()
}

func testPostgresRestart(t *testing.T, mode string) {
	bin := RequireHostPG(t)
	r := newRigOnHost(t, bin, pgRigConfig(false))
	pgOutageScenario(t, r, func() {
		t.Logf("restarting Postgres (-m %s)", mode)
		if err := r.nodes[0].Restart(mode); err != nil {
			t.Fatalf("e2e: %v", err)
		}
	})
}

// TestPostgresRestartFast: pg_ctl restart -m fast (clients disconnected, clean
// shutdown) while tasks run.
func TestPostgresRestartFast(t *testing.T) { testPostgresRestart(t, "fast") }

// TestPostgresRestartImmediate: pg_ctl restart -m immediate (a crash; recovery at
// start) while tasks run.
func TestPostgresRestartImmediate(t *testing.T) { testPostgresRestart(t, "immediate") }

// TestPostgresSwitchover: a primary and a streaming replica; every client has the
// multi-host DSN with target_session_attrs=read-write. The primary is stopped
// (-m fast: its WAL senders ship everything first, so nothing committed is lost)
// and the replica promoted, while tasks run.
func TestPostgresSwitchover(t *testing.T) {
	bin := RequireHostPG(t)
	r := newRigOnHost(t, bin, pgRigConfig(true))
	pgOutageScenario(t, r, func() {
		if err := r.switchover(); err != nil {
			t.Fatalf("e2e: %v", err)
		}
	})
}

// switchover stops the primary, promotes the replica and makes the old primary a
// replica of the new one (so a campaign can switch over again).
func (r *rig) switchover() error {
	if len(r.nodes) < 2 {
		return fmt.Errorf("switchover needs a replica")
	}
	old, next := r.nodes[r.primary], r.nodes[1-r.primary]
	if err := next.WaitReplicating(old, time.Minute); err != nil {
		return err
	}
	r.t.Logf("switchover: stopping primary %s (port %d), promoting %s (port %d)", old.Name, old.Port, next.Name, next.Port)
	if err := old.Stop("fast"); err != nil {
		return err
	}
	if err := next.Promote(); err != nil {
		return err
	}
	r.primary = 1 - r.primary
	if err := old.CloneFrom(next); err != nil {
		return fmt.Errorf("rebuild the old primary as a replica: %w", err)
	}
	return nil
}
