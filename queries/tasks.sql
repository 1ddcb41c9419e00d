-- Batch submit: one statement (one round trip, its own transaction) for many
-- tasks. Payloads travel as text and are cast to jsonb so a malformed one fails the
-- whole batch. One NOTIFY per group wakes its workers (payload "g:<group>", as
-- NotifyQueued), which claim the new tasks directly; an unknown group fails the
-- foreign key.
-- name: TaskSubmitMany :many
WITH t AS (
    INSERT INTO tasks (group_name, kind, payload, priority, max_retries, timeout_ms)
    SELECT unnest(@group_names::text[]), unnest(@kinds::text[]), unnest(@payloads::text[])::jsonb,
           unnest(@priorities::int[]), unnest(@max_retries::int[]), unnest(@timeouts_ms::bigint[])
    RETURNING id, group_name, priority
), notified AS (
    SELECT pg_notify('baton_claim', 'g:' || g) FROM (SELECT DISTINCT group_name AS g FROM t) AS s
)
INSERT INTO dispatch_queue (task_id, attempt, group_name, priority, reason)
SELECT t.id, 0, t.group_name, t.priority, 'submit' FROM t CROSS JOIN (SELECT count(*) FROM notified) AS n
RETURNING task_id;

-- A worker claims what was dispatched to it: delete its dispatch rows and move the
-- matching attempts to running. Dispatch row and task row are locked together with
-- SKIP LOCKED, so a claim never waits on a task a failover holds (no lock cycle);
-- the task update re-checks the fencing token and that the session is still alive.
-- name: TaskClaim :many
WITH q AS (
    SELECT d.id
    FROM dispatch_queue d
    JOIN tasks tk ON tk.id = d.task_id AND tk.attempt = d.attempt
                 AND tk.worker_session_id = @session_id::bigint AND tk.state = 'dispatched'
    WHERE d.target_session_id = @session_id::bigint
      AND EXISTS (SELECT 1 FROM worker_sessions s WHERE s.id = @session_id AND s.state = 'alive')
    ORDER BY d.priority DESC, d.id
    LIMIT @max_tasks
    FOR UPDATE OF d, tk SKIP LOCKED
), del AS (
    DELETE FROM dispatch_queue d USING q WHERE d.id = q.id
    RETURNING d.task_id, d.attempt
), t AS (
    UPDATE tasks
    SET state = 'running', started_at = now()
    FROM del
    WHERE tasks.id = del.task_id
      -- Not an index condition: each row probes the primary key (see TaskFinish).
      AND (tasks.attempt = del.attempt AND tasks.worker_session_id = @session_id AND tasks.state = 'dispatched') IS TRUE
    RETURNING tasks.id, tasks.kind, tasks.payload, tasks.attempt, tasks.timeout_ms,
              tasks.retries, tasks.max_retries, tasks.priority
), a AS (
    UPDATE task_attempts
    SET started_at = now()
    FROM t
    WHERE task_attempts.task_id = t.id AND task_attempts.attempt = t.attempt
)
SELECT t.id, t.kind, t.payload, t.attempt, t.timeout_ms, t.retries, t.max_retries, t.priority
FROM t ORDER BY t.priority DESC, t.id;

-- A worker claims waiting tasks of its group directly from the queue, in queue
-- order (index dispatch_queue_waiting), without a master's hop: deletes their
-- untargeted dispatch rows, bumps each task's attempt (the fencing epoch) and starts
-- it, and opens the attempt's history row. The session row is locked FOR SHARE
-- first: a failover or drain marking it dead or draining (an UPDATE of that row)
-- waits for the claim to commit and then sees its tasks, and a claim that comes
-- after such an UPDATE re-reads the row and claims nothing. Dispatch and task rows
-- are locked together with SKIP LOCKED (a master's dispatcher or a cancel holding
-- either is skipped; no lock cycle), and the task update re-checks that the task is
-- still queued.
-- name: TaskClaimQueued :many
WITH s AS MATERIALIZED (
    SELECT id FROM worker_sessions WHERE id = @session_id::bigint AND state = 'alive' FOR SHARE
), q AS MATERIALIZED (
    SELECT d.id
    FROM dispatch_queue d
    JOIN tasks tk ON tk.id = d.task_id AND tk.state = 'queued'
    WHERE d.group_name = @group_name
      AND d.target_session_id IS NULL
      AND d.available_at <= now()
      AND EXISTS (SELECT 1 FROM s)
    ORDER BY d.priority DESC, d.task_id
    LIMIT @max_tasks
    FOR UPDATE OF d, tk SKIP LOCKED
), del AS (
    DELETE FROM dispatch_queue d USING q WHERE d.id = q.id AND d.target_session_id IS NULL
    RETURNING d.task_id, d.reason
), t AS (
    UPDATE tasks
    SET state = 'running', attempt = tasks.attempt + 1, worker_session_id = (SELECT id FROM s),
        dispatched_at = now(), started_at = now()
    FROM del
    WHERE tasks.id = del.task_id
      AND tasks.state = 'queued'
    RETURNING tasks.id, tasks.kind, tasks.payload, tasks.attempt, tasks.timeout_ms,
              tasks.retries, tasks.max_retries, tasks.priority, del.reason
), a AS (
    INSERT INTO task_attempts (task_id, attempt, worker_session_id, reason, started_at)
    SELECT t.id, t.attempt, @session_id, t.reason, now() FROM t
)
SELECT t.id, t.kind, t.payload, t.attempt, t.timeout_ms, t.retries, t.max_retries, t.priority
FROM t ORDER BY t.priority DESC, t.id;

