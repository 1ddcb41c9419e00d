-- Groups with a task that has waited at least min_wait_s for a worker: one index
-- probe per group (worker_groups is small), never a scan of the backlog.
-- name: DispatchListWaitingGroups :many
SELECT g.name FROM worker_groups g
WHERE EXISTS (SELECT 1 FROM tasks t
              WHERE t.group_name = g.name AND t.state = 'queued'
                AND t.available_at <= now() - make_interval(secs => @min_wait_s::float8))
ORDER BY g.name;

-- Queue order: priority, then task id (submission order). Neither changes when a
-- task is failed over or retried, so failed-over work keeps its place in the
-- backlog. Index tasks_queue (group_name, priority DESC, id) WHERE state = 'queued'.
-- name: DispatchLockWaiting :many
SELECT id AS task_id FROM tasks
WHERE group_name = @group_name AND state = 'queued'
  AND available_at <= now() - make_interval(secs => @min_wait_s::float8)
ORDER BY priority DESC, id
LIMIT @max_tasks
FOR UPDATE SKIP LOCKED;

-- Points queued tasks at chosen sessions: bumps the attempt (the fencing epoch),
-- opens it in the task row and writes the targeted dispatch row the session
-- claims. The task update re-checks that the task is still queued.
-- name: DispatchAssign :many
WITH m AS (
    SELECT unnest(@task_ids::bigint[]) AS task_id, unnest(@session_ids::bigint[]) AS session_id
), t AS (
    UPDATE tasks
    SET state = 'dispatched', attempt = tasks.attempt + 1, worker_session_id = m.session_id,
        attempt_session_id = m.session_id, attempt_reason = tasks.queued_reason,
        dispatched_at = now(), started_at = NULL
    FROM m
    WHERE tasks.id = m.task_id
      AND tasks.state = 'queued'
    RETURNING tasks.id, tasks.attempt, tasks.worker_session_id, tasks.group_name, tasks.priority, tasks.attempt_reason
), d AS (
    INSERT INTO dispatch_queue (task_id, attempt, group_name, target_session_id, priority, reason)
    SELECT t.id, t.attempt, t.group_name, t.worker_session_id, t.priority, t.attempt_reason FROM t
    ON CONFLICT (task_id) DO UPDATE
    SET attempt = excluded.attempt, target_session_id = excluded.target_session_id,
        available_at = now(), reason = excluded.reason, created_at = now()
), notified AS (
    -- One NOTIFY per statement naming the sessions that got work ("*" = everyone
    -- when the list would not fit a payload: notify.ClaimPayloadMax; channel notify.ChannelClaim).
    SELECT pg_notify('baton_claim', CASE WHEN length(ids) > @claim_payload_max::int THEN '*' ELSE ids END)
    FROM (SELECT string_agg(DISTINCT worker_session_id::text, ',') AS ids FROM t) AS s
    WHERE ids IS NOT NULL
)
SELECT t.id, t.attempt, t.worker_session_id::bigint AS worker_session_id
FROM t CROSS JOIN (SELECT count(*) FROM notified) AS n;
