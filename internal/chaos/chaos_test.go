package chaos

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/baton-scheduler/baton/batontest"
)

var srv *batontest.Server

func TestMain(m *testing.M) {
	os.Exit(batontest.Main(m, func(s *batontest.Server) { srv = s }))
}

// history is a clean run on synthetic rows (t0 = 2026-01-01 00:00:00 UTC):
// session 1 died at t0+1.5s and was failed over; task 1's attempt 1 ran on it from
// t0+0.1s to t0+0.5s, attempt 2 on session 2 from t0+2s to t0+3s and succeeded;
// task 2 ran once on session 2 and succeeded. As baton writes them: a task's final
// attempt (ended by its own worker's result) is held by the task row, the attempt
// a failover closed is a row of task_attempt_log; the view task_attempts, which
// the checker reads, shows all three.
const history = `
INSERT INTO worker_groups (name) VALUES ('g');
INSERT INTO worker_sessions (name, group_name, slots, state, started_at, last_heartbeat_at, ended_at)
VALUES ('w1', 'g', 2, 'dead', '2026-01-01 00:00:00+00', '2026-01-01 00:00:00+00', '2026-01-01 00:00:01.5+00');
INSERT INTO worker_sessions (name, group_name, slots, state) VALUES ('w2', 'g', 2, 'alive');
INSERT INTO tasks (group_name, kind, state, attempt, attempt_session_id, attempt_reason, dispatched_at, started_at, finished_at) VALUES
  ('g', 'shell', 'succeeded', 2, 2, 'failover', '2026-01-01 00:00:01.6+00', '2026-01-01 00:00:02+00',   '2026-01-01 00:00:03+00'),
  ('g', 'shell', 'succeeded', 1, 2, 'submit',   '2026-01-01 00:00:00+00',   '2026-01-01 00:00:00.1+00', '2026-01-01 00:00:03+00');
INSERT INTO task_attempt_log (task_id, attempt, worker_session_id, reason, dispatched_at, started_at, finished_at, outcome) VALUES
  (1, 1, 1, 'submit',   '2026-01-01 00:00:00+00',   '2026-01-01 00:00:00.1+00', '2026-01-01 00:00:01.5+00', 'failed_over');
INSERT INTO failover_events (kind, session_id, group_name, deadline, started_at, finished_at, tasks_reassigned)
VALUES ('worker', 1, 'g', '2026-01-01 00:00:01.5+00', '2026-01-01 00:00:01.5+00', '2026-01-01 00:00:01.6+00', 1);
INSERT INTO ledger (task_id, attempt, session_id, kind, at) VALUES
  (1, 1, 1, 'start', '2026-01-01 00:00:00.1+00'),
  (1, 1, 1, 'tick',  '2026-01-01 00:00:00.5+00'),
  (1, 2, 2, 'start', '2026-01-01 00:00:02+00'),
  (1, 2, 2, 'tick',  '2026-01-01 00:00:02.5+00'),
  (1, 2, 2, 'end',   '2026-01-01 00:00:03+00'),
  (2, 1, 2, 'start', '2026-01-01 00:00:00.1+00'),
  (2, 1, 2, 'end',   '2026-01-01 00:00:03+00');
`

func newHistory(t *testing.T) *pgxpool.Pool {
	t.Helper()
	pool, _ := srv.NewPool(t)
	ctx := context.Background()
	if _, err := pool.Exec(ctx, LedgerSchema); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, history); err != nil {
		t.Fatal(err)
	}
	return pool
}

func TestCheckCleanHistory(t *testing.T) {
	pool := newHistory(t)
	f, err := Check(context.Background(), pool, []int64{1, 2})
	if err != nil {
		t.Fatal(err)
	}
	if s := f.String(); s != "" {
		t.Fatalf("clean history reported problems:\n%s", s)
	}
	if f.Tasks != 2 || f.Submitted != 2 || f.Succeeded != 2 || f.Failed != 0 {
		t.Errorf("counts: %+v", f)
	}
}

