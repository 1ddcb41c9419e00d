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
