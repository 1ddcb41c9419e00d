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

-- +goose Down
DROP INDEX tasks_scheduled;
UPDATE tasks SET state = 'queued' WHERE state = 'scheduled';
ALTER TABLE tasks
    DROP CONSTRAINT tasks_state,
    ADD CONSTRAINT tasks_state CHECK (state IN ('queued', 'dispatched', 'running', 'succeeded', 'failed', 'timed_out', 'canceled'));
COMMENT ON COLUMN tasks.state IS 'queued -> (dispatched ->) running -> succeeded | failed | timed_out | canceled; a retry, snooze or failover returns it to queued (or dispatched, when a failover picks a worker).';
COMMENT ON COLUMN tasks.available_at IS 'A queued task is not claimed before this time (retry backoff, snooze).';
