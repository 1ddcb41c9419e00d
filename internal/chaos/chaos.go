// Package chaos is the bookkeeping of baton's fault campaign: the ledger table the
// campaign's tasks write their side effects to, and the checker that judges a run
// with SQL over that ledger and the scheduler tables.
//
// Every task of the campaign records, in table ledger, one row when an attempt
// starts, one row per tick while it works, and one row when it ends, each stamped
// with clock_timestamp() by Postgres. An attempt's effect interval is the span from
// its first to its last ledger row. The central invariant is that the effect
// intervals of two attempts of one task never overlap: a zombie (a killed worker's
// surviving grandchild, a partitioned worker that did not fence itself in time)
// keeps writing ticks after the next attempt began, and shows up here.
package chaos

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Ledger event kinds.
const (
	KindRun   = "run"   // one-shot record (the simple e2e scenarios)
	KindStart = "start" // an attempt began its work
	KindTick  = "tick"  // still working
	KindEnd   = "end"   // the work is complete
)

// LedgerSchema creates the ledger table. token makes a retried insert idempotent
// (a writer that lost the reply to its commit retries with the same token) while a
// second run of the same attempt, which draws a new token, still shows up.
const LedgerSchema = `
CREATE TABLE IF NOT EXISTS ledger (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_id    bigint NOT NULL,
    attempt    integer NOT NULL,
    session_id bigint NOT NULL,
    kind       text NOT NULL DEFAULT 'run',
    token      text UNIQUE,
    at         timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS ledger_attempt ON ledger (task_id, attempt);`

// InsertSQL records one ledger event: $1 task, $2 attempt, $3 session, $4 kind,
// $5 token (unique per write, reused by retries of that write).
const InsertSQL = `INSERT INTO ledger (task_id, attempt, session_id, kind, token)
VALUES ($1, $2, $3, $4, $5) ON CONFLICT (token) DO NOTHING`

// FaultsSchema is the campaign's own record of the faults it injected, so the
// recovery figures are measured on the Postgres clock like everything else.
const FaultsSchema = `
CREATE TABLE IF NOT EXISTS chaos_faults (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind        text NOT NULL,
    target      text NOT NULL DEFAULT '',
    target_session bigint,
    started_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    healed_at   timestamptz,
    recovered_at timestamptz,
    note        text NOT NULL DEFAULT ''
);`

// Querier is what the checker needs (a *pgxpool.Pool or *pgx.Conn).
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// Findings is the verdict over one run. The string slices hold up to MaxListed
// rendered rows each; the counts are complete.
type Findings struct {
	Tasks     int64 // tasks in the database
	Submitted int64 // tasks the caller knows it submitted
	Succeeded int64
	Failed    int64 // failed, timed_out or canceled

	Lost      int64 // submitted tasks missing or not terminal
	LostRows  []string
	MultiWins int64 // tasks with more than one succeeded attempt
	MultiRows []string
	Overlaps  int64 // pairs of attempts of one task whose effect intervals overlap
	OverRows  []string
	// Attempts that started twice (two start rows with different tokens).
	Reruns    int64
	RerunRows []string
	// Ledger rows of an attempt that does not exist or belongs to another session.
	Foreign     int64
	ForeignRows []string
	// Succeeded attempts whose work did not complete (no end or run row).
	Unfinished     int64
	UnfinishedRows []string
	// Failover events not finished.
	OpenFailovers int64
	OpenRows      []string
	// Work handed to a session that was not alive: active tasks or dispatch rows
	// on a dead/stopped session, or attempts dispatched after their session ended.
	ToDead     int64
	ToDeadRows []string

	// Poison tasks (tasks that kill the worker running them) that did not end
	// failed by the poison rule after exactly MaxFailovers running failovers
	// (CheckPoison).
	Poison     int64
	PoisonRows []string

	Fenced int64 // attempts whose late result was refused (outcome fenced, or refused_at recorded)
}

// MaxListed bounds the example rows kept per finding.
const MaxListed = 20