// TestCheckFindsInjectedFaults: each mutation of the clean history is one violated
// invariant, and the checker names it (with the offending rows).
func TestCheckFindsInjectedFaults(t *testing.T) {
	for _, tc := range []struct {
		name      string
		sql       string
		submitted []int64
		count     func(Findings) int64
		mention   string
	}{
		{
			name: "zombie tick after the next attempt began",
			// Attempt 1's grandchild outlived its dead worker and ticked at
			// t0+2.2s; attempt 2 began at t0+2s.
			sql:     `INSERT INTO ledger (task_id, attempt, session_id, kind, at) VALUES (1, 1, 1, 'tick', '2026-01-01 00:00:02.2+00')`,
			count:   func(f Findings) int64 { return f.Overlaps },
			mention: "task 1: attempt 1 (session 1) wrote until 00:00:02.200, 200 ms after attempt 2 (session 2) began",
		},
		{
			name: "next attempt began before the previous one's start",
			// Intervals overlap even when the later attempt's rows start first
			// (attempt 2 running from t0+0.3s).
			sql:     `UPDATE ledger SET at = '2026-01-01 00:00:00.3+00' WHERE task_id = 1 AND attempt = 2 AND kind = 'start'`,
			count:   func(f Findings) int64 { return f.Overlaps },
			mention: "task 1: attempt 1",
		},
		{
			name:      "task never terminal",
			sql:       `UPDATE tasks SET state = 'running', worker_session_id = 2, finished_at = NULL WHERE id = 2`,
			submitted: []int64{1, 2},
			count:     func(f Findings) int64 { return f.Lost },
			mention:   "task 2 running",
		},
		{
			name:      "submitted task missing",
			submitted: []int64{1, 2, 999},
			count:     func(f Findings) int64 { return f.Lost },
			mention:   "task 999 missing",
		},
		{
			name:    "two succeeded attempts",
			sql:     `UPDATE task_attempt_log SET outcome = 'succeeded' WHERE task_id = 1 AND attempt = 1`,
			count:   func(f Findings) int64 { return f.MultiWins },
			mention: "task 1: attempts 1,2 all succeeded",
		},
		{
			name:    "attempt started twice",
			sql:     `INSERT INTO ledger (task_id, attempt, session_id, kind, at) VALUES (2, 1, 2, 'start', '2026-01-01 00:00:01+00')`,
			count:   func(f Findings) int64 { return f.Reruns },
			mention: "task 2 attempt 1 started 2 times",
		},
		{
			name:    "ledger row from another session",
			sql:     `INSERT INTO ledger (task_id, attempt, session_id, kind, at) VALUES (2, 1, 1, 'tick', '2026-01-01 00:00:01+00')`,
			count:   func(f Findings) int64 { return f.Foreign },
			mention: "but the attempt ran on session 2",
		},
		{
			name:    "succeeded without its end row",
			sql:     `DELETE FROM ledger WHERE task_id = 2 AND kind = 'end'`,
			count:   func(f Findings) int64 { return f.Unfinished },
			mention: "task 2 attempt 1 succeeded on session 2 without its end row",
		},
		{
			name:    "failover event not finished",
			sql:     `UPDATE failover_events SET finished_at = NULL`,
			count:   func(f Findings) int64 { return f.OpenFailovers },
			mention: "of session 1",
		},
		{
			name: "dispatch row targets a dead session",
			sql: `INSERT INTO dispatch_queue (task_id, attempt, group_name, target_session_id, reason)
			      VALUES (2, 1, 'g', 1, 'retry')`,
			count:   func(f Findings) int64 { return f.ToDead },
			mention: "dispatch row of task 2 targets dead session 1",
		},
		{
			name:    "attempt dispatched after its session ended",
			sql:     `UPDATE task_attempt_log SET dispatched_at = '2026-01-01 00:00:01.7+00' WHERE task_id = 1 AND attempt = 1`,
			count:   func(f Findings) int64 { return f.ToDead },
			mention: "after it ended (dead)",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pool := newHistory(t)
			ctx := context.Background()
			if tc.sql != "" {
				if _, err := pool.Exec(ctx, tc.sql); err != nil {
					t.Fatal(err)
				}
			}
			submitted := tc.submitted
			if submitted == nil {
				submitted = []int64{1, 2}
			}
			f, err := Check(ctx, pool, submitted)
			if err != nil {
				t.Fatal(err)
			}
			if got := tc.count(f); got != 1 {
				t.Errorf("finding count %d, want 1; report:\n%s", got, f.String())
			}
			if !strings.Contains(f.String(), tc.mention) {
				t.Errorf("report does not mention %q:\n%s", tc.mention, f.String())
			}
		})
	}
}

