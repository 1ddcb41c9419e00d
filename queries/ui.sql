-- A run's dependency edges (from its pinned version), for the DAG.
-- name: UIRunEdges :many
SELECT e.from_step, e.to_step
FROM workflow_runs r
JOIN workflow_version_edges e ON e.version_id = r.version_id
WHERE r.id = @run_id
ORDER BY e.from_step, e.to_step;

-- When each step's current task started, for the Gantt chart.
-- name: UIRunStepStarts :many
SELECT s.name, t.started_at
FROM workflow_run_steps s
JOIN tasks t ON t.id = s.task_id
WHERE s.run_id = @run_id;

-- A schedule's most recent fires (its ledger, by the unique key), newest first.
-- name: UIScheduleRecentFires :many
SELECT nominal_time, source, outcome, coalesce(reason, '')::text AS reason, kind, run_id,
       coalesce(run_state, '')::text AS run_state, lag_ms
FROM schedule_fires
WHERE schedule_id = @schedule_id
ORDER BY nominal_time DESC
LIMIT @max_rows;

-- What the live pages show changed when this changes: every part an index
-- endpoint or a count over a small partial index (read once a second by one
-- goroutine per server, whatever the number of open pages).
-- name: UILiveSignature :one
SELECT (SELECT coalesce(max(id), 0) FROM tasks)::bigint AS max_task,
       (SELECT count(*) FROM tasks WHERE worker_session_id IS NOT NULL)::bigint AS active_tasks,
       (SELECT coalesce(max(finished_at), 'epoch') FROM tasks WHERE finished_at IS NOT NULL)::timestamptz AS last_finish,
       (SELECT coalesce(max(id), 0) FROM worker_sessions)::bigint AS max_session,
       (SELECT count(*) FROM worker_sessions WHERE state IN ('alive', 'draining'))::bigint AS live_sessions,
       (SELECT coalesce(max(id), 0) FROM failover_events)::bigint AS max_failover,
       (SELECT coalesce(max(id), 0) FROM workflow_runs)::bigint AS max_run;