// Check runs every check. submitted are the ids of the tasks the caller submitted
// (nil: every task in the database counts as submitted). It never modifies data.
func Check(ctx context.Context, q Querier, submitted []int64) (Findings, error) {
	var f Findings
	if err := q.QueryRow(ctx, `SELECT count(*),
	        count(*) FILTER (WHERE state = 'succeeded'),
	        count(*) FILTER (WHERE state IN ('failed', 'timed_out', 'canceled')),
	        (SELECT count(*) FROM task_attempts WHERE outcome = 'fenced' OR refused_at IS NOT NULL)
	    FROM tasks`).Scan(&f.Tasks, &f.Succeeded, &f.Failed, &f.Fenced); err != nil {
		return f, fmt.Errorf("count tasks: %w", err)
	}
	if submitted == nil {
		f.Submitted = f.Tasks
	} else {
		f.Submitted = int64(len(submitted))
	}
	for _, c := range []struct {
		count *int64
		rows  *[]string
		sql   string
		args  []any
	}{
		{&f.Lost, &f.LostRows, `
			WITH s AS (SELECT id FROM unnest($1::bigint[]) AS id
			           UNION SELECT id FROM tasks WHERE $1::bigint[] IS NULL)
			SELECT 'task ' || s.id || ' ' || coalesce(t.state || ' attempt ' || t.attempt || ' on session '
			       || coalesce(t.worker_session_id::text, '-') || ' failovers ' || t.failover_count, 'missing')
			FROM s LEFT JOIN tasks t ON t.id = s.id
			WHERE t.id IS NULL OR t.state NOT IN ('succeeded', 'failed', 'timed_out', 'canceled')
			ORDER BY s.id`, []any{submitted}},
		{&f.MultiWins, &f.MultiRows, `
			SELECT 'task ' || task_id || ': attempts ' || string_agg(attempt::text, ',' ORDER BY attempt) || ' all succeeded'
			FROM task_attempts WHERE outcome = 'succeeded'
			GROUP BY task_id HAVING count(*) > 1 ORDER BY task_id`, nil},
		{&f.Overlaps, &f.OverRows, `
			WITH iv AS (
			    SELECT task_id, attempt, min(session_id) AS session_id, min(at) AS first, max(at) AS last
			    FROM ledger GROUP BY task_id, attempt)
			SELECT 'task ' || a.task_id || ': attempt ' || a.attempt || ' (session ' || a.session_id || ') wrote until '
			       || to_char(a.last, 'HH24:MI:SS.MS') || ', ' || round(extract(epoch FROM a.last - b.first)::numeric * 1000)
			       || ' ms after attempt ' || b.attempt || ' (session ' || b.session_id || ') began at '
			       || to_char(b.first, 'HH24:MI:SS.MS') || coalesce(' [' || t.kind || ']', '')
			FROM iv a JOIN iv b ON a.task_id = b.task_id AND a.attempt < b.attempt
			LEFT JOIN tasks t ON t.id = a.task_id
			WHERE a.first <= b.last AND b.first <= a.last
			ORDER BY a.task_id, a.attempt, b.attempt`, nil},
		{&f.Reruns, &f.RerunRows, `
			SELECT 'task ' || task_id || ' attempt ' || attempt || ' started ' || count(*) || ' times'
			FROM ledger WHERE kind IN ('start', 'run')
			GROUP BY task_id, attempt HAVING count(*) > 1 ORDER BY task_id, attempt`, nil},
		{&f.Foreign, &f.ForeignRows, `
			SELECT 'ledger row ' || l.id || ': task ' || l.task_id || ' attempt ' || l.attempt || ' session ' || l.session_id
			       || coalesce(' but the attempt ran on session ' || a.worker_session_id, ' but no such attempt')
			FROM ledger l LEFT JOIN task_attempts a ON a.task_id = l.task_id AND a.attempt = l.attempt
			WHERE a.task_id IS NULL OR a.worker_session_id <> l.session_id
			ORDER BY l.id`, nil},
		{&f.Unfinished, &f.UnfinishedRows, `
			SELECT 'task ' || a.task_id || ' attempt ' || a.attempt || ' succeeded on session ' || a.worker_session_id
			       || ' without its end row'
			FROM task_attempts a
			WHERE a.outcome = 'succeeded' AND NOT EXISTS (
			    SELECT 1 FROM ledger l WHERE l.task_id = a.task_id AND l.attempt = a.attempt
			      AND l.session_id = a.worker_session_id AND l.kind IN ('end', 'run'))
			ORDER BY a.task_id`, nil},
		{&f.OpenFailovers, &f.OpenRows, `
			SELECT kind || ' failover event ' || id || ' of session ' || session_id || ' started '
			       || to_char(started_at, 'HH24:MI:SS.MS') || ' not finished'
			FROM failover_events WHERE finished_at IS NULL ORDER BY id`, nil},
		{&f.ToDead, &f.ToDeadRows, `
			SELECT 'task ' || t.id || ' is ' || t.state || ' on ' || s.state || ' session ' || s.id
			FROM tasks t JOIN worker_sessions s ON s.id = t.worker_session_id
			WHERE t.state IN ('dispatched', 'running') AND s.state IN ('dead', 'stopped')
			UNION ALL
			SELECT 'dispatch row of task ' || d.task_id || ' targets ' || s.state || ' session ' || s.id
			FROM dispatch_queue d JOIN worker_sessions s ON s.id = d.target_session_id
			WHERE s.state IN ('dead', 'stopped')
			UNION ALL
			SELECT 'task ' || a.task_id || ' attempt ' || a.attempt || ' dispatched to session ' || s.id || ' at '
			       || to_char(a.dispatched_at, 'HH24:MI:SS.MS') || ', after it ended (' || s.state || ') at '
			       || to_char(s.ended_at, 'HH24:MI:SS.MS')
			FROM task_attempts a JOIN worker_sessions s ON s.id = a.worker_session_id
			WHERE s.ended_at IS NOT NULL AND a.dispatched_at > s.ended_at`, nil},
	} {
		n, rows, err := collect(ctx, q, c.sql, c.args...)
		if err != nil {
			return f, err
		}
		*c.count, *c.rows = n, rows
	}
	return f, nil
}

