-- +goose Up
-- Schema v4: the payload size limit is checked when a payload is written, not on
-- every update of its task. A CHECK constraint is evaluated on every UPDATE of the
-- row, whatever it changes, and octet_length(payload::text) detoasts and prints
-- the whole payload: the claim and the result of a task with a 700 kB payload
-- cost 3.5 ms each in that check alone. The trigger runs only on INSERT and on an
-- UPDATE that sets payload, and its WHEN clause is evaluated without calling the
-- function, which runs only to report a violation: same limit, same SQLSTATE
-- (23514) and constraint name as before.
ALTER TABLE tasks DROP CONSTRAINT tasks_payload_size;

-- +goose StatementBegin
CREATE FUNCTION tasks_payload_size() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'new row for relation "tasks" violates check constraint "tasks_payload_size"'
        USING ERRCODE = 'check_violation', CONSTRAINT = 'tasks_payload_size', TABLE = TG_TABLE_NAME, SCHEMA = TG_TABLE_SCHEMA,
              DETAIL = format('The payload is %s bytes as JSON text; the limit is 1048576 (1 MiB).', octet_length(NEW.payload::text));
END
$$;
-- +goose StatementEnd
COMMENT ON FUNCTION tasks_payload_size() IS 'Reports a task payload over 1 MiB as JSON text (trigger tasks_payload_size).';

CREATE TRIGGER tasks_payload_size BEFORE INSERT OR UPDATE OF payload ON tasks
    FOR EACH ROW WHEN (octet_length(NEW.payload::text) > 1048576)
    EXECUTE FUNCTION tasks_payload_size();

-- +goose Down
DROP TRIGGER tasks_payload_size ON tasks;
DROP FUNCTION tasks_payload_size();
ALTER TABLE tasks ADD CONSTRAINT tasks_payload_size CHECK (octet_length(payload::text) <= 1048576);
