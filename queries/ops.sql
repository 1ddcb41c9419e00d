-- Operator surface (HTTP API, CLI): groups, bulk task actions, tokens, audit.

-- Every group with its settings, live workers (Postgres time) and queued tasks.
-- name: GroupList :many
SELECT g.name, g.description, g.created_at, g.paused, g.retry_base_ms, g.retry_max_ms,
       (SELECT count(*) FROM worker_sessions s
        WHERE s.group_name = g.name AND s.state IN ('alive', 'draining')
          AND s.last_heartbeat_at > now() - sqlc.arg('worker_timeout_ms')::bigint * interval '1 millisecond'
       )::bigint AS live_workers,
       (SELECT count(*) FROM tasks t WHERE t.group_name = g.name AND t.state = 'queued')::bigint AS waiting_tasks
FROM worker_groups g
WHERE (sqlc.narg('name')::text IS NULL OR g.name = sqlc.narg('name'))
ORDER BY g.name;

-- Pause or resume a group's claims (TaskClaimNext reads the flag).
-- name: GroupSetPaused :execrows
UPDATE worker_groups SET paused = @paused WHERE name = @name;

-- Ids of the tasks a bulk action acts on (by ids or by filter), newest first,
-- bounded; plain_only leaves out workflow steps.
-- name: TaskSelectIDs :many
SELECT id FROM tasks
WHERE state = ANY (@states::text[])
  AND (sqlc.narg('ids')::bigint[] IS NULL OR id = ANY (sqlc.narg('ids')::bigint[]))
  AND (NOT @plain_only::bool OR workflow_run_id IS NULL)
  AND (sqlc.narg('group_name')::text IS NULL OR group_name = sqlc.narg('group_name'))
  AND (sqlc.narg('kind')::text IS NULL OR kind = sqlc.narg('kind'))
ORDER BY id DESC
LIMIT @max_rows;

-- Operator retry: failed, timed-out or canceled tasks that belong to no workflow
-- run go back to the queue now, as a retry (retries used are kept). The final
-- attempt the task row described is first closed in task_attempt_log. Locks the
-- rows, and the update re-checks the state.
-- name: TaskRetry :many
WITH old AS (
    SELECT id, attempt, attempt_session_id, attempt_reason, dispatched_at, started_at, finished_at,
           state, exit_code, last_error
    FROM tasks
    WHERE id = ANY (@ids::bigint[]) AND state IN ('failed', 'timed_out', 'canceled') AND workflow_run_id IS NULL
    ORDER BY id
    FOR UPDATE
), t AS (
    UPDATE tasks
    SET state = 'queued', finished_at = NULL, worker_session_id = NULL, available_at = now(),
        queued_reason = 'retry', dispatched_at = NULL, started_at = NULL
    FROM old
    WHERE tasks.id = old.id AND tasks.state IN ('failed', 'timed_out', 'canceled')
    RETURNING tasks.id, tasks.group_name
), a AS (
    INSERT INTO task_attempt_log (task_id, attempt, worker_session_id, reason, dispatched_at, started_at,
                                  finished_at, outcome, exit_code, error)
    SELECT old.id, old.attempt, old.attempt_session_id, old.attempt_reason, old.dispatched_at, old.started_at,
           old.finished_at, old.state, old.exit_code, old.last_error
    FROM old JOIN t ON t.id = old.id
    WHERE old.attempt > 0 AND old.attempt_session_id IS NOT NULL AND old.dispatched_at IS NOT NULL
    ON CONFLICT (task_id, attempt) DO NOTHING
)
SELECT t.id, t.group_name FROM t ORDER BY t.id;

-- name: MasterSessionList :many
SELECT * FROM master_sessions
WHERE @include_ended::bool OR state = 'alive'
ORDER BY id DESC
LIMIT @max_rows;

-- name: TokenCreate :one
INSERT INTO api_tokens (name, scope, token_sha256) VALUES (@name, @scope, @token_sha256)
RETURNING id, created_at;

-- A token that is not revoked, by its hash.
-- name: TokenLookup :one
SELECT id, name, scope FROM api_tokens WHERE token_sha256 = @token_sha256 AND revoked_at IS NULL;

-- name: TokenRevoke :execrows
UPDATE api_tokens SET revoked_at = now() WHERE id = @id AND revoked_at IS NULL;

-- name: TokenList :many
SELECT id, name, scope, created_at, revoked_at FROM api_tokens ORDER BY id;

-- name: AuditInsert :exec
INSERT INTO audit_log (token_id, actor, action, target, detail)
VALUES (sqlc.narg('token_id'), @actor, @action, @target, @detail);

-- name: AuditList :many
SELECT * FROM audit_log ORDER BY id DESC LIMIT @max_rows;

-- One worker session in the shape of WorkerSessionList.
-- name: WorkerSessionShow :one
SELECT s.*,
       extract(epoch FROM now() - s.last_heartbeat_at)::float8 AS heartbeat_age_seconds,
       (SELECT count(*) FROM tasks t WHERE t.worker_session_id = s.id AND t.state IN ('dispatched', 'running'))::int AS active_tasks
FROM worker_sessions s
WHERE s.id = @id;
