-- Workflow definitions, runs and their controls. The advancement itself is SQL
-- in migrations 00005, 00011 and 00012 (triggers tasks_workflow_step and
-- tasks_workflow_steps_ended, and the workflow_* functions); these statements call it.

-- Apply, first statement: the workflow row, created if new, locked for the rest
-- of the transaction so concurrent applies of one name store versions in turn.
-- name: WorkflowLock :one
INSERT INTO workflows (name) VALUES (@name)
ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name
RETURNING id, latest_version;

-- name: WorkflowVersionHash :one
SELECT content_hash FROM workflow_versions WHERE workflow_id = @workflow_id AND version = @version;

-- name: WorkflowVersionInsert :one
INSERT INTO workflow_versions (workflow_id, version, content_hash, definition)
VALUES (@workflow_id, @version, @content_hash, @definition)
RETURNING id;

-- name: WorkflowVersionStepsInsert :exec
INSERT INTO workflow_version_steps (version_id, name, position, trigger_rule, group_name, kind, payload, priority,
                                    max_retries, timeout_ms, retry_base_ms, retry_max_ms,
                                    map_over, map_max_items, map_parallelism, sub_workflow, sub_params)
SELECT @version_id, s.name, s.position, s.trigger_rule, s.group_name, s.kind, s.payload::jsonb, s.priority,
       s.max_retries, s.timeout_ms, s.retry_base_ms, s.retry_max_ms,
       nullif(s.map_over, ''), s.map_max_items, s.map_parallelism, nullif(s.sub_workflow, ''), nullif(s.sub_params, '')::jsonb
FROM (SELECT unnest(@names::text[]) AS name, unnest(@positions::int[]) AS position,
             unnest(@trigger_rules::text[]) AS trigger_rule, unnest(@group_names::text[]) AS group_name,
             unnest(@kinds::text[]) AS kind, unnest(@payloads::text[]) AS payload,
             unnest(@priorities::int[]) AS priority, unnest(@max_retries::int[]) AS max_retries,
             unnest(@timeouts_ms::bigint[]) AS timeout_ms, unnest(@retry_bases_ms::bigint[]) AS retry_base_ms,
             unnest(@retry_maxes_ms::bigint[]) AS retry_max_ms,
             unnest(@map_overs::text[]) AS map_over, unnest(@map_max_items::int[]) AS map_max_items,
             unnest(@map_parallelisms::int[]) AS map_parallelism, unnest(@sub_workflows::text[]) AS sub_workflow,
             unnest(@sub_params::text[]) AS sub_params) AS s;

-- name: WorkflowVersionEdgesInsert :exec
INSERT INTO workflow_version_edges (version_id, from_step, to_step)
SELECT @version_id, unnest(@from_steps::text[]), unnest(@to_steps::text[]);

-- name: WorkflowSetLatest :exec
UPDATE workflows SET latest_version = @version, updated_at = now() WHERE id = @id;

-- Groups of a definition that do not exist (apply checks them in its transaction).
-- name: WorkflowGroupsMissing :many
SELECT g::text AS name FROM unnest(@groups::text[]) AS g
WHERE NOT EXISTS (SELECT 1 FROM worker_groups w WHERE w.name = g)
ORDER BY 1;

-- A version to start: the latest, or the one asked for (version > 0).
-- name: WorkflowVersionForStart :one
SELECT v.id, v.version, v.definition
FROM workflows w
JOIN workflow_versions v ON v.workflow_id = w.id
 AND v.version = CASE WHEN @version::int > 0 THEN @version::int ELSE w.latest_version END
WHERE w.name = @name;

-- name: WorkflowStart :one
SELECT run_id::bigint AS run_id, created::bool AS created
FROM workflow_start(@version_id::bigint, @params::jsonb, @failure_strategy::text, sqlc.narg('idempotency_key')::text, @timeout_ms::bigint);

-- name: WorkflowList :many
SELECT w.name, w.latest_version, w.created_at, w.updated_at FROM workflows w ORDER BY w.name;

-- name: WorkflowRunGet :one
SELECT r.id, w.name AS workflow, v.version, r.params, r.state, r.failure_strategy, r.idempotency_key,
       r.steps_left, r.created_at, r.finished_at, r.deadline, r.error, r.parent_run_id
FROM workflow_runs r
JOIN workflows w ON w.id = r.workflow_id
JOIN workflow_versions v ON v.id = r.version_id
WHERE r.id = @id;

-- Newest first, keyset paging on id.
-- name: WorkflowRunList :many
SELECT r.id, w.name AS workflow, v.version, r.params, r.state, r.failure_strategy, r.idempotency_key,
       r.steps_left, r.created_at, r.finished_at, r.deadline, r.error, r.parent_run_id
FROM workflow_runs r
JOIN workflows w ON w.id = r.workflow_id
JOIN workflow_versions v ON v.id = r.version_id
WHERE (sqlc.narg('workflow')::text IS NULL OR w.name = sqlc.narg('workflow'))
  AND (sqlc.narg('state')::text IS NULL OR r.state = sqlc.narg('state'))
  AND (sqlc.narg('before_id')::bigint IS NULL OR r.id < sqlc.narg('before_id'))
ORDER BY r.id DESC
LIMIT @max_rows;

