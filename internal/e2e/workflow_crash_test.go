package e2e

import (
	"context"
	"flag"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/workflow"
)

// crashDAG is a 50-step workflow of shell steps in 8 layers (1, 8 x 6, 1):
// each step of a middle layer waits for two steps of the layer before, the
// last for all of the last middle layer. Every step records its attempt in the
// ledger, works a while, and writes its task id to $BATON_OUTPUT; each step's
// command names its first upstream's output, so outputs flow through the
// failovers too.
func crashDAG(c *Cluster, work string) workflow.Definition {
	const width, middle = 8, 6
	name := func(layer, i int) string { return fmt.Sprintf("l%d-%d", layer, i) }
	mk := func(n string, deps ...string) workflow.Step {
		cmd := c.LedgerCommand(work + ` && echo "tok=$BATON_TASK_ID-$BATON_ATTEMPT" >> "$BATON_OUTPUT"`)
		if len(deps) > 0 {
			cmd = ": up=${steps." + deps[0] + ".outputs.tok} && " + cmd
		}
		return workflow.Step{Name: n, Group: c.Group, Shell: cmd, Env: map[string]string{"BATON_LEDGER_DSN": c.DSN},
			DependsOn: deps, Outputs: []string{"tok"}}
	}
	steps := []workflow.Step{mk("root")}
	prev := []string{"root"}
	for layer := 1; layer <= middle; layer++ {
		var cur []string
		for i := range width {
			deps := []string{prev[i%len(prev)]}
			if len(prev) > 1 {
				deps = append(deps, prev[(i+1)%len(prev)])
			}
			steps = append(steps, mk(name(layer, i), deps...))
			cur = append(cur, name(layer, i))
		}
		prev = cur
	}
	steps = append(steps, mk("sink", prev...))
	return workflow.Definition{Name: "crash-dag", Steps: steps}
}

// TestWorkflowSIGKILLWorkers: two runs of a 50-step DAG while two workers are
// SIGKILLed and one SIGSTOPped (until declared dead, then SIGCONTed), each
// while it runs steps of the runs (and replaced), and one of the two masters
// with the first. No process
// holds a run: failover requeues the killed attempts, and the completions
// advance the runs; the frozen worker's late results are refused. Both runs
// succeed; every step ran to success exactly once per successful attempt (the
// ledger), got exactly one task, holds its succeeded attempt's output and saw
// its upstream's; the repair check finds nothing.
// workflowRuns is how many runs TestWorkflowSIGKILLWorkers starts: 2 in make
// test, 20 in make chaos (scripts/chaos.sh), as issue #16 asks.
var workflowRuns = flag.Int("workflow.runs", 2, "runs of the 50-step DAG in TestWorkflowSIGKILLWorkers")