-- Fenced batch completion, one statement (its own transaction). A row changes only if (id, attempt, session) still
-- names the running attempt; rows not returned were superseded. A failed or timed-out
-- task with retries left goes back to the queue with the given delay.
-- name: TaskFinish :many
WITH r AS (
    SELECT unnest(@ids::bigint[]) AS id, unnest(@attempts::int[]) AS attempt,
           unnest(@session_ids::bigint[]) AS session_id, unnest(@outcomes::text[]) AS outcome,
           unnest(@exit_codes::int[]) AS exit_code, unnest(@errors::text[]) AS error,
           unnest(@outputs::text[]) AS output, unnest(@retry_delays_ms::bigint[]) AS retry_delay_ms
), t AS (
    UPDATE tasks
    SET state = CASE WHEN r.outcome IN ('failed', 'timed_out') AND tasks.retries < tasks.max_retries
                     THEN 'queued' ELSE r.outcome END,
        retries = tasks.retries + CASE WHEN r.outcome IN ('failed', 'timed_out') AND tasks.retries < tasks.max_retries
                                       THEN 1 ELSE 0 END,
        worker_session_id = NULL,
        finished_at = CASE WHEN r.outcome IN ('failed', 'timed_out') AND tasks.retries < tasks.max_retries
                           THEN NULL ELSE now() END,
        exit_code = nullif(r.exit_code, @no_exit_code::int),
        output = r.output,
        last_error = r.error
    FROM r
    WHERE tasks.id = r.id
      -- The fencing re-check, written so it cannot be an index condition: each
      -- result probes the primary key. (With "state = 'running'" indexable, a stale
      -- estimate of one running task made the planner scan every running task per
      -- result: quadratic in the batch.)
      AND (tasks.attempt = r.attempt AND tasks.worker_session_id = r.session_id AND tasks.state = 'running') IS TRUE
    RETURNING tasks.id, tasks.attempt, tasks.state, tasks.group_name, tasks.priority
), a AS (
    UPDATE task_attempts
    SET outcome = r.outcome, finished_at = now(), exit_code = nullif(r.exit_code, @no_exit_code::int), error = r.error
    FROM r JOIN t ON t.id = r.id AND t.attempt = r.attempt
    WHERE task_attempts.task_id = r.id AND task_attempts.attempt = r.attempt
), q AS (
    INSERT INTO dispatch_queue (task_id, attempt, group_name, priority, available_at, reason)
    SELECT t.id, t.attempt, t.group_name, t.priority,
           now() + r.retry_delay_ms * interval '1 millisecond', 'retry'
    FROM t JOIN r ON r.id = t.id AND r.attempt = t.attempt
    WHERE t.state = 'queued'
)
-- No NOTIFY: the worker that freed the slots claims again itself, and a retry is
-- claimed by its group's workers once available (their poll).
SELECT t.id, t.attempt, t.state FROM t;

-- Records refused results: the attempt was superseded (failover, timeout) before its
-- worker wrote. History is never rewritten: an attempt a master already closed
-- (timed_out, failed_over) keeps its outcome and error, and the refusal goes to
-- refused_outcome/refused_at; an attempt still open is closed as fenced. A second
-- refusal of the same attempt keeps the first.
-- name: TaskAttemptMarkFenced :execrows
UPDATE task_attempts a
SET outcome = coalesce(a.outcome, 'fenced'),
    finished_at = coalesce(a.finished_at, now()),
    error = CASE WHEN a.outcome IS NULL THEN 'result refused (' || r.outcome || '): attempt superseded' ELSE a.error END,
    refused_outcome = r.outcome,
    refused_at = now()
FROM (SELECT unnest(@ids::bigint[]) AS id, unnest(@attempts::int[]) AS attempt,
             unnest(@session_ids::bigint[]) AS session_id, unnest(@outcomes::text[]) AS outcome) AS r
