package retention_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/baton-scheduler/baton/batontest"
	"github.com/baton-scheduler/baton/internal/retention"
)

var srv *batontest.Server

func TestMain(m *testing.M) {
	os.Exit(batontest.MainNoLeaks(m, func(s *batontest.Server) { srv = s }))
}

// Old finished rows go, in batches; everything still in use or younger than the
// retention stays, whatever its age.
func TestPrune(t *testing.T) {
	t.Parallel()
	pool, _ := srv.NewPool(t)
	ctx := context.Background()
	q := func(sql string, args ...any) int64 { t.Helper(); return batontest.Int64(t, pool, sql, args...) }
	q("INSERT INTO worker_groups (name) VALUES ('g') RETURNING 1")
	// Sessions: ended long ago and unreferenced (goes), ended long ago but named by
	// a kept attempt (stays), ended recently (stays), alive (stays).
	oldSession := q("INSERT INTO worker_sessions (name, group_name, slots, state, ended_at) VALUES ('old', 'g', 1, 'dead', now() - interval '3 days') RETURNING id")
	usedSession := q("INSERT INTO worker_sessions (name, group_name, slots, state, ended_at) VALUES ('used', 'g', 1, 'stopped', now() - interval '3 days') RETURNING id")
	recentSession := q("INSERT INTO worker_sessions (name, group_name, slots, state, ended_at) VALUES ('recent', 'g', 1, 'dead', now() - interval '1 hour') RETURNING id")
	alive := q("INSERT INTO worker_sessions (name, group_name, slots) VALUES ('alive', 'g', 1) RETURNING id")
	// Tasks: 25 finished long ago on oldSession (go), each with a closed attempt in
	// task_attempt_log (a retry) and its final one in the task row; one finished
	// recently whose closed first attempt (failed over) names usedSession (stays);
	// one queued for days (stays).
	q(`WITH t AS (INSERT INTO tasks (group_name, kind, state, attempt, attempt_session_id, attempt_reason, retries, max_retries,
		                          submitted_at, dispatched_at, started_at, finished_at)
		SELECT 'g', 'noop', 'succeeded', 2, $1, 'retry', 1, 1, now() - interval '5 days', now() - interval '4 days',
		       now() - interval '4 days', now() - interval '3 days' FROM generate_series(1, 25) RETURNING id)
		INSERT INTO task_attempt_log (task_id, attempt, worker_session_id, reason, outcome, dispatched_at, finished_at)
		SELECT id, 1, $1, 'submit', 'failed', now() - interval '5 days', now() - interval '5 days' FROM t RETURNING 1`, oldSession)
	recentTask := q(`INSERT INTO tasks (group_name, kind, state, attempt, attempt_session_id, attempt_reason, dispatched_at, started_at, finished_at)
		VALUES ('g', 'noop', 'failed', 2, $1, 'failover', now() - interval '2 hours', now() - interval '2 hours', now() - interval '1 hour') RETURNING id`, alive)
	q(`INSERT INTO task_attempt_log (task_id, attempt, worker_session_id, reason, outcome, dispatched_at, finished_at)
		VALUES ($1, 1, $2, 'submit', 'failed_over', now() - interval '4 days', now() - interval '3 days') RETURNING 1`, recentTask, usedSession)
	if n := q("SELECT count(*) FROM task_attempts WHERE worker_session_id = $1", oldSession); n != 50 {
		t.Fatalf("attempts on oldSession = %d, want 50 (log and task rows)", n)
	}
	queued := q(`INSERT INTO tasks (group_name, kind, submitted_at) VALUES ('g', 'noop', now() - interval '10 days') RETURNING id`)
	// Masters and failover events.
	oldMaster := q("INSERT INTO master_sessions (name, state, ended_at) VALUES ('m', 'stopped', now() - interval '3 days') RETURNING id")
	liveMaster := q("INSERT INTO master_sessions (name) VALUES ('m2') RETURNING id")
	q(`INSERT INTO failover_events (kind, session_id, group_name, detected_by, deadline, finished_at)
		VALUES ('worker', $1, 'g', $2, now() - interval '3 days', now() - interval '3 days') RETURNING 1`, oldSession, oldMaster)
	keptEvent := q(`INSERT INTO failover_events (kind, session_id, group_name, detected_by, deadline, finished_at)
		VALUES ('worker', $1, 'g', $2, now() - interval '1 hour', now() - interval '1 hour') RETURNING id`, recentSession, oldMaster)
	unfinished := q(`INSERT INTO failover_events (kind, session_id, group_name, detected_by, deadline)
		VALUES ('worker', $1, 'g', $2, now() - interval '9 days') RETURNING id`, usedSession, liveMaster)

	res, err := retention.Prune(ctx, pool, retention.Config{Retention: 24 * time.Hour, BatchSize: 10})
	if err != nil {
		t.Fatal(err)
	}
	want := retention.Result{Tasks: 25, FailoverEvents: 1, WorkerSessions: 1, MasterSessions: 1, Done: true}
	if res != want {
		t.Fatalf("Prune = %+v, want %+v", res, want)
	}
	if n := q("SELECT count(*) FROM task_attempts WHERE worker_session_id = $1", oldSession); n != 0 {
		t.Fatalf("%d attempts of pruned tasks left", n)
	}
	if n := q("SELECT count(*) FROM task_attempts WHERE task_id = $1", recentTask); n != 2 {
		t.Fatalf("kept task has %d attempts, want 2", n)
	}
	if n := q("SELECT count(*) FROM tasks WHERE id IN ($1, $2)", recentTask, queued); n != 2 {
		t.Fatal("a recent or unfinished task was pruned")
	}
	if n := q("SELECT count(*) FROM worker_sessions WHERE id IN ($1, $2, $3)", usedSession, recentSession, alive); n != 3 {
		t.Fatal("a referenced, recent or live session was pruned")
	}
	if n := q("SELECT count(*) FROM failover_events WHERE id IN ($1, $2)", keptEvent, unfinished); n != 2 {
		t.Fatal("a recent or unfinished failover event was pruned")
	}
	if n := q("SELECT count(*) FROM failover_events WHERE id = $1 AND detected_by = $2", keptEvent, oldMaster); n != 1 {
		t.Fatal("event of a pruned master should stay, naming it")
	}
	if n := q("SELECT count(*) FROM master_sessions WHERE id = $1", liveMaster); n != 1 {
		t.Fatal("live master pruned")
	}

	// A second prune finds nothing; a "now" a week ahead (injected) takes the rest
	// of what is finished, and still never the queued task or the unfinished event.
	if res, err := retention.Prune(ctx, pool, retention.Config{Retention: 24 * time.Hour}); err != nil || res.Total() != 0 {
		t.Fatalf("second prune = %+v, %v", res, err)
	}
	later := time.Now().Add(7 * 24 * time.Hour)
	res, err = retention.Prune(ctx, pool, retention.Config{Retention: 24 * time.Hour, Now: &later})
	if err != nil || res.Tasks != 1 || res.FailoverEvents != 1 {
		t.Fatalf("prune a week later = %+v, %v", res, err)
	}
	if n := q("SELECT count(*) FROM tasks WHERE id = $1", queued); n != 1 {
		t.Fatal("queued task pruned")
	}
	if n := q("SELECT count(*) FROM failover_events WHERE id = $1", unfinished); n != 1 {
		t.Fatal("unfinished failover event pruned")
	}
}

// MaxBatches bounds one call; Done says whether more is left.
func TestPruneBounded(t *testing.T) {
	t.Parallel()
	pool, _ := srv.NewPool(t)
	ctx := context.Background()
	q := func(sql string, args ...any) int64 { t.Helper(); return batontest.Int64(t, pool, sql, args...) }
	q("INSERT INTO worker_groups (name) VALUES ('g') RETURNING 1")
	q(`INSERT INTO tasks (group_name, kind, state, finished_at)
		SELECT 'g', 'noop', 'canceled', now() - interval '3 days' FROM generate_series(1, 30) RETURNING 1`)
	cfg := retention.Config{Retention: time.Hour, BatchSize: 10, MaxBatches: 2}
	if res, err := retention.Prune(ctx, pool, cfg); err != nil || res.Tasks != 20 || res.Done {
		t.Fatalf("first call = %+v, %v; want 20, not done", res, err)
	}
	if res, err := retention.Prune(ctx, pool, cfg); err != nil || res.Tasks != 10 || !res.Done {
		t.Fatalf("second call = %+v, %v; want 10, done", res, err)
	}
	if _, err := retention.Prune(ctx, pool, retention.Config{}); err == nil {
		t.Fatal("zero retention accepted")
	}
}
