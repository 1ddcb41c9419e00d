-- name: FailoverEventInsert :exec
INSERT INTO failover_events (kind, session_id, group_name, detected_by, deadline, crash_detected)
VALUES (@kind, @session_id, @group_name, @detected_by, @deadline, sqlc.narg('crash_detected'))
ON CONFLICT (kind, session_id) DO NOTHING;

-- name: FailoverEventGet :one
SELECT * FROM failover_events WHERE kind = @kind AND session_id = @session_id;

-- name: FailoverEventRecordPass :execrows
UPDATE failover_events
SET tasks_reassigned = tasks_reassigned + @reassigned,
    tasks_queued = tasks_queued + @queued,
    passes = passes + 1,
    finished_at = CASE WHEN @finished::bool THEN clock_timestamp() ELSE NULL END
WHERE id = @id AND finished_at IS NULL;

-- name: FailoverEventList :many
SELECT * FROM failover_events
WHERE (sqlc.narg('kind')::text IS NULL OR kind = sqlc.narg('kind'))
ORDER BY id DESC
LIMIT @max_rows;

-- A dead session's active tasks dispatched before the deadline, one batch at a time;
-- rows a concurrent completion holds are skipped and left to the next pass.
-- name: FailoverLockTasks :many
SELECT id, attempt, state, running_failovers FROM tasks
WHERE worker_session_id = @session_id
  AND state IN ('dispatched', 'running')
  AND dispatched_at <= @deadline
ORDER BY id
LIMIT @max_tasks
FOR UPDATE SKIP LOCKED;

-- Moves locked tasks off a dead session: to the chosen healthy session (attempt+1,
-- dispatched), with target 0 back to the queue, or with target -1 (a poison task: it
-- was running and @max_failovers failovers already took it away while running) to
-- failed.
-- Re-checks the dead session, the old attempt and the poison rule; closes the old
-- attempt as failed_over in task_attempt_log (from the task row as it was: prev,
-- read by primary key per task before the update);
-- replaces any undelivered dispatch row with one for the new attempt. A queued
-- task keeps its place: the queue is ordered by task id.
-- name: FailoverMoveTasks :many
WITH m AS (
    SELECT unnest(@task_ids::bigint[]) AS task_id, unnest(@old_attempts::int[]) AS old_attempt,
           unnest(@targets::bigint[]) AS target
), prev AS MATERIALIZED (
    SELECT tk.id, tk.attempt_reason, tk.dispatched_at, tk.started_at
    FROM m JOIN tasks tk ON tk.id = m.task_id
), t AS (
    UPDATE tasks
    SET state = CASE WHEN m.target = -1 THEN 'failed' WHEN m.target = 0 THEN 'queued' ELSE 'dispatched' END,
        attempt = CASE WHEN m.target > 0 THEN tasks.attempt + 1 ELSE tasks.attempt END,
        worker_session_id = CASE WHEN m.target > 0 THEN m.target END,
        attempt_session_id = CASE WHEN m.target > 0 THEN m.target ELSE tasks.attempt_session_id END,
        attempt_reason = CASE WHEN m.target > 0 THEN 'failover' ELSE tasks.attempt_reason END,
        queued_reason = CASE WHEN m.target = 0 THEN 'failover' ELSE tasks.queued_reason END,
        available_at = CASE WHEN m.target = 0 THEN now() ELSE tasks.available_at END,
        dispatched_at = CASE WHEN m.target > 0 THEN now() END,
        started_at = NULL,
        finished_at = CASE WHEN m.target = -1 THEN now() END,
        exit_code = CASE WHEN m.target = -1 THEN NULL ELSE tasks.exit_code END,
        failover_count = tasks.failover_count + CASE WHEN m.target = -1 THEN 0 ELSE 1 END,
        running_failovers = tasks.running_failovers
            + CASE WHEN m.target <> -1 AND tasks.state = 'running' AND @dead_state::text = 'dead' THEN 1 ELSE 0 END,
        last_error = CASE WHEN m.target = -1
            THEN 'failed over ' || tasks.running_failovers || ' times (its workers died while running it), the limit is '
                 || @max_failovers::int || '; worker session ' || @dead_session_id::bigint || ' is ' || @dead_state::text
                 || ' too: not failed over again'
            ELSE 'failed over: worker session ' || @dead_session_id::bigint || ' is ' || @dead_state::text END
    FROM m
    WHERE tasks.id = m.task_id
      AND tasks.attempt = m.old_attempt
      AND tasks.worker_session_id = @dead_session_id
      AND tasks.state IN ('dispatched', 'running')
      AND (m.target <> -1 OR (tasks.state = 'running' AND tasks.running_failovers >= @max_failovers::int))
    RETURNING tasks.id, tasks.attempt, tasks.worker_session_id, tasks.group_name, tasks.priority, tasks.state,
              tasks.notify_finish
), closed AS (
    INSERT INTO task_attempt_log (task_id, attempt, worker_session_id, reason, dispatched_at, started_at,
                                  finished_at, outcome, error)
    SELECT t.id, m.old_attempt, @dead_session_id::bigint, p.attempt_reason, coalesce(p.dispatched_at, now()), p.started_at,
           now(), 'failed_over', 'worker session ' || @dead_session_id::bigint || ' is ' || @dead_state::text
    FROM t JOIN m ON m.task_id = t.id JOIN prev p ON p.id = t.id
    ON CONFLICT (task_id, attempt) DO NOTHING
), gone AS (
    DELETE FROM dispatch_queue USING t WHERE dispatch_queue.task_id = t.id AND t.state <> 'dispatched'
), dq AS (
    INSERT INTO dispatch_queue (task_id, attempt, group_name, target_session_id, priority, reason)
    SELECT t.id, t.attempt, t.group_name, t.worker_session_id, t.priority, 'failover' FROM t WHERE t.state = 'dispatched'
    ON CONFLICT (task_id) DO UPDATE
    SET attempt = excluded.attempt, target_session_id = excluded.target_session_id,
        available_at = now(), reason = 'failover', created_at = now()
), notified AS (
    -- Poison tasks ended (Client.Wait).
    SELECT pg_notify('baton_finished', CASE WHEN count(*) > 500 THEN '*' ELSE string_agg(t.id::text, ',') END)
    FROM t WHERE t.state = 'failed' AND t.notify_finish HAVING count(*) > 0
)
SELECT t.id, t.attempt, t.worker_session_id, t.state FROM t CROSS JOIN (SELECT count(*) FROM notified) AS n;

-- name: FailoverCountRemaining :one
SELECT count(*) FROM tasks
WHERE worker_session_id = @session_id
  AND state IN ('dispatched', 'running')
  AND dispatched_at <= @deadline;

-- A dead master's marker is finished at once: masters own no tasks (yet).
-- name: FailoverEventFinishMaster :execrows
UPDATE failover_events SET finished_at = clock_timestamp(), passes = 1
WHERE kind = 'master' AND session_id = @session_id AND finished_at IS NULL;

-- Retention: finished failover events older than the cutoff, oldest first, in batches
-- (index failover_events_finished). Unfinished events are never pruned.
-- name: FailoverEventPrune :execrows
DELETE FROM failover_events
WHERE id = ANY (ARRAY(
    SELECT f.id FROM failover_events f
    WHERE f.finished_at < coalesce(sqlc.narg('now')::timestamptz, now()) - make_interval(secs => @retention_s::float8)
    ORDER BY f.finished_at
    LIMIT @max_rows
    FOR UPDATE SKIP LOCKED))
  AND finished_at < coalesce(sqlc.narg('now')::timestamptz, now()) - make_interval(secs => @retention_s::float8);