// TestCheckNilSubmitted: without a list every task in the database counts.
func TestCheckNilSubmitted(t *testing.T) {
	pool := newHistory(t)
	if _, err := pool.Exec(context.Background(), `UPDATE tasks SET state = 'queued', attempt = 0, attempt_session_id = NULL, dispatched_at = NULL, started_at = NULL, finished_at = NULL WHERE id = 2`); err != nil {
		t.Fatal(err)
	}
	f, err := Check(context.Background(), pool, nil)
	if err != nil {
		t.Fatal(err)
	}
	if f.Submitted != 2 || f.Lost != 1 {
		t.Errorf("submitted %d lost %d, want 2 and 1:\n%s", f.Submitted, f.Lost, f.String())
	}
}

// poison adds task 3, a poison task (limit 1) as baton leaves it: it killed the
// workers of sessions 1 and 3 while running (a ledger start on each), the first
// failover moved it, the second failed it. The task row holds the final attempt;
// the failover closed it failed_over in task_attempt_log too.
const poison = `
INSERT INTO worker_sessions (name, group_name, slots, state, started_at, last_heartbeat_at, ended_at)
VALUES ('w3', 'g', 2, 'dead', '2026-01-01 00:00:00+00', '2026-01-01 00:00:02+00', '2026-01-01 00:00:04+00');
INSERT INTO tasks (group_name, kind, state, attempt, attempt_session_id, attempt_reason, dispatched_at, started_at, finished_at,
                   failover_count, running_failovers, last_error) VALUES
  ('g', 'shell', 'failed', 2, 3, 'failover', '2026-01-01 00:00:01.6+00', '2026-01-01 00:00:02+00', '2026-01-01 00:00:04+00', 1, 1,
   'failed over 1 times (its workers died while running it), the limit is 1; worker session 3 is dead too: not failed over again');
INSERT INTO task_attempt_log (task_id, attempt, worker_session_id, reason, dispatched_at, started_at, finished_at, outcome) VALUES
  (3, 1, 1, 'submit',   '2026-01-01 00:00:00+00',   '2026-01-01 00:00:00.1+00', '2026-01-01 00:00:01.5+00', 'failed_over'),
  (3, 2, 3, 'failover', '2026-01-01 00:00:01.6+00', '2026-01-01 00:00:02+00',   '2026-01-01 00:00:04+00',   'failed_over');
INSERT INTO ledger (task_id, attempt, session_id, kind, at) VALUES
  (3, 1, 1, 'start', '2026-01-01 00:00:00.1+00'),
  (3, 2, 3, 'start', '2026-01-01 00:00:02+00');
`

// TestCheckPoison: a poison task failed by the rule passes; each way of ending
// otherwise (retried to failure, failed over past or short of the limit, never
// killing its worker) is found and named.
func TestCheckPoison(t *testing.T) {
	for _, tc := range []struct {
		name, sql, mention string
	}{
		{"failed by the rule", "", ""},
		{"failed by its retries, not by failovers", `UPDATE tasks SET running_failovers = 0, failover_count = 0,
			last_error = 'exit status 137' WHERE id = 3`, "0 running failovers"},
		{"failed over fewer times than the limit", `UPDATE tasks SET running_failovers = 0 WHERE id = 3`, "0 running failovers"},
		{"did not kill its worker", `UPDATE worker_sessions SET state = 'stopped' WHERE id = 3`, "1 attempts failed over off dead sessions"},
		{"never ran", `DELETE FROM ledger WHERE task_id = 3`, "0 ledger starts"},
		{"still running", `UPDATE tasks SET state = 'running', worker_session_id = 2, finished_at = NULL WHERE id = 3`, "poison task 3: running"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pool := newHistory(t)
			ctx := context.Background()
			if _, err := pool.Exec(ctx, poison); err != nil {
				t.Fatal(err)
			}
			if tc.sql != "" {
				if _, err := pool.Exec(ctx, tc.sql); err != nil {
					t.Fatal(err)
				}
			}
			var f Findings
			if err := f.CheckPoison(ctx, pool, []int64{3}, 1); err != nil {
				t.Fatal(err)
			}
			if tc.mention == "" {
				if s := f.String(); s != "" {
					t.Fatalf("poison task failed by the rule reported:\n%s", s)
				}
				return
			}
			if f.Poison != 1 || !strings.Contains(f.String(), tc.mention) {
				t.Errorf("finding count %d, want 1 mentioning %q; report:\n%s", f.Poison, tc.mention, f.String())
			}
		})
	}
}