WHERE a.task_id = r.id
  AND a.attempt = r.attempt
  AND a.worker_session_id = r.session_id
  AND a.refused_at IS NULL
  AND (a.outcome IS NULL OR a.outcome IN ('failed_over', 'timed_out'));

-- Running attempts past their timeout plus a grace period (Postgres time): the
-- worker should have killed and reported them; the master records them.
-- name: TaskListTimedOut :many
SELECT id, attempt, worker_session_id::bigint AS worker_session_id, retries
FROM tasks
WHERE state = 'running'
  AND timeout_ms > 0
  AND started_at + (timeout_ms + @grace_ms::bigint) * interval '1 millisecond' < coalesce(sqlc.narg('now')::timestamptz, now())
ORDER BY id
LIMIT @max_tasks
FOR UPDATE SKIP LOCKED;

-- name: TaskGet :one
SELECT * FROM tasks WHERE id = @id;

-- name: TaskList :many
SELECT * FROM tasks
WHERE (sqlc.narg('state')::text IS NULL OR state = sqlc.narg('state'))
  AND (sqlc.narg('group_name')::text IS NULL OR group_name = sqlc.narg('group_name'))
ORDER BY id DESC
LIMIT @max_rows;

-- name: TaskListRunningOnSession :many
SELECT id, attempt FROM tasks
WHERE worker_session_id = @session_id::bigint AND state = 'running'
ORDER BY id;

-- Retention: finished tasks older than the cutoff, oldest first, in batches (index
-- tasks_finished); their attempts go with them (ON DELETE CASCADE).
-- name: TaskPruneFinished :execrows
DELETE FROM tasks
WHERE id = ANY (ARRAY(
    SELECT t.id FROM tasks t
    WHERE t.finished_at < coalesce(sqlc.narg('now')::timestamptz, now()) - make_interval(secs => @retention_s::float8)
    ORDER BY t.finished_at
    LIMIT @max_rows
    FOR UPDATE SKIP LOCKED))
  AND finished_at < coalesce(sqlc.narg('now')::timestamptz, now()) - make_interval(secs => @retention_s::float8);

-- Client.List: newest first, optional filters, keyset paging on id.
-- name: TaskListPage :many
SELECT * FROM tasks
WHERE (sqlc.narg('state')::text IS NULL OR state = sqlc.narg('state'))
  AND (sqlc.narg('group_name')::text IS NULL OR group_name = sqlc.narg('group_name'))
  AND (sqlc.narg('kind')::text IS NULL OR kind = sqlc.narg('kind'))
  AND (sqlc.narg('before_id')::bigint IS NULL OR id < sqlc.narg('before_id'))
ORDER BY id DESC
LIMIT @max_rows;

-- Client.Cancel, first statement: lock the task's dispatch row before the task row
-- (the order a master's dispatch takes), so cancel and dispatch cannot deadlock.
-- name: TaskCancelLockDispatch :many
SELECT id FROM dispatch_queue WHERE task_id = @id FOR UPDATE;

-- Client.Cancel: a task that is not finished becomes canceled at once. Its open
-- attempt is closed canceled and its dispatch row deleted, in one statement that
-- re-checks the state; a worker still running the attempt is fenced when it
-- reports (TaskFinish requires state running), and its result is dropped.
-- name: TaskCancel :one
WITH t AS (
    UPDATE tasks
    SET state = 'canceled', worker_session_id = NULL, finished_at = now(), last_error = @reason::text
    WHERE tasks.id = @id AND tasks.state IN ('queued', 'dispatched', 'running')
    RETURNING tasks.id, tasks.attempt
), a AS (
    UPDATE task_attempts
    SET outcome = 'canceled', finished_at = now(), error = @reason::text
    FROM t
    WHERE task_attempts.task_id = t.id AND task_attempts.attempt = t.attempt AND task_attempts.outcome IS NULL
), d AS (
    DELETE FROM dispatch_queue USING t WHERE dispatch_queue.task_id = t.id
), notified AS (
    -- A slot may be free: wake the dispatchers (joined below so it runs only on a cancel).
    SELECT pg_notify('baton_dispatch', '') FROM (SELECT 1 FROM t LIMIT 1) AS any_row
)
SELECT t.id, t.attempt FROM t CROSS JOIN (SELECT count(*) FROM notified) AS n;

-- A handler's permanent failure (baton.Permanent): the running attempt's failure
-- becomes final by leaving no retry. Fenced like every worker write.
-- name: TaskExhaustRetries :execrows
UPDATE tasks SET max_retries = retries
WHERE id = @id AND attempt = @attempt AND worker_session_id = @session_id::bigint AND state = 'running';

-- name: TaskRetryState :one
SELECT retries, max_retries FROM tasks WHERE id = @id;
