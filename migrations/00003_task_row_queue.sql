-- +goose Up
-- Schema v3: fewer row writes per task. The task row is the queue (a waiting task
-- is a task row in state queued, no dispatch row) and holds its current attempt
-- (no history row until the attempt is closed by something other than its own
-- final result), so a task that runs once costs: insert at submit, one update at
-- claim, one update at finish. The retry policy is stated per task (defaulted from
-- its group), and a handler may snooze a task.

-- 1. The queue lives in the task row.
ALTER TABLE tasks
    ADD COLUMN available_at       timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN queued_reason      text NOT NULL DEFAULT 'submit',
    ADD COLUMN attempt_reason     text NOT NULL DEFAULT 'submit',
    ADD COLUMN attempt_session_id bigint,
    ADD COLUMN retry_base_ms      bigint NOT NULL DEFAULT 1000,
    ADD COLUMN retry_max_ms       bigint NOT NULL DEFAULT 300000,
    ADD COLUMN notify_finish      boolean NOT NULL DEFAULT false,
    ADD CONSTRAINT tasks_queued_reason CHECK (queued_reason IN ('submit', 'retry', 'failover', 'snooze')),
    ADD CONSTRAINT tasks_attempt_reason CHECK (attempt_reason IN ('submit', 'retry', 'failover', 'snooze')),
    ADD CONSTRAINT tasks_retry_backoff CHECK (retry_base_ms BETWEEN 0 AND 86400000 AND retry_max_ms BETWEEN retry_base_ms AND 604800000);
COMMENT ON COLUMN tasks.available_at IS 'A queued task is not claimed before this time (retry backoff, snooze).';
COMMENT ON COLUMN tasks.queued_reason IS 'Why the task is (or last was) queued: submit, retry, failover or snooze; it becomes the next attempt''s reason.';
COMMENT ON COLUMN tasks.attempt_reason IS 'Why the current (or last) attempt exists: submit, retry, failover or snooze.';
COMMENT ON COLUMN tasks.attempt_session_id IS 'The worker session of the current (or last) attempt, kept after it ends (history; the session row may have been pruned).';
COMMENT ON COLUMN tasks.retry_base_ms IS 'Retry backoff: retry n waits retry_base_ms·2^(n-1), capped at retry_max_ms, ±20%. Set at submit (default: the group''s).';
COMMENT ON COLUMN tasks.retry_max_ms IS 'Cap of the retry backoff.';
COMMENT ON COLUMN tasks.notify_finish IS 'A Client.Wait watches the task: its end is announced with NOTIFY baton_finished (otherwise not: notifying commits are serialized by Postgres).';
COMMENT ON COLUMN tasks.state IS 'queued -> (dispatched ->) running -> succeeded | failed | timed_out | canceled; a retry, snooze or failover returns it to queued (or dispatched, when a failover picks a worker).';
COMMENT ON COLUMN tasks.worker_session_id IS 'The session the current attempt is dispatched to / running on; NULL unless dispatched or running. No foreign key (a claim would check it per task); retention keeps a session while a task names it.';

ALTER TABLE worker_groups
    ADD COLUMN retry_base_ms bigint NOT NULL DEFAULT 1000,
    ADD COLUMN retry_max_ms  bigint NOT NULL DEFAULT 300000,
    ADD CONSTRAINT worker_groups_retry_backoff CHECK (retry_base_ms BETWEEN 0 AND 86400000 AND retry_max_ms BETWEEN retry_base_ms AND 604800000);
COMMENT ON COLUMN worker_groups.retry_base_ms IS 'Default retry backoff base of tasks submitted to the group (see tasks.retry_base_ms).';
COMMENT ON COLUMN worker_groups.retry_max_ms IS 'Default retry backoff cap of tasks submitted to the group.';

-- Waiting dispatch rows become queued task rows.
UPDATE tasks t SET available_at = d.available_at, queued_reason = d.reason
FROM dispatch_queue d
WHERE d.task_id = t.id AND d.target_session_id IS NULL;
DELETE FROM dispatch_queue WHERE target_session_id IS NULL;
DROP INDEX dispatch_queue_waiting;
ALTER TABLE dispatch_queue ALTER COLUMN target_session_id SET NOT NULL,
    DROP CONSTRAINT dispatch_queue_reason,
    ADD CONSTRAINT dispatch_queue_reason CHECK (reason IN ('submit', 'retry', 'failover', 'snooze'));
COMMENT ON TABLE dispatch_queue IS 'Tasks a master placed on a chosen worker session (failover, dispatcher): the row waits until that session claims it. Waiting tasks are task rows in state queued.';
COMMENT ON COLUMN dispatch_queue.target_session_id IS 'The worker session that must claim it.';
COMMENT ON COLUMN dispatch_queue.available_at IS 'When the row was (re)targeted.';