func TestWorkflowSIGKILLWorkers(t *testing.T) {
	c := setup(t, nil)
	ctx := context.Background()
	d := crashDAG(c, "sleep 0.7")
	if len(d.Steps) != 50 {
		t.Fatalf("%d steps", len(d.Steps))
	}
	var runs []int64
	if err := pgx.BeginFunc(ctx, c.Pool, func(tx pgx.Tx) error {
		q := db.New(tx)
		if _, err := workflow.Apply(ctx, q, d); err != nil {
			return err
		}
		for range *workflowRuns {
			s, err := workflow.Start(ctx, q, workflow.StartParams{Workflow: d.Name})
			if err != nil {
				return err
			}
			runs = append(runs, s.RunID)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	// Fault a worker while it runs a workflow step and start a replacement:
	// SIGKILL (and a master with it), SIGSTOP, SIGKILL.
	faulted := map[string]bool{}
	var killedSessions []int64
	var stopped *Proc
	var stoppedSession int64
	for k, fault := range []string{"kill", "stop", "kill"} {
		var victim *Proc
		var session int64
		WaitFor(t, startTimeout, func() (bool, string) {
			for _, w := range c.Workers {
				if faulted[w.Name] {
					continue
				}
				s := c.Int(`SELECT coalesce(max(id), 0) FROM worker_sessions WHERE name = $1 AND state = 'alive'`, w.Name)
				if s == 0 {
					continue // a replacement not registered yet
				}
				if n := c.Int(`SELECT count(*) FROM tasks WHERE state = 'running' AND worker_session_id = $1
					AND workflow_run_id IS NOT NULL`, s); n > 0 {
					victim, session = w, s
					return true, ""
				}
			}
			return false, "no live worker runs a workflow step"
		})
		faulted[victim.Name] = true
		if fault == "kill" {
			victim.Kill()
			killedSessions = append(killedSessions, session)
		} else {
			// Frozen: declared dead and failed over while its task children
			// finish; their results, reported when it resumes, are refused.
			victim.Stop()
			stopped, stoppedSession = victim, session
		}
		c.StartWorker(fmt.Sprintf("w%d", 4+k), slots)
		t.Logf("%s %s (session %d) while it ran workflow steps", fault, victim.Name, session)
		switch k {
		case 0:
			// A master too: no run lives in it; the other one fails the worker
			// over. A replacement starts.
			c.Masters[0].Kill()
			c.StartMaster("m3")
		case 2:
			// The other master frozen a moment: any master does any run duty.
			c.Masters[1].Stop()
			time.Sleep(2 * time.Second)
			c.Masters[1].Cont()
		}
	}
	WaitFor(t, failoverTimeout, func() (bool, string) {
		var state string
		c.Scan(`SELECT state FROM worker_sessions WHERE id = $1`, []any{stoppedSession}, &state)
		return state == "dead", fmt.Sprintf("stopped session %d is %s", stoppedSession, state)
	})
	stopped.Cont()

	WaitFor(t, terminalTimeout, func() (bool, string) {
		n := c.Int(`SELECT count(*) FROM workflow_runs WHERE id = ANY($1) AND state NOT IN ('running', 'paused')`, runs)
		return n == int64(len(runs)), fmt.Sprintf("%d of %d runs ended; %s", n, len(runs),
			strings.Join(c.Strings(`SELECT run_id || ' ' || state || ': ' || count(*) FROM workflow_run_steps
				WHERE run_id = ANY($1) GROUP BY run_id, state ORDER BY 1`, runs), ", "))
	})
	c.WaitAllTerminal(terminalTimeout)

	expectNone(c, "runs not succeeded", `SELECT id || ' ' || state || ' ' || error FROM workflow_runs WHERE state <> 'succeeded' ORDER BY id`)
	expectNone(c, "steps not succeeded", `SELECT run_id || '/' || name || ' ' || state || ' ' || error FROM workflow_run_steps
		WHERE state <> 'succeeded' ORDER BY run_id, name`)
	expectNone(c, "steps that did not get exactly one task", `SELECT s.run_id || '/' || s.name || ': ' || s.task_count || ' ' ||
		(SELECT count(*) FROM tasks t WHERE t.workflow_run_id = s.run_id AND t.workflow_step = s.name)
		FROM workflow_run_steps s WHERE s.task_count <> 1
		   OR (SELECT count(*) FROM tasks t WHERE t.workflow_run_id = s.run_id AND t.workflow_step = s.name) <> 1 ORDER BY 1`)
	// The step's output is its succeeded attempt's (the task id and attempt it
	// wrote; no zombie's), and each step's command carried its first upstream's.
	expectNone(c, "steps whose output is not their succeeded attempt's", `SELECT s.run_id || '/' || s.name || ' ' || coalesce(s.output::text, 'NULL')
		FROM workflow_run_steps s JOIN task_attempts a ON a.task_id = s.task_id AND a.outcome = 'succeeded'
		WHERE s.output ->> 'tok' IS DISTINCT FROM s.task_id || '-' || a.attempt ORDER BY 1`)
	const upstream = `FROM workflow_run_steps s
		JOIN workflow_runs r ON r.id = s.run_id
		JOIN workflow_version_steps v ON v.version_id = r.version_id AND v.name = s.name
		JOIN tasks t ON t.id = s.task_id
		JOIN workflow_run_steps u ON u.run_id = s.run_id
		 AND u.name = substring(v.payload ->> 'command' from '\$\{steps\.([^.]+)\.outputs\.tok\}')`
	if n := c.Int(`SELECT count(*) ` + upstream); n != int64(*workflowRuns*49) {
		t.Errorf("%d steps name an upstream output; want %d", n, *workflowRuns*49)
	}
	expectNone(c, "steps that did not see their upstream's output", `SELECT s.run_id || '/' || s.name || ': ' || (t.payload ->> 'command') `+
		upstream+` WHERE (t.payload ->> 'command') NOT LIKE ': up=' || (u.output ->> 'tok') || ' &&%' ORDER BY 1`)
	expectNone(c, "attempts of a step that overlap in time (the next one started before the previous one ended)",
		`SELECT a.task_id || ' attempts ' || a.attempt || '/' || b.attempt FROM task_attempts a
		 JOIN task_attempts b ON b.task_id = a.task_id AND b.attempt > a.attempt
		 WHERE b.started_at < a.finished_at ORDER BY 1`)
	if pairs := c.Int(`SELECT count(*) FROM task_attempts a JOIN task_attempts b ON b.task_id = a.task_id AND b.attempt > a.attempt
		WHERE a.finished_at IS NOT NULL AND b.started_at IS NOT NULL`); pairs == 0 {
		t.Error("no pair of attempts of one step to compare: the overlap check proves nothing")
	}
	checkExactlyOnce(c, *workflowRuns*50)
	failedOver := c.Int(`SELECT count(*) FROM task_attempts WHERE worker_session_id = ANY($1) AND outcome = 'failed_over'`, killedSessions)
	if failedOver == 0 {
		t.Errorf("no attempt of the killed sessions %v was failed over, but each ran workflow steps", killedSessions)
	}
	t.Logf("%d step attempts failed over from the killed sessions %v", failedOver, killedSessions)
	refused := c.Int(`SELECT count(*) FROM task_attempts WHERE worker_session_id = $1 AND refused_at IS NOT NULL`, stoppedSession)
	t.Logf("stopped session %d: attempts by outcome %v, %d late results refused", stoppedSession, attemptOutcomes(c, stoppedSession), refused)
	for k, v := range attemptOutcomes(c, stoppedSession) {
		if k != "succeeded" && k != "failed_over" && k != "fenced" {
			t.Errorf("stopped session %d has %d attempts with outcome %s", stoppedSession, v, k)
		}
	}
	if stuck, err := db.New(c.Pool).WorkflowRunsStuck(ctx); err != nil || len(stuck) > 0 {
		t.Errorf("repair check: %v, %v", stuck, err)
	}
	if n := c.Int(`SELECT count(*) FROM workflow_run_findings`); n != 0 {
		t.Errorf("the masters' repair sweep recorded %d findings", n)
	}
}