func collect(ctx context.Context, q Querier, sql string, args ...any) (int64, []string, error) {
	rows, err := q.Query(ctx, sql, args...)
	if err != nil {
		return 0, nil, fmt.Errorf("check %s: %w", firstLine(sql), err)
	}
	defer rows.Close()
	var n int64
	var out []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			return 0, nil, fmt.Errorf("check %s: %w", firstLine(sql), err)
		}
		n++
		if len(out) < MaxListed {
			out = append(out, s)
		}
	}
	if err := rows.Err(); err != nil {
		return 0, nil, fmt.Errorf("check %s: %w", firstLine(sql), err)
	}
	return n, out, nil
}

func firstLine(sql string) string {
	for _, l := range strings.Split(sql, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			return l
		}
	}
	return ""
}

// CheckPoison checks tasks that kill every worker that runs them (ids) against the
// poison rule of --max-failovers (maxFailovers): each must have ended failed because
// it was failed over maxFailovers times while running — state failed,
// running_failovers = maxFailovers, last_error naming the count and the limit —
// after killing maxFailovers+1 workers: maxFailovers+1 attempts that were running
// and were closed failed_over on a session declared dead, and 1..maxFailovers+1
// ledger start rows (at least one attempt ran; one that another poison task's kill
// of the same worker cut short may have written none).
// It records the tasks that did not in f.Poison and f.PoisonRows.
func (f *Findings) CheckPoison(ctx context.Context, q Querier, ids []int64, maxFailovers int) error {
	n, rows, err := collect(ctx, q, `
		WITH p AS (SELECT id FROM unnest($1::bigint[]) AS id),
		     a AS (SELECT a.task_id,
		                  count(*) FILTER (WHERE a.outcome = 'failed_over' AND a.started_at IS NOT NULL AND s.state = 'dead') AS killed
		           FROM task_attempts a JOIN p ON p.id = a.task_id
		           LEFT JOIN worker_sessions s ON s.id = a.worker_session_id GROUP BY a.task_id),
		     l AS (SELECT task_id, count(*) AS starts FROM ledger JOIN p ON p.id = ledger.task_id
		           WHERE kind = 'start' GROUP BY task_id)
		SELECT 'poison task ' || p.id || ': ' || coalesce(t.state || ', ' || t.running_failovers || ' running failovers ('
		       || t.failover_count || ' in all), ' || coalesce(a.killed, 0) || ' attempts failed over off dead sessions, '
		       || coalesce(l.starts, 0) || ' ledger starts, last error "' || left(t.last_error, 160) || '"', 'missing')
		       || '; want failed after ' || $2::int || ' running failovers, ' || $2::int + 1 || ' workers killed'
		FROM p LEFT JOIN tasks t ON t.id = p.id LEFT JOIN a ON a.task_id = p.id LEFT JOIN l ON l.task_id = p.id
		WHERE t.id IS NULL OR t.state <> 'failed' OR t.running_failovers <> $2::int
		   OR t.last_error NOT LIKE 'failed over ' || $2::int || ' times (its workers died while running it), the limit is ' || $2::int || ';%'
		   OR coalesce(a.killed, 0) <> $2::int + 1 OR coalesce(l.starts, 0) NOT BETWEEN 1 AND $2::int + 1
		ORDER BY p.id`, ids, maxFailovers)
	if err != nil {
		return err
	}
	f.Poison, f.PoisonRows = n, rows
	return nil
}