-- Queue order: priority, then task id (submission order).
CREATE INDEX tasks_queue ON tasks (group_name, priority DESC, id) WHERE state = 'queued';

-- A claim would check this foreign key for every task it takes.
ALTER TABLE tasks DROP CONSTRAINT tasks_worker_session_id_fkey;
-- A session's active tasks in id order (state is implied: tasks_owner), so a
-- failover takes each batch from the index in order; on (worker_session_id,
-- state) the planner walked the primary key instead, past every task already
-- moved: quadratic in a large failover.
DROP INDEX tasks_active_by_session;
CREATE INDEX tasks_active_by_session ON tasks (worker_session_id, id) WHERE worker_session_id IS NOT NULL;
-- A failover writes a dispatch row and a history row per task it moves; these keys
-- were checked per row (one query each). Retention checks that no dispatch or
-- history row names a session before it prunes it; the task's group is the task's.
ALTER TABLE dispatch_queue DROP CONSTRAINT dispatch_queue_group_name_fkey,
    DROP CONSTRAINT dispatch_queue_target_session_id_fkey;

-- 2. Attempt history: closed attempts are rows of task_attempt_log; the current
-- (or final) attempt is described by the task row until something other than its
-- own result closes it. The view task_attempts joins both: one row per attempt.
ALTER TABLE task_attempts RENAME TO task_attempt_log;
ALTER TABLE task_attempt_log
    DROP CONSTRAINT task_attempts_worker_session_id_fkey,
    DROP CONSTRAINT task_attempts_reason,
    ADD CONSTRAINT task_attempts_reason CHECK (reason IN ('submit', 'retry', 'failover', 'snooze')),
    DROP CONSTRAINT task_attempts_outcome,
    ADD CONSTRAINT task_attempts_outcome CHECK (outcome IN ('succeeded', 'failed', 'timed_out', 'failed_over', 'fenced', 'canceled', 'snoozed'));
-- Open attempts move into their task rows.
UPDATE tasks t SET attempt_reason = a.reason, attempt_session_id = a.worker_session_id
FROM task_attempt_log a
WHERE a.task_id = t.id AND a.attempt = t.attempt;
DELETE FROM task_attempt_log a USING tasks t
WHERE a.task_id = t.id AND a.attempt = t.attempt AND a.outcome IS NULL AND t.state IN ('dispatched', 'running');
COMMENT ON TABLE task_attempt_log IS 'Storage of closed attempts: every attempt except the one the task row describes (its current attempt, or its final attempt when its own result ended the task). Read the view task_attempts.';

CREATE VIEW task_attempts AS
SELECT l.task_id, l.attempt, l.worker_session_id, l.reason, l.dispatched_at, l.started_at, l.finished_at,
       l.outcome, l.exit_code, l.error, l.refused_outcome, l.refused_at
FROM task_attempt_log l
UNION ALL
SELECT t.id, t.attempt, t.attempt_session_id, t.attempt_reason, t.dispatched_at, t.started_at,
       CASE WHEN t.finished_at IS NOT NULL THEN t.finished_at END,
       CASE WHEN t.finished_at IS NOT NULL THEN t.state END,
       CASE WHEN t.finished_at IS NOT NULL THEN t.exit_code END,
       CASE WHEN t.finished_at IS NOT NULL THEN t.last_error ELSE '' END,
       NULL::text, NULL::timestamptz
FROM tasks t
WHERE t.attempt > 0 AND t.state <> 'queued' AND t.attempt_session_id IS NOT NULL AND t.dispatched_at IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM task_attempt_log l WHERE l.task_id = t.id AND l.attempt = t.attempt);
COMMENT ON VIEW task_attempts IS 'History: one row per dispatch of a task (closed attempts from task_attempt_log, the current or final one from the task row). Dashboards read this.';

CREATE OR REPLACE VIEW report_attempt_durations AS
SELECT a.task_id, a.attempt, t.group_name, t.kind, a.worker_session_id, a.reason, a.outcome,
       a.dispatched_at, a.started_at, a.finished_at,
       a.started_at - a.dispatched_at AS wait_time,
       a.finished_at - a.started_at AS run_time
FROM task_attempts a
JOIN tasks t ON t.id = a.task_id;

-- +goose Down
CREATE OR REPLACE VIEW report_attempt_durations AS
SELECT a.task_id, a.attempt, t.group_name, t.kind, a.worker_session_id, a.reason, a.outcome,
       a.dispatched_at, a.started_at, a.finished_at,
       a.started_at - a.dispatched_at AS wait_time,
       a.finished_at - a.started_at AS run_time
