-- +goose Up
-- Schema v6: what an application embedding baton needs beyond "run now".
--
-- 1. Tasks that run later (TaskSpec.RunAt / Delay). A task submitted for a time
--    still in the future is in state scheduled, outside the queue index
--    tasks_queue, so a million of them cost a claim nothing: a worker's claim
--    reads the due ones from tasks_scheduled (ordered by run time, then id) and
--    merges them with the queue by priority, then id.
ALTER TABLE tasks
    DROP CONSTRAINT tasks_state,
    ADD CONSTRAINT tasks_state CHECK (state IN ('scheduled', 'queued', 'dispatched', 'running', 'succeeded', 'failed', 'timed_out', 'canceled'));
COMMENT ON COLUMN tasks.state IS 'scheduled (submitted to run later) | queued -> (dispatched ->) running -> succeeded | failed | timed_out | canceled; a retry, snooze or failover returns it to queued (or dispatched, when a failover picks a worker).';
COMMENT ON COLUMN tasks.available_at IS 'A scheduled or queued task is not claimed before this time (run at, retry backoff, snooze).';
CREATE INDEX tasks_scheduled ON tasks (group_name, available_at, id) WHERE state = 'scheduled';

-- 2. Unique tasks (TaskSpec.Unique): a key per task, unique among tasks of the
--    same kind within a scope: while the task is active (scheduled, queued,
--    dispatched, running), within a period (unique_bucket is the start of the
--    period the submit fell in, Postgres time), or until the task is pruned
--    (unique_bucket 0001-01-01). A unique index enforces it in the submitting
--    transaction, so it holds across processes and inside SubmitTx.
ALTER TABLE tasks
    ADD COLUMN unique_key    text,
    ADD COLUMN unique_scope  text,
    ADD COLUMN unique_bucket timestamptz,
    ADD CONSTRAINT tasks_unique CHECK (
        (unique_key IS NULL AND unique_scope IS NULL AND unique_bucket IS NULL)
        OR (length(unique_key) BETWEEN 1 AND 256 AND unique_scope = 'active' AND unique_bucket IS NULL)
        OR (length(unique_key) BETWEEN 1 AND 256 AND unique_scope IN ('period', 'forever') AND unique_bucket IS NOT NULL));
COMMENT ON COLUMN tasks.unique_key IS 'Unique key (TaskSpec.Unique): no two tasks of one kind share it within unique_scope.';
COMMENT ON COLUMN tasks.unique_scope IS 'active: while scheduled, queued, dispatched or running; period: within unique_bucket; forever: until pruned.';
COMMENT ON COLUMN tasks.unique_bucket IS 'Start of the period (Postgres time) the submit fell in (scope period), or 0001-01-01 00:00 UTC (scope forever).';
CREATE UNIQUE INDEX tasks_unique_active ON tasks (kind, unique_key)
    WHERE unique_scope = 'active' AND state IN ('scheduled', 'queued', 'dispatched', 'running');
CREATE UNIQUE INDEX tasks_unique_bucket ON tasks (kind, unique_key, unique_bucket) WHERE unique_bucket IS NOT NULL;

-- +goose Down
DROP INDEX tasks_unique_bucket;
DROP INDEX tasks_unique_active;
ALTER TABLE tasks DROP CONSTRAINT tasks_unique, DROP COLUMN unique_bucket, DROP COLUMN unique_scope, DROP COLUMN unique_key;
DROP INDEX tasks_scheduled;
UPDATE tasks SET state = 'queued' WHERE state = 'scheduled';
ALTER TABLE tasks
    DROP CONSTRAINT tasks_state,
    ADD CONSTRAINT tasks_state CHECK (state IN ('queued', 'dispatched', 'running', 'succeeded', 'failed', 'timed_out', 'canceled'));
COMMENT ON COLUMN tasks.state IS 'queued -> (dispatched ->) running -> succeeded | failed | timed_out | canceled; a retry, snooze or failover returns it to queued (or dispatched, when a failover picks a worker).';
COMMENT ON COLUMN tasks.available_at IS 'A queued task is not claimed before this time (retry backoff, snooze).';
