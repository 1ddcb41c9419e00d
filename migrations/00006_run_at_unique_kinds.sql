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

-- 3. Kinds a group declares (WorkerConfig.DeclareKinds, Client.DeclareKinds).
--    A group with no row accepts any kind; once it has one, a task of a kind it
--    has not declared, or whose payload is not of the declared JSON type, is
--    refused when it is submitted (trigger tasks_kind_declared) instead of
--    failing on a worker after its retries. Rows are only added (a rolling
--    deploy's old and new workers both declare theirs); delete them by hand.
CREATE TABLE worker_group_kinds (
    group_name   text NOT NULL REFERENCES worker_groups (name) ON DELETE CASCADE,
    kind         text NOT NULL,
    payload_type text,
    declared_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_name, kind),
    CONSTRAINT worker_group_kinds_kind CHECK (kind ~ '^[a-zA-Z0-9][a-zA-Z0-9_.:/-]{0,127}$'),
    CONSTRAINT worker_group_kinds_payload_type CHECK (payload_type IN ('object', 'array', 'string', 'number', 'boolean'))
);
COMMENT ON TABLE worker_group_kinds IS 'Task kinds a group runs: once a group has a row, submits of other kinds are refused.';
COMMENT ON COLUMN worker_group_kinds.payload_type IS 'JSON type the payload must have (jsonb_typeof), or NULL for any.';

-- +goose StatementBegin
CREATE FUNCTION tasks_kind_declared() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    declared boolean;
    want text;
BEGIN
    -- A workflow's step is inserted by the transaction that ends its
    -- predecessor: refusing it there would fail that result write, so steps
    -- are not checked here.
    IF NEW.workflow_step IS NOT NULL THEN
        RETURN NEW;
    END IF;
    SELECT true, k.payload_type INTO declared, want
    FROM worker_group_kinds k WHERE k.group_name = NEW.group_name AND k.kind = NEW.kind;
    IF declared THEN
        IF want IS NOT NULL AND jsonb_typeof(NEW.payload) <> want THEN
            RAISE EXCEPTION 'payload of kind % must be a JSON %, not %', NEW.kind, want, jsonb_typeof(NEW.payload)
                USING ERRCODE = 'check_violation', CONSTRAINT = 'tasks_payload_type', TABLE = TG_TABLE_NAME, SCHEMA = TG_TABLE_SCHEMA;
        END IF;
        RETURN NEW;
    END IF;
    IF EXISTS (SELECT 1 FROM worker_group_kinds k WHERE k.group_name = NEW.group_name) THEN
        RAISE EXCEPTION 'kind % is not declared by group % (declared: %)', NEW.kind, NEW.group_name,
            (SELECT string_agg(k.kind, ', ' ORDER BY k.kind) FROM worker_group_kinds k WHERE k.group_name = NEW.group_name)
            USING ERRCODE = 'check_violation', CONSTRAINT = 'tasks_kind_declared', TABLE = TG_TABLE_NAME, SCHEMA = TG_TABLE_SCHEMA;
    END IF;
    RETURN NEW;
END
$$;
-- +goose StatementEnd
COMMENT ON FUNCTION tasks_kind_declared() IS 'Refuses a task of a kind its group has not declared (worker_group_kinds).';
CREATE TRIGGER tasks_kind_declared BEFORE INSERT ON tasks FOR EACH ROW EXECUTE FUNCTION tasks_kind_declared();

-- 4. Smaller: the retry limit a task was submitted with stays visible after a
--    handler's Permanent lowered max_retries; tags find a customer's tasks.
ALTER TABLE tasks
    ADD COLUMN submitted_max_retries integer,
    ADD COLUMN tags text[] NOT NULL DEFAULT '{}',
    ADD CONSTRAINT tasks_tags CHECK (cardinality(tags) <= 16);
COMMENT ON COLUMN tasks.submitted_max_retries IS 'max_retries as submitted, kept when a permanent failure (baton.Permanent) lowered max_retries to the retries used; NULL otherwise.';
COMMENT ON COLUMN tasks.tags IS 'Labels given at submit (TaskSpec.Tags), for finding tasks (Client.List, baton task list --tag).';
CREATE INDEX tasks_tags ON tasks USING gin (tags) WHERE tags <> '{}';

-- +goose Down
DROP INDEX tasks_tags;
ALTER TABLE tasks DROP CONSTRAINT tasks_tags, DROP COLUMN tags, DROP COLUMN submitted_max_retries;
DROP TRIGGER tasks_kind_declared ON tasks;
DROP FUNCTION tasks_kind_declared();
DROP TABLE worker_group_kinds;
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