FROM task_attempt_log a
JOIN tasks t ON t.id = a.task_id;
-- Attempts held by task rows become rows again (v2 has a row per attempt).
INSERT INTO task_attempt_log (task_id, attempt, worker_session_id, reason, dispatched_at, started_at, finished_at, outcome, exit_code, error)
SELECT v.task_id, v.attempt, v.worker_session_id, v.reason, v.dispatched_at, v.started_at, v.finished_at, v.outcome, v.exit_code, v.error
FROM task_attempts v
WHERE NOT EXISTS (SELECT 1 FROM task_attempt_log l WHERE l.task_id = v.task_id AND l.attempt = v.attempt)
  AND EXISTS (SELECT 1 FROM worker_sessions s WHERE s.id = v.worker_session_id);
DROP VIEW task_attempts;
-- v2 knows no snooze: a snoozed attempt reads as failed (with its reason in the error).
UPDATE task_attempt_log SET outcome = 'failed', error = 'snoozed: ' || error WHERE outcome = 'snoozed';
UPDATE task_attempt_log SET reason = 'retry' WHERE reason = 'snooze';
ALTER TABLE task_attempt_log
    DROP CONSTRAINT task_attempts_outcome,
    ADD CONSTRAINT task_attempts_outcome CHECK (outcome IN ('succeeded', 'failed', 'timed_out', 'failed_over', 'fenced', 'canceled')),
    DROP CONSTRAINT task_attempts_reason,
    ADD CONSTRAINT task_attempts_reason CHECK (reason IN ('submit', 'retry', 'failover'));
ALTER TABLE task_attempt_log RENAME TO task_attempts;
DELETE FROM task_attempts a WHERE NOT EXISTS (SELECT 1 FROM worker_sessions s WHERE s.id = a.worker_session_id);
ALTER TABLE task_attempts ADD CONSTRAINT task_attempts_worker_session_id_fkey FOREIGN KEY (worker_session_id) REFERENCES worker_sessions (id);
DELETE FROM dispatch_queue d WHERE NOT EXISTS (SELECT 1 FROM worker_sessions s WHERE s.id = d.target_session_id);
ALTER TABLE dispatch_queue ADD CONSTRAINT dispatch_queue_group_name_fkey FOREIGN KEY (group_name) REFERENCES worker_groups (name),
    ADD CONSTRAINT dispatch_queue_target_session_id_fkey FOREIGN KEY (target_session_id) REFERENCES worker_sessions (id);

UPDATE tasks t SET worker_session_id = NULL, state = 'queued', dispatched_at = NULL, started_at = NULL
WHERE t.worker_session_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM worker_sessions s WHERE s.id = t.worker_session_id);
ALTER TABLE tasks ADD CONSTRAINT tasks_worker_session_id_fkey FOREIGN KEY (worker_session_id) REFERENCES worker_sessions (id);
DROP INDEX tasks_active_by_session;
CREATE INDEX tasks_active_by_session ON tasks (worker_session_id, state) WHERE worker_session_id IS NOT NULL;
DROP INDEX tasks_queue;
UPDATE dispatch_queue SET reason = 'retry' WHERE reason = 'snooze';
ALTER TABLE dispatch_queue ALTER COLUMN target_session_id DROP NOT NULL,
    DROP CONSTRAINT dispatch_queue_reason,
    ADD CONSTRAINT dispatch_queue_reason CHECK (reason IN ('submit', 'retry', 'failover'));
CREATE INDEX dispatch_queue_waiting ON dispatch_queue (group_name, priority DESC, task_id) WHERE target_session_id IS NULL;
INSERT INTO dispatch_queue (task_id, attempt, group_name, priority, available_at, reason)
SELECT id, attempt, group_name, priority, available_at, CASE WHEN queued_reason = 'snooze' THEN 'retry' ELSE queued_reason END
FROM tasks WHERE state = 'queued'
ON CONFLICT (task_id) DO NOTHING;

ALTER TABLE worker_groups
    DROP CONSTRAINT worker_groups_retry_backoff,
    DROP COLUMN retry_max_ms,
    DROP COLUMN retry_base_ms;
ALTER TABLE tasks
    DROP CONSTRAINT tasks_retry_backoff,
    DROP CONSTRAINT tasks_attempt_reason,
    DROP CONSTRAINT tasks_queued_reason,
    DROP COLUMN notify_finish,
    DROP COLUMN retry_max_ms,
    DROP COLUMN retry_base_ms,
    DROP COLUMN attempt_session_id,
    DROP COLUMN attempt_reason,
    DROP COLUMN queued_reason,
    DROP COLUMN available_at;
