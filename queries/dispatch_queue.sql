-- Groups with a task waiting for a worker: one index probe per group (worker_groups
-- is small), never a scan of the backlog.
-- name: DispatchListWaitingGroups :many
SELECT g.name FROM worker_groups g
WHERE EXISTS (SELECT 1 FROM dispatch_queue d
              WHERE d.group_name = g.name AND d.target_session_id IS NULL AND d.available_at <= now())
ORDER BY g.name;

-- Queue order: priority, then task id (submission order). Neither changes when a
-- task is failed over or retried, so failed-over work keeps its place in the
-- backlog. Index dispatch_queue_waiting (group_name, priority DESC, task_id).
-- name: DispatchLockWaiting :many
SELECT task_id FROM dispatch_queue
WHERE group_name = @group_name AND target_session_id IS NULL AND available_at <= now()
ORDER BY priority DESC, task_id
LIMIT @max_tasks
FOR UPDATE SKIP LOCKED;

-- Points waiting tasks at chosen sessions: bumps the attempt (the fencing epoch),
-- targets the dispatch row and opens the attempt's history row. Every write
-- re-checks that the task is still queued and its row still untargeted.
-- name: DispatchAssign :many
WITH m AS (
    SELECT unnest(@task_ids::bigint[]) AS task_id, unnest(@session_ids::bigint[]) AS session_id
), t AS (
    UPDATE tasks
    SET state = 'dispatched', attempt = tasks.attempt + 1, worker_session_id = m.session_id,
        dispatched_at = now(), started_at = NULL
    FROM m
    WHERE tasks.id = m.task_id
      AND tasks.state = 'queued'
      AND EXISTS (SELECT 1 FROM dispatch_queue q WHERE q.task_id = m.task_id AND q.target_session_id IS NULL)
    RETURNING tasks.id, tasks.attempt, tasks.worker_session_id
), d AS (
    UPDATE dispatch_queue
    SET target_session_id = t.worker_session_id, attempt = t.attempt
    FROM t
    WHERE dispatch_queue.task_id = t.id AND dispatch_queue.target_session_id IS NULL
    RETURNING dispatch_queue.task_id, dispatch_queue.reason
), a AS (
    INSERT INTO task_attempts (task_id, attempt, worker_session_id, reason)
    SELECT t.id, t.attempt, t.worker_session_id, d.reason FROM t JOIN d ON d.task_id = t.id
), notified AS (
    -- One NOTIFY per statement naming the sessions that got work ("*" = everyone
    -- when the list would not fit a payload: notify.ClaimPayloadMax; channel notify.ChannelClaim).
    SELECT pg_notify('baton_claim', CASE WHEN length(ids) > @claim_payload_max::int THEN '*' ELSE ids END)
    FROM (SELECT string_agg(DISTINCT worker_session_id::text, ',') AS ids FROM t) AS s
    WHERE ids IS NOT NULL
)
SELECT t.id, t.attempt, t.worker_session_id::bigint AS worker_session_id
FROM t CROSS JOIN (SELECT count(*) FROM notified) AS n;
