-- +goose Up
-- Schema v2: refused writes recorded beside an attempt's outcome (history is never
-- rewritten), a queue order that survives failover, and the indexes retention needs.

-- A late (fenced) write no longer overwrites the outcome a master already recorded
-- (timed_out, failed_over): the refusal is recorded in its own columns.
ALTER TABLE task_attempts
    ADD COLUMN refused_outcome text,
    ADD COLUMN refused_at      timestamptz,
    ADD CONSTRAINT task_attempts_refused CHECK ((refused_outcome IS NULL) = (refused_at IS NULL));
COMMENT ON COLUMN task_attempts.refused_outcome IS 'Outcome a superseded worker tried to write after the attempt was taken from it (refused by fencing); NULL if none.';
COMMENT ON COLUMN task_attempts.refused_at IS 'When that late write was refused.';
COMMENT ON COLUMN task_attempts.outcome IS 'NULL while in flight; succeeded, failed, timed_out, canceled; failed_over when its worker died; fenced when a superseded worker wrote while the attempt was still open. A refused late write never changes an outcome already recorded (see refused_outcome).';

-- Queue order survives failover and retry: within a priority, by task id (submission
-- order), not by the dispatch row's id, which a failover or retry renews.
DROP INDEX dispatch_queue_waiting;
CREATE INDEX dispatch_queue_waiting ON dispatch_queue (group_name, priority DESC, task_id) WHERE target_session_id IS NULL;

-- The same rows as tasks_active_by_session (tasks_owner: a session is set exactly
-- while dispatched or running), but a predicate that `worker_session_id = $1`
-- implies, so the foreign-key check of a session delete is an index probe too.
DROP INDEX tasks_active_by_session;
CREATE INDEX tasks_active_by_session ON tasks (worker_session_id, state) WHERE worker_session_id IS NOT NULL;

-- Retention: candidates by age, oldest first.
CREATE INDEX tasks_finished ON tasks (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX worker_sessions_ended ON worker_sessions (ended_at) WHERE ended_at IS NOT NULL;
CREATE INDEX master_sessions_ended ON master_sessions (ended_at) WHERE ended_at IS NOT NULL;
CREATE INDEX failover_events_finished ON failover_events (finished_at) WHERE finished_at IS NOT NULL;

-- The audit trail outlives pruned master sessions: detected_by keeps the id, like
-- session_id, without a foreign key (so pruning a master runs no per-row check
-- over failover_events either).
ALTER TABLE failover_events DROP CONSTRAINT failover_events_detected_by_fkey;
COMMENT ON COLUMN failover_events.detected_by IS 'The master session that ran the failover (its id; the session row may have been pruned).';

-- Poison tasks: failovers that took a task away while it was *running* (its worker
-- died under it), counted apart from moves of tasks only dispatched to a dead worker.
ALTER TABLE tasks ADD COLUMN running_failovers integer NOT NULL DEFAULT 0,
    ADD CONSTRAINT tasks_running_failovers CHECK (running_failovers BETWEEN 0 AND failover_count);
COMMENT ON COLUMN tasks.running_failovers IS 'How many of the failovers took the task away while it was running (its worker died under it). A task found running on a dead worker once more after --max-failovers of these fails instead (a poison task).';

-- Fast crash detection: a worker that sets liveness_lock holds a session-level
-- advisory lock (class 0x62610004, its session id) on a dedicated connection for the
-- session's whole life. Postgres frees it the moment that connection is gone, so a
-- master that can take it knows the process's connection closed.
ALTER TABLE worker_sessions ADD COLUMN liveness_lock boolean NOT NULL DEFAULT false;
COMMENT ON COLUMN worker_sessions.liveness_lock IS 'The worker holds its liveness advisory lock on a dedicated connection and fences itself when that connection is lost: masters may then declare it dead once the lock is free and its heartbeat is older than the crash-detection age, without waiting the heartbeat timeout.';

-- +goose Down
ALTER TABLE worker_sessions DROP COLUMN liveness_lock;
ALTER TABLE tasks DROP COLUMN running_failovers;
UPDATE failover_events f SET detected_by = NULL
WHERE detected_by IS NOT NULL AND NOT EXISTS (SELECT 1 FROM master_sessions m WHERE m.id = f.detected_by);
ALTER TABLE failover_events ADD CONSTRAINT failover_events_detected_by_fkey FOREIGN KEY (detected_by) REFERENCES master_sessions (id);
DROP INDEX failover_events_finished;
DROP INDEX master_sessions_ended;
DROP INDEX worker_sessions_ended;
DROP INDEX tasks_finished;
DROP INDEX tasks_active_by_session;
CREATE INDEX tasks_active_by_session ON tasks (worker_session_id, state) WHERE state IN ('dispatched', 'running');
DROP INDEX dispatch_queue_waiting;
CREATE INDEX dispatch_queue_waiting ON dispatch_queue (group_name, priority DESC, available_at, id) WHERE target_session_id IS NULL;
ALTER TABLE task_attempts
    DROP CONSTRAINT task_attempts_refused,
    DROP COLUMN refused_at,
    DROP COLUMN refused_outcome;
