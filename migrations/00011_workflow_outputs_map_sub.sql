-- +goose Up
-- Schema v11: workflows, the rest of issue 16 (docs/workflows.md).
--
-- Shell step outputs: a shell task writes KEY=VALUE lines to the file named by
-- $BATON_OUTPUT; its worker reads it after the process tree exited and reports
-- it as a JSON object in tasks.step_outputs, in the same fenced TaskFinish
-- statement as the result, so the trigger stores it as the step's outputs in
-- that transaction (a zombie's late result changes no row, so no output).
--
-- The workflow functions get search_path set to baton's schema (the schema
-- these migrations run in): they no longer depend on the search_path of the
-- statement that fires them (a manual UPDATE of baton.tasks from psql).

ALTER TABLE tasks ADD COLUMN step_outputs jsonb;
COMMENT ON COLUMN tasks.step_outputs IS 'A succeeded shell task''s $BATON_OUTPUT (KEY=VALUE lines) as a JSON object of strings: its workflow step''s outputs. NULL: none.';

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION workflow_task_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_state text;
    v_output jsonb;
    v_run_state text;
BEGIN
    v_state := CASE NEW.state WHEN 'queued' THEN 'queued' WHEN 'dispatched' THEN 'queued' WHEN 'running' THEN 'running'
                              WHEN 'succeeded' THEN 'succeeded' WHEN 'canceled' THEN 'canceled' ELSE 'failed' END;
    IF v_state IN ('queued', 'running') THEN
        -- Claim, dispatch, retry, failover: the step mirrors its task. The run row
        -- is not locked (claims of one run's tasks do not serialize), except for
        -- a requeue, which must see a pause committed before it.
        IF NEW.state = 'queued' THEN
            SELECT state INTO v_run_state FROM workflow_runs WHERE id = NEW.workflow_run_id FOR SHARE;
            IF v_run_state = 'paused' THEN
                UPDATE tasks SET available_at = 'infinity' WHERE id = NEW.id AND state = 'queued';
            END IF;
        END IF;
        UPDATE workflow_run_steps SET state = v_state
         WHERE run_id = NEW.workflow_run_id AND name = NEW.workflow_step AND task_id = NEW.id
           AND state IN ('queued', 'running') AND state <> v_state;
        RETURN NULL;
    END IF;
    -- Terminal: serialize with every other advancement of this run.
    PERFORM 1 FROM workflow_runs WHERE id = NEW.workflow_run_id FOR UPDATE;
    IF v_state = 'succeeded' AND NEW.step_outputs IS NOT NULL THEN
        -- A shell step's $BATON_OUTPUT, written by the same fenced statement.
        v_output := NEW.step_outputs;
    ELSIF v_state = 'succeeded' AND NEW.kind <> 'shell' AND NEW.output ~ '^\s*\{' THEN
        BEGIN
            v_output := NEW.output::jsonb;
        EXCEPTION WHEN OTHERS THEN
            v_output := NULL;
        END;
    END IF;
    UPDATE workflow_run_steps SET state = v_state, finished_at = now(), output = v_output,
                                  error = CASE WHEN v_state = 'succeeded' THEN '' ELSE NEW.last_error END
     WHERE run_id = NEW.workflow_run_id AND name = NEW.workflow_step AND task_id = NEW.id
       AND state IN ('queued', 'running');
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    UPDATE workflow_runs SET steps_left = steps_left - 1, step_failed = step_failed OR v_state = 'failed'
     WHERE id = NEW.workflow_run_id;
    PERFORM workflow_advance(NEW.workflow_run_id, ARRAY(
        SELECT e.to_step FROM workflow_version_edges e
         WHERE e.version_id = (SELECT version_id FROM workflow_runs WHERE id = NEW.workflow_run_id)
           AND e.from_step = NEW.workflow_step
         ORDER BY e.to_step));
    RETURN NULL;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
DO $$
DECLARE
    f text;
BEGIN
    FOREACH f IN ARRAY ARRAY['workflow_resolve(jsonb, bigint, jsonb)', 'workflow_advance(bigint, text[])', 'workflow_finish_if_done(bigint)', 'workflow_task_changed()', 'workflow_start(bigint, jsonb, text, text, bigint)', 'workflow_pause(bigint)', 'workflow_resume(bigint)', 'workflow_end(bigint, text, text)', 'workflow_rerun(bigint, text[])'] LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = %I', f, current_schema());
    END LOOP;
END
$$;
-- +goose StatementEnd

-- +goose Down
-- +goose StatementBegin
DO $$
DECLARE
    f text;
BEGIN
    FOREACH f IN ARRAY ARRAY['workflow_resolve(jsonb, bigint, jsonb)', 'workflow_advance(bigint, text[])', 'workflow_finish_if_done(bigint)', 'workflow_task_changed()', 'workflow_start(bigint, jsonb, text, text, bigint)', 'workflow_pause(bigint)', 'workflow_resume(bigint)', 'workflow_end(bigint, text, text)', 'workflow_rerun(bigint, text[])'] LOOP
        EXECUTE format('ALTER FUNCTION %s RESET search_path', f);
    END LOOP;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION workflow_task_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_state text;
    v_output jsonb;
    v_run_state text;
BEGIN
    v_state := CASE NEW.state WHEN 'queued' THEN 'queued' WHEN 'dispatched' THEN 'queued' WHEN 'running' THEN 'running'
                              WHEN 'succeeded' THEN 'succeeded' WHEN 'canceled' THEN 'canceled' ELSE 'failed' END;
    IF v_state IN ('queued', 'running') THEN
        -- Claim, dispatch, retry, failover: the step mirrors its task. The run row
        -- is not locked (claims of one run's tasks do not serialize), except for
        -- a requeue, which must see a pause committed before it.
        IF NEW.state = 'queued' THEN
            SELECT state INTO v_run_state FROM workflow_runs WHERE id = NEW.workflow_run_id FOR SHARE;
            IF v_run_state = 'paused' THEN
                UPDATE tasks SET available_at = 'infinity' WHERE id = NEW.id AND state = 'queued';
            END IF;
        END IF;
        UPDATE workflow_run_steps SET state = v_state
         WHERE run_id = NEW.workflow_run_id AND name = NEW.workflow_step AND task_id = NEW.id
           AND state IN ('queued', 'running') AND state <> v_state;
        RETURN NULL;
    END IF;
    -- Terminal: serialize with every other advancement of this run.
    PERFORM 1 FROM workflow_runs WHERE id = NEW.workflow_run_id FOR UPDATE;
    IF v_state = 'succeeded' AND NEW.output ~ '^\s*\{' THEN
        BEGIN
            v_output := NEW.output::jsonb;
        EXCEPTION WHEN OTHERS THEN
            v_output := NULL;
        END;
    END IF;
    UPDATE workflow_run_steps SET state = v_state, finished_at = now(), output = v_output,
                                  error = CASE WHEN v_state = 'succeeded' THEN '' ELSE NEW.last_error END
     WHERE run_id = NEW.workflow_run_id AND name = NEW.workflow_step AND task_id = NEW.id
       AND state IN ('queued', 'running');
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    UPDATE workflow_runs SET steps_left = steps_left - 1, step_failed = step_failed OR v_state = 'failed'
     WHERE id = NEW.workflow_run_id;
    PERFORM workflow_advance(NEW.workflow_run_id, ARRAY(
        SELECT e.to_step FROM workflow_version_edges e
         WHERE e.version_id = (SELECT version_id FROM workflow_runs WHERE id = NEW.workflow_run_id)
           AND e.from_step = NEW.workflow_step
         ORDER BY e.to_step));
    RETURN NULL;
END
$$;
-- +goose StatementEnd

ALTER TABLE tasks DROP COLUMN step_outputs;