-- A run's steps in definition order, with their current task's attempt. A
-- step with a task is stored queued until it ends: it shows running while its
-- task runs.
-- name: WorkflowRunSteps :many
SELECT s.name, CASE WHEN s.state = 'queued' AND t.state = 'running' THEN 'running' ELSE s.state END::text AS state, s.task_id, s.task_count, s.output, s.error, s.ready_at, s.finished_at,
       v.trigger_rule, coalesce(t.attempt, 0)::int AS attempt, coalesce(t.retries, 0)::int AS retries, s.child_run_id,
       (SELECT count(*) FROM workflow_run_map_items i WHERE i.run_id = s.run_id AND i.step = s.name)::int AS items,
       (SELECT count(*) FROM workflow_run_map_items i WHERE i.run_id = s.run_id AND i.step = s.name
           AND i.state IN ('succeeded', 'failed', 'canceled'))::int AS items_done
FROM workflow_run_steps s
JOIN workflow_runs r ON r.id = s.run_id
JOIN workflow_version_steps v ON v.version_id = r.version_id AND v.name = s.name
LEFT JOIN tasks t ON t.id = s.task_id
WHERE s.run_id = @run_id
ORDER BY v.position;

-- name: WorkflowRunPause :one
SELECT workflow_pause(@id)::bool;

-- name: WorkflowRunResume :one
SELECT workflow_resume(@id)::bool;

-- Ends the run (canceled or stopped); returns the live tasks to cancel.
-- name: WorkflowRunEnd :many
SELECT t::bigint AS task_id FROM workflow_end(@id::bigint, @state::text, @reason::text) AS t;

-- name: WorkflowRunRerun :one
SELECT workflow_rerun(@id::bigint, @steps::text[])::int;

-- Steps a rerun --failed starts from.
-- Sub-workflow references of an applied definition: the latest version of a
-- workflow (NULL fields if none).
-- name: WorkflowLatestDefinition :one
SELECT v.definition FROM workflows w JOIN workflow_versions v ON v.workflow_id = w.id AND v.version = w.latest_version
WHERE w.name = @name;

-- name: WorkflowRunFailedSteps :many
SELECT name FROM workflow_run_steps WHERE run_id = @run_id AND state IN ('failed', 'upstream_failed', 'canceled') ORDER BY name;

-- Repair check: runs that are running yet have no live step (queued or
-- running with a live task, a live map item or a running child run), or whose
-- steps_left disagrees with their steps. Must find nothing, ever.
-- name: WorkflowRunsStuck :many
SELECT r.id FROM workflow_runs r
WHERE r.state IN ('running', 'paused')
  AND ((r.state = 'running' AND NOT EXISTS (SELECT 1 FROM workflow_run_steps s WHERE s.run_id = r.id AND s.state IN ('queued', 'running')
                  AND ((s.task_id IS NOT NULL AND EXISTS (SELECT 1 FROM tasks t WHERE t.id = s.task_id AND t.state IN ('queued', 'dispatched', 'running')))
                       OR EXISTS (SELECT 1 FROM workflow_run_map_items i WHERE i.run_id = s.run_id AND i.step = s.name AND i.state IN ('queued', 'running'))
                       OR EXISTS (SELECT 1 FROM workflow_runs c WHERE c.id = s.child_run_id AND c.state IN ('running', 'paused')))))
       OR r.steps_left <> (SELECT count(*) FROM workflow_run_steps s WHERE s.run_id = r.id
                           AND s.state IN ('pending', 'queued', 'running')))
ORDER BY r.id;

-- The master's repair sweep: records each stuck run (WorkflowRunsStuck's
-- predicate) once in workflow_run_findings and returns the new findings.
-- name: WorkflowRunsRecordStuck :many
WITH stuck AS (
    SELECT r.id, r.state, r.steps_left,
           (SELECT count(*) FROM workflow_run_steps s WHERE s.run_id = r.id AND s.state IN ('queued', 'running')
                  AND ((s.task_id IS NOT NULL AND EXISTS (SELECT 1 FROM tasks t WHERE t.id = s.task_id AND t.state IN ('queued', 'dispatched', 'running')))
                       OR EXISTS (SELECT 1 FROM workflow_run_map_items i WHERE i.run_id = s.run_id AND i.step = s.name AND i.state IN ('queued', 'running'))
                       OR EXISTS (SELECT 1 FROM workflow_runs c WHERE c.id = s.child_run_id AND c.state IN ('running', 'paused'))))::int AS live_steps,
           (SELECT count(*) FROM workflow_run_steps s WHERE s.run_id = r.id AND s.state IN ('pending', 'queued', 'running'))::int AS open_steps
    FROM workflow_runs r
    WHERE r.state IN ('running', 'paused')
)
INSERT INTO workflow_run_findings (run_id, detected_by, run_state, steps_left, live_steps, open_steps)
SELECT stuck.id, sqlc.narg('detected_by')::bigint, stuck.state, stuck.steps_left, stuck.live_steps, stuck.open_steps
FROM stuck
WHERE (stuck.state = 'running' AND stuck.live_steps = 0) OR stuck.steps_left <> stuck.open_steps
ON CONFLICT (run_id) DO NOTHING
RETURNING run_id, run_state, steps_left, live_steps, open_steps;

-- Run timeout: runs past their deadline (Postgres time), oldest deadline first;
-- each is then ended in its own transaction (workflow_end re-checks the state).
-- name: WorkflowRunsOverdue :many
SELECT id FROM workflow_runs
WHERE state IN ('running', 'paused') AND deadline IS NOT NULL
  AND deadline < coalesce(sqlc.narg('now')::timestamptz, now())
ORDER BY deadline
LIMIT @max_runs;