// Problem is one violated invariant with its examples.
type Problem struct {
	What  string
	Count int64
	Rows  []string
}

// Problems lists the violated invariants (empty: the run is clean).
func (f Findings) Problems() []Problem {
	var out []Problem
	add := func(what string, n int64, rows []string) {
		if n > 0 {
			out = append(out, Problem{What: what, Count: n, Rows: rows})
		}
	}
	add("tasks lost (missing or never terminal)", f.Lost, f.LostRows)
	add("tasks with more than one succeeded attempt", f.MultiWins, f.MultiRows)
	add("attempts of one task whose side effects overlap in time", f.Overlaps, f.OverRows)
	add("attempts that started more than once", f.Reruns, f.RerunRows)
	add("ledger rows of another session's or a missing attempt", f.Foreign, f.ForeignRows)
	add("succeeded attempts whose work never completed", f.Unfinished, f.UnfinishedRows)
	add("failover events not finished", f.OpenFailovers, f.OpenRows)
	add("work dispatched to (or left on) a dead or stopped session", f.ToDead, f.ToDeadRows)
	add("poison tasks not failed by the --max-failovers rule", f.Poison, f.PoisonRows)
	return out
}

// String renders the problems, one block each ("" when clean).
func (f Findings) String() string {
	var b strings.Builder
	for _, p := range f.Problems() {
		fmt.Fprintf(&b, "%s: %d\n", p.What, p.Count)
		for _, r := range p.Rows {
			fmt.Fprintf(&b, "    %s\n", r)
		}
		if int64(len(p.Rows)) < p.Count {
			fmt.Fprintf(&b, "    ... and %d more\n", p.Count-int64(len(p.Rows)))
		}
	}
	return b.String()
}

// NewToken is a fresh ledger token (one per write; retries of the write reuse it).
func NewToken() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Retry runs write until it succeeds or ctx ends, backing off from 50 ms to 1 s
// between tries, so a ledger write survives a Postgres restart or switchover.
// It returns the last error when ctx ends first.
func Retry(ctx context.Context, write func(context.Context) error) error {
	delay := 50 * time.Millisecond
	for {
		err := write(ctx)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last error: %v)", ctx.Err(), err)
		case <-time.After(delay):
		}
		if delay *= 2; delay > time.Second {
			delay = time.Second
		}
	}
}
