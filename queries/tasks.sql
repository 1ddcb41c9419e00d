-- Batch submit: one statement (one round trip, its own transaction) for many
-- tasks: each is a task row in state queued: the queue is the index tasks_queue.
-- Payloads travel as text and are cast to jsonb so a malformed one fails the whole
-- batch. A retry backoff of -1 takes the group's. The caller then wakes the
-- group's workers with NotifyQueued, after the commit and in a transaction of its
-- own (submit.Wake, or a client's submit.Waker); an unknown group fails the
-- foreign key. Ids come back in
-- submission order (identity values follow the insert order).
-- name: TaskSubmitMany :many
WITH s AS (
    SELECT unnest(@group_names::text[]) AS group_name, unnest(@kinds::text[]) AS kind,
           unnest(@payloads::text[]) AS payload, unnest(@priorities::int[]) AS priority,
           unnest(@max_retries::int[]) AS max_retries, unnest(@timeouts_ms::bigint[]) AS timeout_ms,
           unnest(@retry_bases_ms::bigint[]) AS retry_base_ms, unnest(@retry_maxes_ms::bigint[]) AS retry_max_ms,
           unnest(@run_ats_us::bigint[]) AS run_at_us, unnest(@delays_ms::bigint[]) AS delay_ms,
           unnest(@tags_json::text[]) AS tags_json
), a AS (
    SELECT s.group_name, s.kind, s.payload, s.priority, s.max_retries, s.timeout_ms, s.retry_base_ms, s.retry_max_ms, s.tags_json,
           CASE WHEN s.run_at_us > 0 THEN 'epoch'::timestamptz + s.run_at_us * interval '1 microsecond'
                ELSE now() + s.delay_ms * interval '1 millisecond' END AS available_at
    FROM s
), t AS (
    INSERT INTO tasks (group_name, kind, payload, priority, max_retries, timeout_ms, retry_base_ms, retry_max_ms,
                       state, available_at, tags)
    SELECT a.group_name, a.kind, a.payload::jsonb, a.priority, a.max_retries, a.timeout_ms,
           CASE WHEN a.retry_base_ms >= 0 THEN a.retry_base_ms
                ELSE coalesce((SELECT g.retry_base_ms FROM worker_groups g WHERE g.name = a.group_name), 1000) END,
           CASE WHEN a.retry_max_ms >= 0 THEN a.retry_max_ms
                ELSE coalesce((SELECT g.retry_max_ms FROM worker_groups g WHERE g.name = a.group_name), 300000) END,
           CASE WHEN a.available_at > now() THEN 'scheduled' ELSE 'queued' END, a.available_at,
           ARRAY(SELECT jsonb_array_elements_text(a.tags_json::jsonb))
    FROM a
    RETURNING id
)
SELECT t.id FROM t ORDER BY t.id;

-- TaskSubmitMany for one task, with scalar parameters: Postgres plans it once
-- (generic plan) where the array form is planned on every call, which costs
-- more than the insert. It also stores a unique key (TaskSpec.Unique): a task
-- whose key is taken in its scope is not inserted (no row returned; the unique
-- indexes decide, waiting for a concurrent insert of the same key to commit or
-- roll back), and TaskFindUnique finds the holder.
-- name: TaskSubmitOne :one
INSERT INTO tasks (group_name, kind, payload, priority, max_retries, timeout_ms, retry_base_ms, retry_max_ms,
                   state, available_at, unique_key, unique_scope, unique_bucket, tags)
SELECT x.group_name, x.kind, x.payload::jsonb, x.priority, x.max_retries, x.timeout_ms,
       CASE WHEN x.retry_base_ms >= 0 THEN x.retry_base_ms
            ELSE coalesce((SELECT g.retry_base_ms FROM worker_groups g WHERE g.name = x.group_name), 1000) END,
       CASE WHEN x.retry_max_ms >= 0 THEN x.retry_max_ms
            ELSE coalesce((SELECT g.retry_max_ms FROM worker_groups g WHERE g.name = x.group_name), 300000) END,
       CASE WHEN w.run_at > now() THEN 'scheduled' ELSE 'queued' END, w.run_at,
       nullif(x.unique_key, ''), nullif(x.unique_scope, ''),
       CASE x.unique_scope WHEN 'forever' THEN '0001-01-01 00:00:00+00'::timestamptz
                           WHEN 'period' THEN 'epoch'::timestamptz + floor(extract(epoch FROM now()) * 1000 / x.unique_period_ms)
                                                                   * x.unique_period_ms * interval '1 millisecond' END,
       ARRAY(SELECT jsonb_array_elements_text(x.tags_json::jsonb))
FROM (SELECT @group_name::text AS group_name, @kind::text AS kind, @payload::text AS payload, @priority::int AS priority,
             @max_retries::int AS max_retries, @timeout_ms::bigint AS timeout_ms,
             @retry_base_ms::bigint AS retry_base_ms, @retry_max_ms::bigint AS retry_max_ms,
             @run_at_us::bigint AS run_at_us, @delay_ms::bigint AS delay_ms,
             @unique_key::text AS unique_key, @unique_scope::text AS unique_scope, @unique_period_ms::bigint AS unique_period_ms,
             @tags_json::text AS tags_json) AS x
CROSS JOIN LATERAL (SELECT CASE WHEN x.run_at_us > 0 THEN 'epoch'::timestamptz + x.run_at_us * interval '1 microsecond'
                                ELSE now() + x.delay_ms * interval '1 millisecond' END AS run_at) AS w
ON CONFLICT DO NOTHING
RETURNING id;

-- The task holding a unique key in its scope (after TaskSubmitOne found it
-- taken): for scope period, in the period now() falls in.
-- name: TaskFindUnique :many
SELECT t.id FROM tasks t,
     (SELECT @kind::text AS kind, @unique_key::text AS unique_key, @unique_scope::text AS scope,
             @unique_period_ms::bigint AS period_ms) AS x
WHERE t.kind = x.kind AND t.unique_key = x.unique_key
  AND ((x.scope = 'active' AND t.unique_scope = 'active' AND t.state IN ('scheduled', 'queued', 'dispatched', 'running'))
       OR (x.scope = 'forever' AND t.unique_bucket = '0001-01-01 00:00:00+00'::timestamptz)
       OR (x.scope = 'period' AND t.unique_bucket = 'epoch'::timestamptz + floor(extract(epoch FROM now()) * 1000 / x.period_ms)
                                                                         * x.period_ms * interval '1 millisecond'))
LIMIT 1;

-- A worker's claim, one statement (its own transaction): the tasks a master
-- placed on this session (dispatched: failover, or the dispatcher's fallback) and
-- the waiting tasks of its group (queued), together, in one order — priority, then
-- task id (submission order) — so claim order and dispatch order agree: a task a
-- master placed here never starts before an older task of the same priority that
-- waits in the queue or was placed here later (a failover's), and vice versa.
--
-- Dispatched: its dispatch row and task row are locked together with SKIP LOCKED,
-- so a claim never waits on a task a failover holds (no lock cycle); the row is
-- deleted and the attempt the master opened starts (the update re-checks the
-- fencing token). Queued: one update per task bumps its attempt (the fencing
-- epoch) and starts it; the attempt lives in the task row until it is closed; the
-- update re-checks that the task is still queued. Index tasks_queue.
-- Scheduled (TaskSpec.RunAt): the ones whose time has come, from tasks_scheduled
-- (the ones not yet due are never read), earliest first, then id; claimed like
-- queued ones, in the same order.
--
-- Rows are locked first, with SKIP LOCKED (a master's dispatcher or a cancel
-- holding one is skipped), up to max_tasks of each kind; the best max_tasks of
-- them are claimed. Only if there are any is the session row (alive, of the group)
-- locked FOR SHARE, so
-- a claim that finds nothing writes nothing (no transaction id, no WAL, no commit
-- to flush). A failover or drain marking the session dead or draining (an UPDATE
-- of that row) waits for a claim holding it to commit and then sees its tasks; a
-- claim that comes after such an UPDATE re-reads the row and claims nothing.
-- Queued rows locked but not claimed (only when dispatched ones were claimed
-- instead) are skipped by other workers' claims for the statement's duration:
-- this worker's slots are full then and it claims again when one frees, and the
-- masters' dispatcher places what still waits after its MinWait.
-- name: TaskClaimNext :many
WITH dq AS MATERIALIZED (
    SELECT d.id AS dispatch_id, tk.id, tk.priority
    FROM dispatch_queue d
    JOIN tasks tk ON tk.id = d.task_id AND tk.attempt = d.attempt
                 AND tk.worker_session_id = @session_id::bigint AND tk.state = 'dispatched'
    WHERE d.target_session_id = @session_id::bigint
    ORDER BY tk.priority DESC, tk.id
    LIMIT @max_tasks
    FOR UPDATE OF d, tk SKIP LOCKED
), qq AS MATERIALIZED (
    SELECT NULL::bigint AS dispatch_id, tk.id, tk.priority
    FROM tasks tk
    WHERE tk.group_name = @group_name
      AND tk.state = 'queued'
      AND tk.available_at <= now()
      -- A paused group (operator, API) claims no queued task; one primary-key probe.
      AND NOT EXISTS (SELECT 1 FROM worker_groups g WHERE g.name = @group_name AND g.paused)
    ORDER BY tk.priority DESC, tk.id
    LIMIT @max_tasks
    FOR UPDATE SKIP LOCKED
), qs AS MATERIALIZED (
    SELECT NULL::bigint AS dispatch_id, tk.id, tk.priority
    FROM tasks tk
    WHERE tk.group_name = @group_name
      AND tk.state = 'scheduled'
      AND tk.available_at <= now()
    ORDER BY tk.available_at, tk.id
    LIMIT @max_tasks
    FOR UPDATE SKIP LOCKED
), pick AS MATERIALIZED (
    SELECT u.dispatch_id, u.id, u.priority
    FROM (SELECT * FROM dq UNION ALL SELECT * FROM qq UNION ALL SELECT * FROM qs) AS u
    ORDER BY u.priority DESC, u.id
    LIMIT @max_tasks
), s AS MATERIALIZED (
    SELECT id FROM worker_sessions
    WHERE id = @session_id::bigint AND state = 'alive' AND EXISTS (SELECT 1 FROM pick)
      -- The session serves the group it claims queued tasks of (a worker serving
      -- several groups has a session per group): never a task onto another
      -- group's session. Empty: dispatched tasks only (the master chose them).
      AND (group_name = @group_name OR @group_name = '')
    FOR SHARE
), del AS (
    -- By primary key (an array, so the planner cannot hash-join the whole table).
    DELETE FROM dispatch_queue d
    WHERE d.id = ANY (ARRAY(SELECT pick.dispatch_id FROM pick WHERE pick.dispatch_id IS NOT NULL))
      AND EXISTS (SELECT 1 FROM s)
    RETURNING d.task_id, d.attempt
), td AS (
    UPDATE tasks
    SET state = 'running', started_at = now()
    FROM del
    WHERE tasks.id = del.task_id
      -- Not an index condition: each row probes the primary key (see TaskFinish).
      AND (tasks.attempt = del.attempt AND tasks.worker_session_id = @session_id AND tasks.state = 'dispatched') IS TRUE
    RETURNING tasks.id, tasks.kind, tasks.payload, tasks.attempt, tasks.timeout_ms,
              tasks.retries, tasks.max_retries, tasks.priority
), tq AS (
    UPDATE tasks
    SET state = 'running', attempt = tasks.attempt + 1,
        worker_session_id = (SELECT id FROM s), attempt_session_id = (SELECT id FROM s),
        attempt_reason = tasks.queued_reason, dispatched_at = now(), started_at = now()
    FROM pick
    WHERE pick.dispatch_id IS NULL
      AND tasks.id = pick.id
      AND tasks.state IN ('queued', 'scheduled')
      AND EXISTS (SELECT 1 FROM s)
    RETURNING tasks.id, tasks.kind, tasks.payload, tasks.attempt, tasks.timeout_ms,
              tasks.retries, tasks.max_retries, tasks.priority
)
SELECT t.id, t.kind, t.payload, t.attempt, t.timeout_ms, t.retries, t.max_retries, t.priority
FROM (SELECT * FROM td UNION ALL SELECT * FROM tq) AS t
ORDER BY t.priority DESC, t.id;

-- Fenced batch completion, one statement (its own transaction). A row changes only
-- if (id, attempt, session) still names the running attempt; rows not returned
-- were superseded. A failed or timed-out task with retries left goes back to the
-- queue after its backoff (retry_base_ms·2^retries capped at retry_max_ms, ±20%);
-- a snoozed one after its snooze, without using a retry. An attempt that ends
-- the task stays described by the task row alone (one write per task); one that
-- requeues it is closed in task_attempt_log, as is every attempt when log_all
-- (a master recording a timeout: a late write of the worker is then recorded
-- against that row). One NOTIFY lists the ended tasks a Client.Wait watches
-- (notify_finish); none is sent otherwise, since Postgres commits notifying
-- transactions one at a time.
-- name: TaskFinish :many
WITH r AS (
    SELECT unnest(@ids::bigint[]) AS id, unnest(@attempts::int[]) AS attempt,
           unnest(@session_ids::bigint[]) AS session_id, unnest(@outcomes::text[]) AS outcome,
           unnest(@exit_codes::int[]) AS exit_code, unnest(@errors::text[]) AS error,
           unnest(@outputs::text[]) AS output, unnest(@snoozes_ms::bigint[]) AS snooze_ms,
           unnest(@step_outputs::text[]) AS step_outputs
), t AS (
    UPDATE tasks
    SET state = CASE WHEN r.outcome = 'snoozed' THEN 'queued'
                     WHEN r.outcome IN ('failed', 'timed_out') AND tasks.retries < tasks.max_retries THEN 'queued'
                     ELSE r.outcome END,
        retries = tasks.retries + CASE WHEN r.outcome IN ('failed', 'timed_out') AND tasks.retries < tasks.max_retries
                                       THEN 1 ELSE 0 END,
        worker_session_id = NULL,
        finished_at = CASE WHEN r.outcome = 'snoozed' THEN NULL
                           WHEN r.outcome IN ('failed', 'timed_out') AND tasks.retries < tasks.max_retries THEN NULL
                           ELSE now() END,
        available_at = CASE WHEN r.outcome = 'snoozed' THEN now() + r.snooze_ms * interval '1 millisecond'
                            WHEN r.outcome IN ('failed', 'timed_out') AND tasks.retries < tasks.max_retries
                            THEN now() + least(tasks.retry_max_ms::float8, tasks.retry_base_ms * power(2::float8, tasks.retries))
                                         * (0.8 + 0.4 * random()) * interval '1 millisecond'
                            ELSE tasks.available_at END,
        queued_reason = CASE WHEN r.outcome = 'snoozed' THEN 'snooze'
                             WHEN r.outcome IN ('failed', 'timed_out') AND tasks.retries < tasks.max_retries THEN 'retry'
                             ELSE tasks.queued_reason END,
        exit_code = nullif(r.exit_code, @no_exit_code::int),
        output = r.output,
        -- A shell step's $BATON_OUTPUT as a JSON object ('' none); the trigger
        -- tasks_workflow_steps_ended stores it as the step's outputs in this statement.
        step_outputs = CASE WHEN r.outcome = 'succeeded' THEN nullif(r.step_outputs, '')::jsonb END,
        last_error = r.error
    FROM r
    WHERE tasks.id = r.id
      -- The fencing re-check, written so it cannot be an index condition: each
      -- result probes the primary key. (With "state = 'running'" indexable, a stale
      -- estimate of one running task made the planner scan every running task per
      -- result: quadratic in the batch.)
      AND (tasks.attempt = r.attempt AND tasks.worker_session_id = r.session_id AND tasks.state = 'running') IS TRUE
    RETURNING tasks.id, tasks.attempt, tasks.state, tasks.attempt_session_id, tasks.attempt_reason,
              tasks.dispatched_at, tasks.started_at, tasks.exit_code, tasks.last_error, tasks.notify_finish
), a AS (
    INSERT INTO task_attempt_log (task_id, attempt, worker_session_id, reason, dispatched_at, started_at,
                                  finished_at, outcome, exit_code, error)
    SELECT t.id, t.attempt, t.attempt_session_id, t.attempt_reason, coalesce(t.dispatched_at, now()), t.started_at,
           now(), r.outcome, t.exit_code, t.last_error
    FROM t JOIN r ON r.id = t.id AND r.attempt = t.attempt
    WHERE t.state = 'queued' OR @log_all::bool
    ON CONFLICT (task_id, attempt) DO NOTHING
), notified AS (
    SELECT pg_notify('baton_finished', CASE WHEN length(ids) > @notify_payload_max::int THEN '*' ELSE ids END)
    FROM (SELECT string_agg(t.id::text, ',') AS ids FROM t WHERE t.state <> 'queued' AND t.notify_finish) AS s
    WHERE ids IS NOT NULL
)
-- No NOTIFY to claim: the worker that freed the slots claims again itself, and a
-- retry is claimed by its group's workers once available (their poll).
SELECT t.id, t.attempt, t.state FROM t CROSS JOIN (SELECT count(*) FROM notified) AS n;

-- Records refused results: the attempt was superseded (failover, timeout, cancel)
-- before its worker wrote, and whatever superseded it closed it in
-- task_attempt_log. History is never rewritten: the attempt keeps its outcome,
-- and the refusal goes to refused_outcome/refused_at. A second refusal of the same
-- attempt keeps the first. An attempt its own result closed (a retry or snooze
-- logs it as failed, timed_out or snoozed) records nothing: a refused write
-- there is the same batch delivered again (its commit reply was lost).
-- name: TaskAttemptMarkFenced :execrows
UPDATE task_attempt_log a
SET refused_outcome = r.outcome,
    refused_at = now()
FROM (SELECT unnest(@ids::bigint[]) AS id, unnest(@attempts::int[]) AS attempt,
             unnest(@session_ids::bigint[]) AS session_id, unnest(@outcomes::text[]) AS outcome) AS r
WHERE a.task_id = r.id
  AND a.attempt = r.attempt
  AND a.worker_session_id = r.session_id
  AND a.refused_at IS NULL
  AND a.outcome IN ('failed_over', 'timed_out', 'canceled');

-- Running attempts past their timeout plus a grace period (Postgres time): the
-- worker should have killed and reported them; the master records them.
-- name: TaskListTimedOut :many
SELECT id, attempt, worker_session_id::bigint AS worker_session_id
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

-- Of the attempts a worker runs (ids[i], attempts[i]), those whose task row no
-- longer names them running on its session: the task was canceled (state
-- canceled), or the attempt was superseded — timed out by a master, failed over,
-- or (rarely) already ended by this worker's own result. The worker stops them:
-- their work must not go on (claimer.Claimer polls this; NOTIFY baton_cancel
-- only wakes the poll early).
-- name: TaskListSuperseded :many
SELECT r.id::bigint AS id, r.attempt::int AS attempt, coalesce(t.state, '')::text AS state
FROM (SELECT unnest(@ids::bigint[]) AS id, unnest(@attempts::int[]) AS attempt) AS r
LEFT JOIN tasks t ON t.id = r.id
WHERE (t.state = 'running' AND t.attempt = r.attempt AND t.worker_session_id = @session_id::bigint) IS NOT TRUE
ORDER BY r.id;

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
-- Run it with custom plans (TxListPlanning first, in its transaction): a
-- generic plan cannot drop the unset filters, and scanned a million rows for a
-- group, a rare state or a deep page. The id bound is a range in any plan.
-- name: TaskListPage :many
SELECT * FROM tasks
WHERE (sqlc.narg('state')::text IS NULL OR state = sqlc.narg('state'))
  AND (sqlc.narg('group_name')::text IS NULL OR group_name = sqlc.narg('group_name'))
  AND (sqlc.narg('kind')::text IS NULL OR kind = sqlc.narg('kind'))
  AND id < coalesce(sqlc.narg('before_id')::bigint, 9223372036854775807)
  AND (sqlc.narg('tags')::text[] IS NULL OR (tags @> sqlc.narg('tags') AND tags <> '{}'))
ORDER BY id DESC
LIMIT @max_rows;

-- TaskListPage with a group: the same rows in the same order, read as one range
-- per state and merged, so a page costs a few index ranges however few of the
-- table's tasks the group holds (the primary key read backwards scanned the whole
-- table for a small group). Every branch orders by id + 0, an order only the
-- index it is meant to read can give (reading the primary key backwards and
-- filtering gives id's, and the planner takes that whenever it guesses the
-- group's rows dense: a whole-table read when they are old or the page deep):
--   - scheduled and the end states: tasks_group_state (group_name, state, (id + 0));
--   - dispatched and running: tasks_active_by_session (bounded by the slots);
--   - queued: tasks_queue (group_name, priority DESC, id), one range per
--     priority the group's queued tasks have (found by skipping from one to the
--     next, prio), each read backwards; the priority is bounded by a range, not
--     an equality, so that its order, not id's, is what the index must give.
-- Each branch carries its order as a column (k), so the branches are merged
-- (Merge Append) and read only as far as the page needs. The outer list names
-- every column of tasks so the rows stay db.Task: a column added to tasks and
-- not here makes sqlc give this query its own row type, and taskops stops
-- compiling. A state filter leaves one branch (the others are constant-false
-- under TxListPlanning's custom plans). Run it as TaskListPage, after
-- TxListPlanning.
-- name: TaskListPageByGroup :many
WITH RECURSIVE prio AS (
    (SELECT t.priority FROM tasks t
     WHERE t.state = 'queued' AND t.group_name = @group_name::text
       AND coalesce(sqlc.narg('state')::text, 'queued') = 'queued'
     ORDER BY t.priority DESC LIMIT 1)
    UNION ALL
    SELECT (SELECT t.priority FROM tasks t
            WHERE t.state = 'queued' AND t.group_name = @group_name::text AND t.priority < p.priority
            ORDER BY t.priority DESC LIMIT 1)
    FROM prio p WHERE p.priority IS NOT NULL
)
SELECT u.id, u.group_name, u.kind, u.payload, u.priority, u.state, u.attempt,
       u.worker_session_id, u.max_retries, u.retries, u.timeout_ms, u.failover_count,
       u.workflow_run_id, u.submitted_at, u.dispatched_at, u.started_at,
       u.finished_at, u.exit_code, u.output, u.last_error, u.running_failovers,
       u.available_at, u.queued_reason, u.attempt_reason, u.attempt_session_id,
       u.retry_base_ms, u.retry_max_ms, u.notify_finish, u.workflow_step,
       u.unique_key, u.unique_scope, u.unique_bucket, u.submitted_max_retries,
       u.tags, u.step_outputs, u.workflow_item
FROM (
    (SELECT *, id + 0 AS k FROM tasks
     WHERE group_name = @group_name::text AND state = 'scheduled' AND coalesce(sqlc.narg('state')::text, 'scheduled') = 'scheduled'
       AND id + 0 < coalesce(sqlc.narg('before_id')::bigint, 9223372036854775807)
       AND (sqlc.narg('kind')::text IS NULL OR kind = sqlc.narg('kind'))
       AND (sqlc.narg('tags')::text[] IS NULL OR (tags @> sqlc.narg('tags') AND tags <> '{}'))
     ORDER BY id + 0 DESC LIMIT @max_rows)
    UNION ALL
    (SELECT *, id + 0 AS k FROM tasks
     WHERE group_name = @group_name::text AND state = 'succeeded' AND coalesce(sqlc.narg('state')::text, 'succeeded') = 'succeeded'
       AND id + 0 < coalesce(sqlc.narg('before_id')::bigint, 9223372036854775807)
       AND (sqlc.narg('kind')::text IS NULL OR kind = sqlc.narg('kind'))
       AND (sqlc.narg('tags')::text[] IS NULL OR (tags @> sqlc.narg('tags') AND tags <> '{}'))
     ORDER BY id + 0 DESC LIMIT @max_rows)
    UNION ALL
    (SELECT *, id + 0 AS k FROM tasks
     WHERE group_name = @group_name::text AND state = 'failed' AND coalesce(sqlc.narg('state')::text, 'failed') = 'failed'
       AND id + 0 < coalesce(sqlc.narg('before_id')::bigint, 9223372036854775807)
       AND (sqlc.narg('kind')::text IS NULL OR kind = sqlc.narg('kind'))
       AND (sqlc.narg('tags')::text[] IS NULL OR (tags @> sqlc.narg('tags') AND tags <> '{}'))
     ORDER BY id + 0 DESC LIMIT @max_rows)
    UNION ALL
    (SELECT *, id + 0 AS k FROM tasks
     WHERE group_name = @group_name::text AND state = 'timed_out' AND coalesce(sqlc.narg('state')::text, 'timed_out') = 'timed_out'
       AND id + 0 < coalesce(sqlc.narg('before_id')::bigint, 9223372036854775807)
       AND (sqlc.narg('kind')::text IS NULL OR kind = sqlc.narg('kind'))
       AND (sqlc.narg('tags')::text[] IS NULL OR (tags @> sqlc.narg('tags') AND tags <> '{}'))
     ORDER BY id + 0 DESC LIMIT @max_rows)
    UNION ALL
    (SELECT *, id + 0 AS k FROM tasks
     WHERE group_name = @group_name::text AND state = 'canceled' AND coalesce(sqlc.narg('state')::text, 'canceled') = 'canceled'
       AND id + 0 < coalesce(sqlc.narg('before_id')::bigint, 9223372036854775807)
       AND (sqlc.narg('kind')::text IS NULL OR kind = sqlc.narg('kind'))
       AND (sqlc.narg('tags')::text[] IS NULL OR (tags @> sqlc.narg('tags') AND tags <> '{}'))
     ORDER BY id + 0 DESC LIMIT @max_rows)
    UNION ALL
    (SELECT *, id + 0 AS k FROM tasks
     WHERE group_name = @group_name::text AND state IN ('dispatched', 'running') AND worker_session_id IS NOT NULL
       AND coalesce(sqlc.narg('state')::text, 'running') IN ('dispatched', 'running')
       AND (sqlc.narg('state')::text IS NULL OR state = sqlc.narg('state'))
       AND id < coalesce(sqlc.narg('before_id')::bigint, 9223372036854775807)
       AND (sqlc.narg('kind')::text IS NULL OR kind = sqlc.narg('kind'))
       AND (sqlc.narg('tags')::text[] IS NULL OR (tags @> sqlc.narg('tags') AND tags <> '{}'))
     ORDER BY id + 0 DESC LIMIT @max_rows)
    UNION ALL
    (SELECT q.*, q.id + 0 AS k FROM prio p CROSS JOIN LATERAL (
        SELECT * FROM tasks
        WHERE state = 'queued' AND group_name = @group_name::text
          AND priority >= p.priority AND priority <= p.priority
          AND id < coalesce(sqlc.narg('before_id')::bigint, 9223372036854775807)
          AND (sqlc.narg('kind')::text IS NULL OR kind = sqlc.narg('kind'))
          AND (sqlc.narg('tags')::text[] IS NULL OR (tags @> sqlc.narg('tags') AND tags <> '{}'))
        ORDER BY priority, id DESC LIMIT @max_rows) q
     WHERE p.priority IS NOT NULL
     ORDER BY q.id + 0 DESC LIMIT @max_rows)
) u
ORDER BY u.k DESC
LIMIT @max_rows;

-- Client.Cancel, first statement: lock the task row before its dispatch row (the
-- order a master's dispatch and a failover take), so they cannot deadlock, and so
-- no dispatch row is created for it before TaskCancel, whose snapshot is taken
-- once this lock is held, deletes them.
-- name: TaskCancelLockTask :many
SELECT id FROM tasks WHERE id = @id FOR UPDATE;

-- Client.Cancel: a task that is not finished becomes canceled at once. Its open
-- attempt (if any) is closed canceled in task_attempt_log and its dispatch row
-- deleted, in one statement that re-checks the state; a worker still running the
-- attempt is fenced when it reports (TaskFinish requires state running), and its
-- refused result is recorded against that row. A queued task's last attempt was
-- already closed there (retry, snooze, failover): the insert does nothing.
-- The session that was running it is told (NOTIFY baton_cancel, its id;
-- notify.ChannelCancel) so it stops the attempt at once; it also finds it on its
-- poll (TaskListSuperseded), so the NOTIFY only shortens the wait. The old state
-- is read from the statement's snapshot, taken once TaskCancelLockTask holds the
-- row.
-- name: TaskCancel :one
WITH t AS (
    UPDATE tasks
    SET state = 'canceled', worker_session_id = NULL, finished_at = now(), last_error = @reason::text
    FROM (SELECT o.state AS old_state, o.worker_session_id AS old_session_id FROM tasks o WHERE o.id = @id) AS old
    WHERE tasks.id = @id AND tasks.state IN ('scheduled', 'queued', 'dispatched', 'running')
    RETURNING tasks.id, tasks.attempt, tasks.attempt_session_id, tasks.attempt_reason, tasks.dispatched_at, tasks.started_at,
              old.old_state, old.old_session_id
), a AS (
    INSERT INTO task_attempt_log (task_id, attempt, worker_session_id, reason, dispatched_at, started_at,
                                  finished_at, outcome, error)
    SELECT t.id, t.attempt, t.attempt_session_id, t.attempt_reason, coalesce(t.dispatched_at, now()), t.started_at,
           now(), 'canceled', @reason::text
    FROM t WHERE t.attempt > 0 AND t.attempt_session_id IS NOT NULL
    ON CONFLICT (task_id, attempt) DO NOTHING
), d AS (
    DELETE FROM dispatch_queue USING t WHERE dispatch_queue.task_id = t.id
), notified AS (
    -- A slot may be free: wake the dispatchers; and the task ended (Client.Wait).
    -- Joined below so they run only on a cancel.
    SELECT pg_notify('baton_dispatch', ''), pg_notify('baton_finished', t.id::text) FROM t
), stopped AS (
    SELECT pg_notify('baton_cancel', t.old_session_id::text) FROM t
    WHERE t.old_state = 'running' AND t.old_session_id IS NOT NULL
)
SELECT t.id, t.attempt FROM t CROSS JOIN (SELECT count(*) FROM notified) AS n CROSS JOIN (SELECT count(*) FROM stopped) AS st;

-- A handler's permanent failure (baton.Permanent): the running attempt's failure
-- becomes final by leaving no retry. Fenced like every worker write.
-- name: TaskExhaustRetries :execrows
UPDATE tasks SET submitted_max_retries = coalesce(submitted_max_retries, max_retries), max_retries = retries
WHERE id = @id AND attempt = @attempt AND worker_session_id = @session_id::bigint AND state = 'running';

-- name: TaskRetryState :one
SELECT retries, max_retries FROM tasks WHERE id = @id;

-- Client.Wait: ask for a NOTIFY when the task ends (TaskFinish sends one only for
-- watched tasks). Once set it stays set.
--
-- The update holds the task's row lock until its commit, and a worker's claim
-- skips locked rows (SKIP LOCKED): a claim woken by the submit's NOTIFY that runs
-- meanwhile finds nothing, and no other wake-up would follow, so the task would
-- wait for the poll. The watch therefore wakes, at its commit (after the lock is
-- released), whoever claims the task: its group's workers for a queued task
-- ("g:<group>", as NotifyQueued), the target session for a dispatched one (as
-- DispatchAssign). Channel notify.ChannelClaim.
-- name: TaskWatch :exec
WITH w AS (
    UPDATE tasks SET notify_finish = true
    WHERE id = @id AND NOT notify_finish AND finished_at IS NULL
    RETURNING state, group_name, worker_session_id, available_at
)
SELECT pg_notify('baton_claim', CASE WHEN w.state = 'queued' THEN 'g:' || w.group_name
                                     ELSE w.worker_session_id::text END)
FROM w
WHERE (w.state = 'queued' AND w.available_at <= now())
   OR (w.state = 'dispatched' AND w.worker_session_id IS NOT NULL);
