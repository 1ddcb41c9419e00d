-- +goose Up
-- Schema v11: workflows, the rest of issue 16 (docs/workflows.md).
--
-- Shell step outputs: a shell task writes KEY=VALUE lines to the file named by
-- $BATON_OUTPUT; its worker reads it after the process tree exited and reports
-- it as a JSON object in tasks.step_outputs, in the same fenced TaskFinish
-- statement as the result, so the trigger stores it as the step's outputs in
-- that transaction (a zombie's late result changes no row, so no output).
--
-- Map steps fan out over a JSON array (workflow_run_map_items, one task per
-- item as the step's parallelism allows) and end when every item has;
-- sub-workflow steps start a child run and end with it. Both advance in the
-- transaction that ends an item's task or the child run, like any step.
--
-- The workflow functions' entry points (the trigger functions and those the
-- queries call) get search_path set to baton's schema (the schema these
-- migrations run in); the helpers they call run under it. They no longer
-- depend on the search_path of the statement that fires them (a manual UPDATE
-- of baton.tasks from psql). Helpers are not pinned themselves: a SET on a
-- function costs a GUC save and restore per call, and they are called per
-- step.

ALTER TABLE tasks ADD COLUMN step_outputs jsonb,
    ADD COLUMN workflow_item integer;
COMMENT ON COLUMN tasks.step_outputs IS 'A succeeded shell task''s $BATON_OUTPUT (KEY=VALUE lines) as a JSON object of strings: its workflow step''s outputs. NULL: none.';
COMMENT ON COLUMN tasks.workflow_item IS 'For a map step''s task: the index of its item in workflow_run_map_items (NULL: the step''s own task).';

ALTER TABLE workflow_version_steps
    ADD COLUMN map_over text,
    ADD COLUMN map_max_items integer NOT NULL DEFAULT 0,
    ADD COLUMN map_parallelism integer NOT NULL DEFAULT 0,
    ADD COLUMN sub_workflow text,
    ADD COLUMN sub_params jsonb;
COMMENT ON COLUMN workflow_version_steps.map_over IS 'A map step: the reference (${params.P} or ${steps.S.outputs.K}) resolving to the JSON array it fans out over; NULL: not a map step.';
COMMENT ON COLUMN workflow_version_steps.map_max_items IS 'A map step fails when its array has more items.';
COMMENT ON COLUMN workflow_version_steps.map_parallelism IS 'At most this many item tasks queued or running at once (0: no bound).';
COMMENT ON COLUMN workflow_version_steps.sub_workflow IS 'A sub-workflow step: the workflow whose latest version it starts as a child run; NULL: not one.';
COMMENT ON COLUMN workflow_version_steps.sub_params IS 'The child run''s parameters (string values, references resolved when the step becomes ready).';

ALTER TABLE workflow_runs ADD COLUMN parent_run_id bigint REFERENCES workflow_runs (id) ON DELETE CASCADE,
    ADD COLUMN parent_step text,
    ADD CONSTRAINT workflow_runs_parent CHECK ((parent_run_id IS NULL) = (parent_step IS NULL));
COMMENT ON COLUMN workflow_runs.parent_run_id IS 'A child run: the run whose sub-workflow step started it (and completes with it).';
CREATE INDEX workflow_runs_parent ON workflow_runs (parent_run_id) WHERE parent_run_id IS NOT NULL;

ALTER TABLE workflow_run_steps ADD COLUMN child_run_id bigint;
COMMENT ON COLUMN workflow_run_steps.child_run_id IS 'A sub-workflow step: its current child run (a rerun starts another).';

-- Upstream outcome counters: a step's trigger rule is decided from them in
-- O(1) (counting its upstream rows at each upstream's end made a fan-in of n
-- steps O(n^2)). Kept by workflow_count_ended under the run's lock; a rerun
-- recomputes them.
ALTER TABLE workflow_run_steps ADD COLUMN up_total integer NOT NULL DEFAULT 0,
    ADD COLUMN up_done integer NOT NULL DEFAULT 0,
    ADD COLUMN up_succeeded integer NOT NULL DEFAULT 0,
    ADD COLUMN up_failed integer NOT NULL DEFAULT 0,
    ADD COLUMN up_skipped integer NOT NULL DEFAULT 0;
COMMENT ON COLUMN workflow_run_steps.up_total IS 'Upstream steps (depends_on).';
COMMENT ON COLUMN workflow_run_steps.up_done IS 'Upstream steps ended; up_succeeded, up_failed (failed, upstream_failed, canceled) and up_skipped split them.';
UPDATE workflow_run_steps s
   SET up_total = c.total, up_done = c.done, up_succeeded = c.succ, up_failed = c.fail, up_skipped = c.skip
  FROM (SELECT s2.run_id, s2.name, count(u.name) AS total,
               count(u.name) FILTER (WHERE u.state IN ('succeeded', 'failed', 'skipped', 'upstream_failed', 'canceled')) AS done,
               count(u.name) FILTER (WHERE u.state = 'succeeded') AS succ,
               count(u.name) FILTER (WHERE u.state IN ('failed', 'upstream_failed', 'canceled')) AS fail,
               count(u.name) FILTER (WHERE u.state = 'skipped') AS skip
          FROM workflow_run_steps s2
          JOIN workflow_runs r ON r.id = s2.run_id
          JOIN workflow_version_edges e ON e.version_id = r.version_id AND e.to_step = s2.name
          JOIN workflow_run_steps u ON u.run_id = s2.run_id AND u.name = e.from_step
         GROUP BY s2.run_id, s2.name) AS c
 WHERE s.run_id = c.run_id AND s.name = c.name;

CREATE TABLE workflow_run_map_items (
    run_id  bigint NOT NULL,
    step    text NOT NULL,
    idx     integer NOT NULL,
    item    jsonb NOT NULL,
    state   text NOT NULL DEFAULT 'pending',
    task_id bigint,
    output  jsonb,
    error   text NOT NULL DEFAULT '',
    PRIMARY KEY (run_id, step, idx),
    FOREIGN KEY (run_id, step) REFERENCES workflow_run_steps (run_id, name) ON DELETE CASCADE,
    CONSTRAINT workflow_run_map_items_state CHECK (state IN ('pending', 'queued', 'running', 'succeeded', 'failed', 'canceled'))
);
COMMENT ON TABLE workflow_run_map_items IS 'The items a map step fans out over: each gets a task (tasks.workflow_item = idx) once the step''s parallelism allows; the step ends when every item has.';
CREATE INDEX workflow_run_map_items_open ON workflow_run_map_items (run_id, step, idx) WHERE state IN ('pending', 'queued', 'running');

-- A step's task (its own, or a map item's), claimable at once; raises if it
-- cannot be stored (the callers fail the step or item then).
-- +goose StatementBegin
CREATE FUNCTION workflow_step_task(p_run bigint, st workflow_version_steps, p_payload jsonb, p_item integer) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_task bigint;
    v_base bigint;
    v_max bigint;
BEGIN
    v_base := CASE WHEN st.retry_base_ms >= 0 THEN st.retry_base_ms
                   ELSE coalesce((SELECT wg.retry_base_ms FROM worker_groups wg WHERE wg.name = st.group_name), 1000) END;
    v_max := greatest(CASE WHEN st.retry_max_ms >= 0 THEN st.retry_max_ms
                           ELSE coalesce((SELECT wg.retry_max_ms FROM worker_groups wg WHERE wg.name = st.group_name), 300000) END, v_base);
    INSERT INTO tasks (group_name, kind, payload, priority, max_retries, timeout_ms, retry_base_ms, retry_max_ms,
                       workflow_run_id, workflow_step, workflow_item)
    VALUES (st.group_name, st.kind, p_payload, st.priority, st.max_retries, st.timeout_ms, v_base, v_max, p_run, st.name, p_item)
    RETURNING id INTO v_task;
    RETURN v_task;
END
$$;
-- +goose StatementEnd

-- ${map.item} and ${map.index} in a map item's payload (inside JSON strings):
-- a string item as its text, any other item as its JSON.
-- +goose StatementBegin
CREATE FUNCTION workflow_map_payload(p_payload jsonb, p_item jsonb, p_idx integer) RETURNS jsonb LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    txt text := p_payload::text;
    val text;
BEGIN
    IF position('${map.' IN txt) = 0 THEN
        RETURN p_payload;
    END IF;
    val := to_json(CASE WHEN jsonb_typeof(p_item) = 'string' THEN p_item #>> '{}' ELSE p_item::text END)::text;
    txt := replace(txt, '${map.item}', substr(val, 2, length(val) - 2));
    txt := replace(txt, '${map.index}', p_idx::text);
    RETURN txt::jsonb;
END
$$;
-- +goose StatementEnd

-- The array a map step fans out over: its map_over reference resolved, parsed
-- as JSON; raises naming the problem (not JSON, not an array, too many items).
-- +goose StatementBegin
CREATE FUNCTION workflow_map_array(p_run bigint, st workflow_version_steps, p_params jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_txt text;
    v jsonb;
BEGIN
    v_txt := workflow_resolve(to_jsonb(st.map_over), p_run, p_params) #>> '{}';
    BEGIN
        v := v_txt::jsonb;
    EXCEPTION WHEN OTHERS THEN
        RAISE EXCEPTION 'map over %: not JSON: %', st.map_over, left(v_txt, 80);
    END;
    IF jsonb_typeof(v) <> 'array' THEN
        RAISE EXCEPTION 'map over %: a JSON %, not an array', st.map_over, jsonb_typeof(v);
    END IF;
    IF jsonb_array_length(v) > st.map_max_items THEN
        RAISE EXCEPTION 'map over %: % items, over the step''s max_items %', st.map_over, jsonb_array_length(v), st.map_max_items;
    END IF;
    RETURN v;
END
$$;
-- +goose StatementEnd

-- Gives tasks to a map step's pending items while its parallelism allows and
-- the run is running; an item whose task cannot be stored fails. Wakes the
-- group's workers at commit.
-- +goose StatementBegin
CREATE FUNCTION workflow_map_fill(p_run bigint, p_step text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    r workflow_runs%ROWTYPE;
    st workflow_version_steps%ROWTYPE;
    it record;
    v_live int := 0;
    v_room int;
    v_payload jsonb;
    v_task bigint;
    v_err text;
    v_n int := 0;
    v_base bigint;
    v_max bigint;
BEGIN
    SELECT * INTO r FROM workflow_runs WHERE id = p_run;
    IF r.state <> 'running' THEN
        RETURN;
    END IF;
    SELECT * INTO st FROM workflow_version_steps WHERE version_id = r.version_id AND name = p_step;
    IF st.map_parallelism > 0 THEN
        SELECT count(*) INTO v_live FROM workflow_run_map_items
         WHERE run_id = p_run AND step = p_step AND state IN ('queued', 'running');
        v_room := greatest(st.map_parallelism - v_live, 0);
        IF v_room = 0 THEN
            RETURN;
        END IF;
    END IF;
    v_payload := workflow_resolve(st.payload, p_run, r.params);
    v_base := CASE WHEN st.retry_base_ms >= 0 THEN st.retry_base_ms
                   ELSE coalesce((SELECT wg.retry_base_ms FROM worker_groups wg WHERE wg.name = st.group_name), 1000) END;
    v_max := greatest(CASE WHEN st.retry_max_ms >= 0 THEN st.retry_max_ms
                           ELSE coalesce((SELECT wg.retry_max_ms FROM worker_groups wg WHERE wg.name = st.group_name), 300000) END, v_base);
    -- The next pending items' tasks in one statement, in item order.
    BEGIN
        WITH ins AS (
            INSERT INTO tasks (group_name, kind, payload, priority, max_retries, timeout_ms, retry_base_ms, retry_max_ms,
                               workflow_run_id, workflow_step, workflow_item)
            SELECT st.group_name, st.kind, workflow_map_payload(v_payload, i.item, i.idx), st.priority, st.max_retries, st.timeout_ms,
                   v_base, v_max, p_run, p_step, i.idx
              FROM workflow_run_map_items i
             WHERE i.run_id = p_run AND i.step = p_step AND i.state = 'pending'
             ORDER BY i.idx
             LIMIT v_room
            RETURNING tasks.id, tasks.workflow_item
        )
        UPDATE workflow_run_map_items m SET state = 'queued', task_id = ins.id
          FROM ins WHERE m.run_id = p_run AND m.step = p_step AND m.idx = ins.workflow_item AND m.state = 'pending';
        GET DIAGNOSTICS v_n = ROW_COUNT;
    EXCEPTION WHEN OTHERS THEN
        -- One cannot be stored (a resolved payload over 1 MiB, the group
        -- deleted): one by one, each that fails fails its item.
        v_n := 0;
        FOR it IN SELECT i.idx, i.item FROM workflow_run_map_items i
                   WHERE i.run_id = p_run AND i.step = p_step AND i.state = 'pending' ORDER BY i.idx LIMIT v_room LOOP
            BEGIN
                v_task := workflow_step_task(p_run, st, workflow_map_payload(v_payload, it.item, it.idx), it.idx);
            EXCEPTION WHEN OTHERS THEN
                v_task := NULL;
                v_err := 'task could not be created: ' || SQLERRM;
            END;
            IF v_task IS NULL THEN
                UPDATE workflow_run_map_items SET state = 'failed', error = v_err
                 WHERE run_id = p_run AND step = p_step AND idx = it.idx AND state = 'pending';
            ELSE
                UPDATE workflow_run_map_items SET state = 'queued', task_id = v_task
                 WHERE run_id = p_run AND step = p_step AND idx = it.idx AND state = 'pending';
                v_n := v_n + 1;
            END IF;
        END LOOP;
    END;
    IF v_n > 0 THEN
        PERFORM pg_notify('baton_claim', 'g:' || st.group_name);
    END IF;
END
$$;
-- +goose StatementEnd

-- A step ended as p_state (the caller set it terminal under the run's lock):
-- the run counts it, its successors' upstream counters count it; returns the
-- successors to decide.
-- +goose StatementBegin
CREATE FUNCTION workflow_count_ended(p_run bigint, p_step text, p_state text) RETURNS text[] LANGUAGE plpgsql AS $$
DECLARE
    v_version bigint;
    v_next text[];
BEGIN
    UPDATE workflow_runs SET steps_left = steps_left - 1, step_failed = step_failed OR p_state = 'failed'
     WHERE id = p_run RETURNING version_id INTO v_version;
    WITH up AS (
        UPDATE workflow_run_steps s
           SET up_done = s.up_done + 1,
               up_succeeded = s.up_succeeded + (p_state = 'succeeded')::int,
               up_failed = s.up_failed + (p_state IN ('failed', 'upstream_failed', 'canceled'))::int,
               up_skipped = s.up_skipped + (p_state = 'skipped')::int
          FROM workflow_version_edges e
         WHERE e.version_id = v_version AND e.from_step = p_step AND s.run_id = p_run AND s.name = e.to_step
        RETURNING s.name
    )
    SELECT coalesce(array_agg(up.name ORDER BY up.name), '{}') INTO v_next FROM up;
    RETURN v_next;
END
$$;
-- +goose StatementEnd

-- A step ended (the caller set it terminal under the run's lock): count it,
-- and decide its successors.
-- +goose StatementBegin
CREATE FUNCTION workflow_step_ended(p_run bigint, p_step text, p_state text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM workflow_advance(p_run, workflow_count_ended(p_run, p_step, p_state));
END
$$;
-- +goose StatementEnd

-- A map step's progress, under its run's lock: more items started if the run
-- is running; pending items canceled if it ended; the step ended once every
-- item has (failed if one failed, else canceled if one was, else succeeded),
-- its outputs {"results": [each item's outputs, in item order], "count": N}.
-- Returns true when the step ended.
-- +goose StatementBegin
CREATE FUNCTION workflow_map_progress(p_run bigint, p_step text) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    v_run_state text;
    v_state text;
    v_output jsonb;
    v_err text;
    v_size bigint;
BEGIN
    SELECT state INTO v_run_state FROM workflow_runs WHERE id = p_run;
    IF v_run_state = 'running' THEN
        PERFORM workflow_map_fill(p_run, p_step);
    ELSIF v_run_state <> 'paused' THEN
        UPDATE workflow_run_map_items SET state = 'canceled', error = 'not started: the run is ' || v_run_state
         WHERE run_id = p_run AND step = p_step AND state = 'pending';
    END IF;
    -- An open item left (the partial index finds one at once): not yet.
    PERFORM 1 FROM workflow_run_map_items
     WHERE run_id = p_run AND step = p_step AND state IN ('pending', 'queued', 'running') LIMIT 1;
    IF FOUND THEN
        RETURN false;
    END IF;
    SELECT CASE WHEN count(*) FILTER (WHERE state = 'failed') > 0 THEN 'failed'
                WHEN count(*) FILTER (WHERE state = 'canceled') > 0 THEN 'canceled' ELSE 'succeeded' END,
           coalesce(sum(octet_length(output::text)), 0)
      INTO v_state, v_size
      FROM workflow_run_map_items WHERE run_id = p_run AND step = p_step;
    IF v_size > 1048576 THEN
        -- The results would make every payload that references them too big
        -- (and a huge row): the step fails, naming why, and stores none.
        v_output := NULL;
        IF v_state = 'succeeded' THEN
            v_state := 'failed';
            v_err := 'map results over 1 MiB (' || v_size || ' bytes of item outputs): no output stored';
        END IF;
    ELSE
        SELECT jsonb_build_object('results', coalesce(jsonb_agg(coalesce(output, 'null'::jsonb) ORDER BY idx), '[]'::jsonb), 'count', count(*))
          INTO v_output
          FROM workflow_run_map_items WHERE run_id = p_run AND step = p_step;
    END IF;
    IF v_err IS NULL THEN
        SELECT 'item ' || idx || ': ' || error INTO v_err FROM workflow_run_map_items
         WHERE run_id = p_run AND step = p_step AND state = v_state ORDER BY idx LIMIT 1;
    END IF;
    UPDATE workflow_run_steps SET state = v_state, finished_at = now(), output = v_output,
                                  error = CASE WHEN v_state = 'succeeded' THEN '' ELSE coalesce(v_err, '') END
     WHERE run_id = p_run AND name = p_step AND state IN ('queued', 'running');
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM workflow_step_ended(p_run, p_step, v_state);
    RETURN true;
END
$$;
-- +goose StatementEnd

-- A child run's parameters from the parent's resolved strings: each of the
-- child version's parameters given or defaulted, converted to its type; raises
-- naming an unknown, missing or ill-typed one.
-- +goose StatementBegin
CREATE FUNCTION workflow_child_params(p_def jsonb, p_given jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    p jsonb;
    v_name text;
    v_type text;
    v text;
    v_out jsonb := '{}';
    v_unknown text;
BEGIN
    IF jsonb_typeof(p_given) IS DISTINCT FROM 'object' THEN
        p_given := '{}';
    END IF;
    SELECT k INTO v_unknown FROM jsonb_object_keys(coalesce(p_given, '{}')) AS k
     WHERE NOT EXISTS (SELECT 1 FROM jsonb_array_elements(coalesce(p_def -> 'params', '[]')) AS d WHERE d ->> 'name' = k)
     ORDER BY k LIMIT 1;
    IF v_unknown IS NOT NULL THEN
        RAISE EXCEPTION 'unknown parameter "%" of workflow %', v_unknown, p_def ->> 'name';
    END IF;
    FOR p IN SELECT * FROM jsonb_array_elements(coalesce(p_def -> 'params', '[]')) LOOP
        v_name := p ->> 'name';
        v_type := coalesce(nullif(p ->> 'type', ''), 'string');
        IF p_given ? v_name THEN
            v := p_given ->> v_name;
        ELSIF p ? 'default' THEN
            v := p ->> 'default';
        ELSE
            RAISE EXCEPTION 'required parameter "%" of workflow % not set', v_name, p_def ->> 'name';
        END IF;
        BEGIN
            v_out := v_out || jsonb_build_object(v_name, CASE v_type
                WHEN 'int' THEN to_jsonb(trim(v)::bigint)
                WHEN 'number' THEN to_jsonb(trim(v)::float8)
                WHEN 'bool' THEN to_jsonb(trim(v)::boolean)
                ELSE to_jsonb(v) END);
        EXCEPTION WHEN OTHERS THEN
            RAISE EXCEPTION 'parameter "%" of workflow %: % is not a%', v_name, p_def ->> 'name', v,
                CASE v_type WHEN 'int' THEN 'n int' ELSE ' ' || v_type END;
        END;
    END LOOP;
    RETURN v_out;
END
$$;
-- +goose StatementEnd

-- Starts a sub-workflow step's child run: the latest version of the step's
-- workflow, parameters resolved and typed, linked to its parent step after
-- its start (so a child that ends at start is reported by the caller, not by
-- workflow_child_finished). Raises naming the problem.
-- +goose StatementBegin
CREATE FUNCTION workflow_child_start(p_run bigint, st workflow_version_steps, p_params jsonb) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_version bigint;
    v_def jsonb;
    v_depth int;
    v_child bigint;
BEGIN
    WITH RECURSIVE up(id, parent, depth) AS (
        SELECT id, parent_run_id, 1 FROM workflow_runs WHERE id = p_run
        UNION ALL
        SELECT r.id, r.parent_run_id, up.depth + 1 FROM workflow_runs r JOIN up ON r.id = up.parent WHERE up.depth < 20
    )
    SELECT max(depth) INTO v_depth FROM up;
    IF v_depth >= 10 THEN
        RAISE EXCEPTION 'sub-workflows nested deeper than 10 runs';
    END IF;
    SELECT v.id, v.definition INTO v_version, v_def
      FROM workflows w JOIN workflow_versions v ON v.workflow_id = w.id AND v.version = w.latest_version
     WHERE w.name = st.sub_workflow;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'workflow % not found', st.sub_workflow;
    END IF;
    SELECT s.run_id INTO v_child
      FROM workflow_start(v_version, workflow_child_params(v_def, workflow_resolve(coalesce(st.sub_params, '{}'), p_run, p_params)),
                          coalesce(nullif(v_def ->> 'failure_strategy', ''), 'continue'), NULL,
                          CASE WHEN coalesce(v_def ->> 'timeout', '') <> ''
                               THEN (extract(epoch FROM (v_def ->> 'timeout')::interval) * 1000)::bigint ELSE 0 END) AS s;
    UPDATE workflow_runs SET parent_run_id = p_run, parent_step = st.name WHERE id = v_child;
    RETURN v_child;
END
$$;
-- +goose StatementEnd

-- A child run ended (finished, or ended by a control or its timeout): its
-- parent step ends with it in the same transaction — succeeded, failed, or
-- canceled (the child was canceled or stopped) — and the parent advances.
-- Lock order child run, then parent run.
-- +goose StatementBegin
CREATE FUNCTION workflow_child_finished(p_child bigint) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    c workflow_runs%ROWTYPE;
    v_state text;
BEGIN
    SELECT * INTO c FROM workflow_runs WHERE id = p_child;
    IF c.parent_run_id IS NULL THEN
        RETURN;
    END IF;
    PERFORM 1 FROM workflow_runs WHERE id = c.parent_run_id FOR UPDATE;
    v_state := CASE c.state WHEN 'succeeded' THEN 'succeeded' WHEN 'failed' THEN 'failed' ELSE 'canceled' END;
    UPDATE workflow_run_steps SET state = v_state, finished_at = now(),
                                  output = jsonb_build_object('run_id', c.id::text, 'state', c.state),
                                  error = CASE WHEN v_state = 'succeeded' THEN ''
                                               ELSE 'sub-workflow run ' || c.id || ' ' || c.state || coalesce(': ' || nullif(c.error, ''), '') END
     WHERE run_id = c.parent_run_id AND name = c.parent_step AND child_run_id = c.id AND state IN ('queued', 'running');
    IF FOUND THEN
        PERFORM workflow_step_ended(c.parent_run_id, c.parent_step, v_state);
    END IF;
END
$$;
-- +goose StatementEnd

-- Start: each step's upstream count stored with it (workflow_advance decides
-- from the counters).
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION workflow_start(p_version bigint, p_params jsonb, p_strategy text, p_key text, p_timeout_ms bigint,
                               OUT run_id bigint, OUT created boolean) LANGUAGE plpgsql AS $$
DECLARE
    v_workflow bigint;
BEGIN
    SELECT workflow_id INTO STRICT v_workflow FROM workflow_versions WHERE id = p_version;
    INSERT INTO workflow_runs (workflow_id, version_id, params, failure_strategy, idempotency_key, steps_left, deadline)
    VALUES (v_workflow, p_version, p_params, p_strategy, p_key,
            (SELECT count(*) FROM workflow_version_steps WHERE version_id = p_version),
            CASE WHEN p_timeout_ms > 0 THEN now() + p_timeout_ms * interval '1 millisecond' END)
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING id INTO run_id;
    IF run_id IS NULL THEN
        SELECT id INTO STRICT run_id FROM workflow_runs WHERE idempotency_key = p_key;
        created := false;
        RETURN;
    END IF;
    created := true;
    INSERT INTO workflow_run_steps (run_id, name, up_total)
    SELECT run_id, s.name, (SELECT count(*) FROM workflow_version_edges e WHERE e.version_id = p_version AND e.to_step = s.name)
      FROM workflow_version_steps s WHERE s.version_id = p_version ORDER BY s.position;
    PERFORM workflow_advance(run_id, ARRAY(
        SELECT s.name FROM workflow_version_steps s
         WHERE s.version_id = p_version
           AND NOT EXISTS (SELECT 1 FROM workflow_version_edges e WHERE e.version_id = p_version AND e.to_step = s.name)
         ORDER BY s.position));
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION workflow_advance(p_run bigint, p_steps text[]) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    r workflow_runs%ROWTYPE;
    st workflow_version_steps%ROWTYPE;
    work text[] := p_steps;
    cur text;
    n_total int; n_succ int; n_fail int; n_skip int; n_done int;
    decision text;
    v_task bigint;
    v_err text;
    v_output jsonb;
    v_items jsonb;
    v_child bigint;
    v_child_state text;
    v_ready text[] := '{}';
    v_failed text[];
    v_g text[];
    v_groups text[] := '{}';
    g text;
BEGIN
    SELECT * INTO r FROM workflow_runs WHERE id = p_run;
    LOOP
        WHILE cardinality(work) > 0 LOOP
            cur := work[1];
            work := work[2:];
            CONTINUE WHEN cur = ANY (v_ready); -- decided to run already; its task comes below
            SELECT s.up_total, s.up_succeeded, s.up_failed, s.up_skipped, s.up_done INTO n_total, n_succ, n_fail, n_skip, n_done
              FROM workflow_run_steps s WHERE s.run_id = p_run AND s.name = cur AND s.state = 'pending';
            CONTINUE WHEN NOT FOUND;
            SELECT * INTO st FROM workflow_version_steps WHERE version_id = r.version_id AND name = cur;
            decision := workflow_trigger_decision(st.trigger_rule, n_total, n_succ, n_fail, n_skip, n_done);
            CONTINUE WHEN decision = 'wait';
            v_err := '';
            v_output := NULL;
            IF decision = 'run' THEN
                IF r.state = 'paused' THEN
                    CONTINUE; -- resume decides it again
                ELSIF r.state <> 'running' OR (r.failure_strategy = 'end' AND r.step_failed) THEN
                    decision := 'canceled';
                    v_err := CASE WHEN r.state = 'running' THEN 'not started: a step failed and the run''s failure strategy is end'
                                  ELSE 'not started: the run is ' || r.state END;
                ELSIF st.sub_workflow IS NOT NULL THEN
                    -- A sub-workflow step: its child run, started now; the step
                    -- ends when the child does (workflow_child_finished).
                    BEGIN
                        v_child := workflow_child_start(p_run, st, r.params);
                    EXCEPTION WHEN OTHERS THEN
                        v_child := NULL;
                        v_err := 'sub-workflow could not be started: ' || SQLERRM;
                    END;
                    IF v_child IS NULL THEN
                        decision := 'failed';
                    ELSE
                        SELECT state INTO v_child_state FROM workflow_runs WHERE id = v_child;
                        UPDATE workflow_run_steps SET state = 'running', child_run_id = v_child, task_count = task_count + 1, ready_at = now()
                         WHERE run_id = p_run AND name = cur AND state = 'pending';
                        CONTINUE WHEN v_child_state IN ('running', 'paused');
                        -- The child ended at its start (every step decided at once).
                        decision := CASE v_child_state WHEN 'succeeded' THEN 'succeeded' WHEN 'failed' THEN 'failed' ELSE 'canceled' END;
                        v_output := jsonb_build_object('run_id', v_child::text, 'state', v_child_state);
                        IF decision <> 'succeeded' THEN
                            v_err := 'sub-workflow run ' || v_child || ' ' || v_child_state;
                        END IF;
                    END IF;
                ELSIF st.map_over IS NOT NULL THEN
                    -- A map step: one item per element, tasks given as the step's
                    -- parallelism allows; the step ends when every item has.
                    BEGIN
                        v_items := workflow_map_array(p_run, st, r.params);
                    EXCEPTION WHEN OTHERS THEN
                        v_items := NULL;
                        v_err := SQLERRM;
                    END;
                    IF v_items IS NULL THEN
                        decision := 'failed';
                    ELSE
                        INSERT INTO workflow_run_map_items (run_id, step, idx, item)
                        SELECT p_run, cur, (o.i - 1)::int, o.v FROM jsonb_array_elements(v_items) WITH ORDINALITY AS o(v, i);
                        UPDATE workflow_run_steps SET state = 'running', task_count = task_count + 1, ready_at = now()
                         WHERE run_id = p_run AND name = cur AND state = 'pending';
                        -- Ends it at once if it has no item (or none could be given a task).
                        PERFORM workflow_map_progress(p_run, cur);
                        SELECT * INTO r FROM workflow_runs WHERE id = p_run;
                        CONTINUE;
                    END IF;
                ELSE
                    -- A task step: its task is inserted below, with every other
                    -- step readied by this advancement, in one statement.
                    v_ready := v_ready || cur;
                    CONTINUE;
                END IF;
            END IF;
            -- Decided without running (or ended at once): terminal now; its
            -- successors may be decided by it.
            UPDATE workflow_run_steps SET state = decision, finished_at = now(), error = v_err, output = v_output
             WHERE run_id = p_run AND name = cur AND state IN ('pending', 'running');
            work := work || workflow_count_ended(p_run, cur, decision);
            SELECT * INTO r FROM workflow_runs WHERE id = p_run;
        END LOOP;
        EXIT WHEN cardinality(v_ready) = 0;
        -- The readied task steps' tasks (queued, claimable exactly like
        -- submitted tasks, payload references resolved), in definition order.
        v_failed := '{}';
        BEGIN
            WITH ins AS (
                INSERT INTO tasks (group_name, kind, payload, priority, max_retries, timeout_ms, retry_base_ms, retry_max_ms,
                                   workflow_run_id, workflow_step)
                SELECT vs.group_name, vs.kind, workflow_resolve(vs.payload, p_run, r.params), vs.priority, vs.max_retries, vs.timeout_ms,
                       b.base, greatest(b.maxv, b.base), p_run, vs.name
                  FROM workflow_version_steps vs
                  LEFT JOIN worker_groups wg ON wg.name = vs.group_name
                 CROSS JOIN LATERAL (SELECT CASE WHEN vs.retry_base_ms >= 0 THEN vs.retry_base_ms ELSE coalesce(wg.retry_base_ms, 1000) END AS base,
                                            CASE WHEN vs.retry_max_ms >= 0 THEN vs.retry_max_ms ELSE coalesce(wg.retry_max_ms, 300000) END AS maxv) AS b
                 WHERE vs.version_id = r.version_id AND vs.name = ANY (v_ready)
                 ORDER BY vs.position
                RETURNING tasks.id, tasks.workflow_step, tasks.group_name
            ), upd AS (
                UPDATE workflow_run_steps s SET state = 'queued', task_id = ins.id, task_count = s.task_count + 1, ready_at = now()
                  FROM ins WHERE s.run_id = p_run AND s.name = ins.workflow_step AND s.state = 'pending'
                RETURNING ins.group_name
            )
            SELECT coalesce(array_agg(DISTINCT upd.group_name), '{}') INTO v_g FROM upd;
        EXCEPTION WHEN OTHERS THEN
            -- One of them cannot be stored (its group was deleted, a resolved
            -- payload over 1 MiB): one by one, each that fails fails its step;
            -- the result that readied them is still recorded.
            v_g := '{}';
            FOREACH cur IN ARRAY v_ready LOOP
                SELECT * INTO st FROM workflow_version_steps WHERE version_id = r.version_id AND name = cur;
                BEGIN
                    v_task := workflow_step_task(p_run, st, workflow_resolve(st.payload, p_run, r.params), NULL);
                EXCEPTION WHEN OTHERS THEN
                    v_task := NULL;
                    v_err := 'task could not be created: ' || SQLERRM;
                END;
                IF v_task IS NULL THEN
                    UPDATE workflow_run_steps SET state = 'failed', finished_at = now(), error = v_err
                     WHERE run_id = p_run AND name = cur AND state = 'pending';
                    v_failed := v_failed || cur;
                ELSE
                    UPDATE workflow_run_steps SET state = 'queued', task_id = v_task, task_count = task_count + 1, ready_at = now()
                     WHERE run_id = p_run AND name = cur AND state = 'pending';
                    v_g := v_g || st.group_name;
                END IF;
            END LOOP;
        END;
        FOREACH g IN ARRAY v_g LOOP
            IF NOT g = ANY (v_groups) THEN
                v_groups := v_groups || g;
            END IF;
        END LOOP;
        v_ready := '{}';
        FOREACH cur IN ARRAY v_failed LOOP
            work := work || workflow_count_ended(p_run, cur, 'failed');
        END LOOP;
        SELECT * INTO r FROM workflow_runs WHERE id = p_run;
    END LOOP;
    -- One wake-up per group (Postgres also folds equal notifications of a
    -- transaction into one), on the channel submit uses; delivered at commit.
    FOREACH g IN ARRAY v_groups LOOP
        PERFORM pg_notify('baton_claim', 'g:' || g);
    END LOOP;
    PERFORM workflow_finish_if_done(p_run);
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION workflow_finish_if_done(p_run bigint) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    UPDATE workflow_runs r
       SET state = CASE WHEN EXISTS (SELECT 1 FROM workflow_run_steps s WHERE s.run_id = r.id
                                       AND s.state IN ('failed', 'upstream_failed', 'canceled'))
                        THEN 'failed' ELSE 'succeeded' END,
           finished_at = now()
     WHERE r.id = p_run AND r.steps_left = 0 AND r.state IN ('running', 'paused');
    IF FOUND THEN
        PERFORM pg_notify('baton_run_finished', p_run::text);
        PERFORM workflow_child_finished(p_run);
    END IF;
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
        -- A requeue (retry, snooze, failover; claims and dispatches fire no
        -- trigger since schema v11): the step or item stays queued (reads show
        -- running from the task). The run row is read FOR SHARE so a requeue
        -- sees a pause committed before it, and is held then.
        SELECT state INTO v_run_state FROM workflow_runs WHERE id = NEW.workflow_run_id FOR SHARE;
        IF v_run_state = 'paused' THEN
            UPDATE tasks SET available_at = 'infinity' WHERE id = NEW.id AND state = 'queued';
        END IF;
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
    IF NEW.workflow_item IS NOT NULL THEN
        -- A map item: only its current task speaks for it, once.
        UPDATE workflow_run_map_items SET state = v_state, output = v_output,
                                          error = CASE WHEN v_state = 'succeeded' THEN '' ELSE NEW.last_error END
         WHERE run_id = NEW.workflow_run_id AND step = NEW.workflow_step AND idx = NEW.workflow_item AND task_id = NEW.id
           AND state IN ('queued', 'running');
        IF FOUND THEN
            PERFORM workflow_map_progress(NEW.workflow_run_id, NEW.workflow_step);
        END IF;
        RETURN NULL;
    END IF;
    UPDATE workflow_run_steps SET state = v_state, finished_at = now(), output = v_output,
                                  error = CASE WHEN v_state = 'succeeded' THEN '' ELSE NEW.last_error END
     WHERE run_id = NEW.workflow_run_id AND name = NEW.workflow_step AND task_id = NEW.id
       AND state IN ('queued', 'running');
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    PERFORM workflow_step_ended(NEW.workflow_run_id, NEW.workflow_step, v_state);
    RETURN NULL;
END
$$;
-- +goose StatementEnd

-- Pause cascades to the child runs of running sub-workflow steps.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION workflow_pause(p_run bigint) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    UPDATE workflow_runs SET state = 'paused' WHERE id = p_run AND state = 'running';
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    UPDATE tasks SET available_at = 'infinity' WHERE workflow_run_id = p_run AND state = 'queued';
    PERFORM workflow_pause(s.child_run_id) FROM workflow_run_steps s
     WHERE s.run_id = p_run AND s.child_run_id IS NOT NULL AND s.state IN ('queued', 'running');
    RETURN true;
END
$$;
-- +goose StatementEnd

-- Resume: held tasks claimable again, pending steps decided again, map steps
-- given the item tasks the pause held back, child runs resumed.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION workflow_resume(p_run bigint) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    v_version bigint;
    c record;
BEGIN
    UPDATE workflow_runs SET state = 'running' WHERE id = p_run AND state = 'paused' RETURNING version_id INTO v_version;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    UPDATE tasks SET available_at = now() WHERE workflow_run_id = p_run AND state = 'queued' AND available_at = 'infinity';
    FOR c IN SELECT rs.name, rs.child_run_id FROM workflow_run_steps rs
              WHERE rs.run_id = p_run AND rs.state IN ('queued', 'running')
                AND (rs.child_run_id IS NOT NULL OR EXISTS (SELECT 1 FROM workflow_run_map_items i WHERE i.run_id = p_run AND i.step = rs.name))
              ORDER BY rs.name LOOP
        IF c.child_run_id IS NOT NULL THEN
            PERFORM workflow_resume(c.child_run_id);
        ELSE
            PERFORM workflow_map_progress(p_run, c.name);
        END IF;
    END LOOP;
    PERFORM workflow_advance(p_run, ARRAY(
        SELECT s.name FROM workflow_run_steps s JOIN workflow_version_steps v ON v.version_id = v_version AND v.name = s.name
         WHERE s.run_id = p_run AND s.state = 'pending' ORDER BY v.position));
    RETURN true;
END
$$;
-- +goose StatementEnd

-- Ends a running or paused run as canceled, stopped or (run timeout) failed:
-- its pending steps and map items end canceled at once, the child runs of its
-- sub-workflow steps are ended the same way (their steps end with them), and
-- the ids of its and its children's live tasks are returned for the caller to
-- cancel through the task cancel path (each cancel then ends its step or item
-- through the trigger). A child run ended on its own ends its parent step.
-- Nothing if the run already ended.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION workflow_end(p_run bigint, p_state text, p_reason text) RETURNS SETOF bigint LANGUAGE plpgsql AS $$
DECLARE
    n int;
    c record;
BEGIN
    UPDATE workflow_runs SET state = p_state, finished_at = now(), error = p_reason WHERE id = p_run AND state IN ('running', 'paused');
    IF NOT FOUND THEN
        RETURN;
    END IF;
    UPDATE workflow_run_steps SET state = 'canceled', finished_at = now(), error = p_reason
     WHERE run_id = p_run AND state = 'pending';
    GET DIAGNOSTICS n = ROW_COUNT;
    UPDATE workflow_runs SET steps_left = steps_left - n WHERE id = p_run;
    FOR c IN SELECT rs.name, rs.child_run_id FROM workflow_run_steps rs
              WHERE rs.run_id = p_run AND rs.state IN ('queued', 'running')
                AND (rs.child_run_id IS NOT NULL OR EXISTS (SELECT 1 FROM workflow_run_map_items i WHERE i.run_id = p_run AND i.step = rs.name))
              ORDER BY rs.name LOOP
        IF c.child_run_id IS NOT NULL THEN
            RETURN QUERY SELECT * FROM workflow_end(c.child_run_id, p_state, p_reason);
        ELSE
            PERFORM workflow_map_progress(p_run, c.name);
        END IF;
    END LOOP;
    PERFORM workflow_child_finished(p_run);
    RETURN QUERY SELECT t.id FROM tasks t
                  WHERE t.workflow_run_id = p_run AND t.state IN ('queued', 'dispatched', 'running') ORDER BY t.id;
END
$$;
-- +goose StatementEnd

-- Rerun: also forgets the reset map steps' items and sub-workflow steps' child
-- runs (kept as history); the steps start afresh when decided.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION workflow_rerun(p_run bigint, p_steps text[]) RETURNS int LANGUAGE plpgsql AS $$
DECLARE
    v_version bigint;
    v_reset text[];
BEGIN
    SELECT version_id INTO v_version FROM workflow_runs
     WHERE id = p_run AND state IN ('succeeded', 'failed', 'canceled', 'stopped') FOR UPDATE;
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    WITH RECURSIVE down(name) AS (
        SELECT unnest(p_steps)
        UNION
        SELECT e.to_step FROM workflow_version_edges e JOIN down d ON e.from_step = d.name WHERE e.version_id = v_version
    )
    SELECT array_agg(v.name ORDER BY v.position) INTO v_reset
      FROM workflow_version_steps v WHERE v.version_id = v_version AND v.name IN (SELECT name FROM down);
    IF v_reset IS NULL THEN
        RETURN 0;
    END IF;
    DELETE FROM workflow_run_map_items WHERE run_id = p_run AND step = ANY (v_reset);
    UPDATE workflow_run_steps SET state = 'pending', finished_at = NULL, error = '', output = NULL, ready_at = NULL, child_run_id = NULL
     WHERE run_id = p_run AND name = ANY (v_reset);
    -- Their upstream counters from the upstreams' states now.
    UPDATE workflow_run_steps s
       SET up_done = c.done, up_succeeded = c.succ, up_failed = c.fail, up_skipped = c.skip
      FROM (SELECT e.to_step AS name,
                   count(*) FILTER (WHERE u.state IN ('succeeded', 'failed', 'skipped', 'upstream_failed', 'canceled')) AS done,
                   count(*) FILTER (WHERE u.state = 'succeeded') AS succ,
                   count(*) FILTER (WHERE u.state IN ('failed', 'upstream_failed', 'canceled')) AS fail,
                   count(*) FILTER (WHERE u.state = 'skipped') AS skip
              FROM workflow_version_edges e
              JOIN workflow_run_steps u ON u.run_id = p_run AND u.name = e.from_step
             WHERE e.version_id = v_version AND e.to_step = ANY (v_reset)
             GROUP BY e.to_step) AS c
     WHERE s.run_id = p_run AND s.name = c.name;
    UPDATE workflow_runs r SET state = 'running', finished_at = NULL, error = '', steps_left = cardinality(v_reset),
           step_failed = EXISTS (SELECT 1 FROM workflow_run_steps s WHERE s.run_id = r.id AND s.state = 'failed')
     WHERE r.id = p_run;
    PERFORM workflow_advance(p_run, v_reset);
    RETURN cardinality(v_reset);
END
$$;
-- +goose StatementEnd

-- Claims and dispatches of workflow tasks fire no trigger: a step with a task
-- is stored queued until it ends, and reads show it running while its task
-- runs (a per-row trigger on every claim cost a fan-out of 1,000 steps about
-- 0.3 s). The trigger fires on requeues and ends.
DROP TRIGGER tasks_workflow_step ON tasks;
CREATE TRIGGER tasks_workflow_step AFTER UPDATE OF state ON tasks
    FOR EACH ROW WHEN (NEW.workflow_run_id IS NOT NULL AND NEW.state IS DISTINCT FROM OLD.state
                       AND NEW.state NOT IN ('dispatched', 'running'))
    EXECUTE FUNCTION workflow_task_changed();
UPDATE workflow_run_steps SET state = 'queued' WHERE state = 'running' AND task_id IS NOT NULL;

-- +goose StatementBegin
DO $$
DECLARE
    f text;
BEGIN
    FOREACH f IN ARRAY ARRAY['workflow_task_changed()', 'workflow_start(bigint, jsonb, text, text, bigint)', 'workflow_pause(bigint)', 'workflow_resume(bigint)', 'workflow_end(bigint, text, text)', 'workflow_rerun(bigint, text[])', 'workflow_runs_fire_state()'] LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = %I', f, current_schema());
    END LOOP;
END
$$;
-- +goose StatementEnd

-- +goose Down
DROP TRIGGER tasks_workflow_step ON tasks;
CREATE TRIGGER tasks_workflow_step AFTER UPDATE OF state ON tasks
    FOR EACH ROW WHEN (NEW.workflow_run_id IS NOT NULL AND NEW.state IS DISTINCT FROM OLD.state)
    EXECUTE FUNCTION workflow_task_changed();
UPDATE workflow_run_steps s SET state = 'running' FROM tasks t
 WHERE t.id = s.task_id AND s.state = 'queued' AND t.state IN ('dispatched', 'running');
-- +goose StatementBegin
DO $$
DECLARE
    f text;
BEGIN
    FOREACH f IN ARRAY ARRAY['workflow_task_changed()', 'workflow_start(bigint, jsonb, text, text, bigint)', 'workflow_pause(bigint)', 'workflow_resume(bigint)', 'workflow_end(bigint, text, text)', 'workflow_rerun(bigint, text[])', 'workflow_runs_fire_state()'] LOOP
        EXECUTE format('ALTER FUNCTION %s RESET search_path', f);
    END LOOP;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION workflow_advance(p_run bigint, p_steps text[]) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    r workflow_runs%ROWTYPE;
    st workflow_version_steps%ROWTYPE;
    work text[] := p_steps;
    cur text;
    n_total int; n_succ int; n_fail int; n_skip int; n_done int;
    decision text;
    v_task bigint;
    v_err text;
    v_groups text[] := '{}';
    g text;
BEGIN
    SELECT * INTO r FROM workflow_runs WHERE id = p_run;
    WHILE cardinality(work) > 0 LOOP
        cur := work[1];
        work := work[2:];
        PERFORM 1 FROM workflow_run_steps WHERE run_id = p_run AND name = cur AND state = 'pending';
        CONTINUE WHEN NOT FOUND;
        SELECT * INTO st FROM workflow_version_steps WHERE version_id = r.version_id AND name = cur;
        SELECT count(*), count(*) FILTER (WHERE s.state = 'succeeded'),
               count(*) FILTER (WHERE s.state IN ('failed', 'upstream_failed', 'canceled')),
               count(*) FILTER (WHERE s.state = 'skipped'),
               count(*) FILTER (WHERE s.state IN ('succeeded', 'failed', 'skipped', 'upstream_failed', 'canceled'))
          INTO n_total, n_succ, n_fail, n_skip, n_done
          FROM workflow_version_edges e
          JOIN workflow_run_steps s ON s.run_id = p_run AND s.name = e.from_step
         WHERE e.version_id = r.version_id AND e.to_step = cur;
        decision := workflow_trigger_decision(st.trigger_rule, n_total, n_succ, n_fail, n_skip, n_done);
        CONTINUE WHEN decision = 'wait';
        v_err := '';
        IF decision = 'run' THEN
            IF r.state = 'paused' THEN
                CONTINUE; -- resume decides it again
            ELSIF r.state <> 'running' OR (r.failure_strategy = 'end' AND r.step_failed) THEN
                decision := 'canceled';
                v_err := CASE WHEN r.state = 'running' THEN 'not started: a step failed and the run''s failure strategy is end'
                              ELSE 'not started: the run is ' || r.state END;
            ELSE
                BEGIN
                    INSERT INTO tasks (group_name, kind, payload, priority, max_retries, timeout_ms, retry_base_ms, retry_max_ms,
                                       workflow_run_id, workflow_step)
                    VALUES (st.group_name, st.kind, workflow_resolve(st.payload, p_run, r.params), st.priority, st.max_retries, st.timeout_ms,
                            CASE WHEN st.retry_base_ms >= 0 THEN st.retry_base_ms
                                 ELSE coalesce((SELECT wg.retry_base_ms FROM worker_groups wg WHERE wg.name = st.group_name), 1000) END,
                            greatest(CASE WHEN st.retry_max_ms >= 0 THEN st.retry_max_ms
                                          ELSE coalesce((SELECT wg.retry_max_ms FROM worker_groups wg WHERE wg.name = st.group_name), 300000) END,
                                     CASE WHEN st.retry_base_ms >= 0 THEN st.retry_base_ms
                                          ELSE coalesce((SELECT wg.retry_base_ms FROM worker_groups wg WHERE wg.name = st.group_name), 1000) END),
                            p_run, cur)
                    RETURNING id INTO v_task;
                EXCEPTION WHEN OTHERS THEN
                    -- A task that cannot be stored (its group was deleted, a resolved
                    -- payload over 1 MiB) fails its step; the result that readied it
                    -- is still recorded.
                    v_task := NULL;
                    v_err := 'task could not be created: ' || SQLERRM;
                END;
                IF v_task IS NOT NULL THEN
                    UPDATE workflow_run_steps SET state = 'queued', task_id = v_task, task_count = task_count + 1, ready_at = now()
                     WHERE run_id = p_run AND name = cur AND state = 'pending';
                    IF NOT st.group_name = ANY (v_groups) THEN
                        v_groups := v_groups || st.group_name;
                    END IF;
                    CONTINUE;
                END IF;
                decision := 'failed';
            END IF;
        END IF;
        -- Decided without running (or failed to start): terminal now; its
        -- successors may be decided by it.
        UPDATE workflow_run_steps SET state = decision, finished_at = now(), error = v_err
         WHERE run_id = p_run AND name = cur AND state = 'pending';
        UPDATE workflow_runs SET steps_left = steps_left - 1, step_failed = step_failed OR decision = 'failed'
         WHERE id = p_run RETURNING * INTO r;
        work := work || ARRAY(SELECT e.to_step FROM workflow_version_edges e WHERE e.version_id = r.version_id AND e.from_step = cur);
    END LOOP;
    -- One wake-up per group (Postgres also folds equal notifications of a
    -- transaction into one), on the channel submit uses; delivered at commit.
    FOREACH g IN ARRAY v_groups LOOP
        PERFORM pg_notify('baton_claim', 'g:' || g);
    END LOOP;
    PERFORM workflow_finish_if_done(p_run);
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION workflow_finish_if_done(p_run bigint) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    UPDATE workflow_runs r
       SET state = CASE WHEN EXISTS (SELECT 1 FROM workflow_run_steps s WHERE s.run_id = r.id
                                       AND s.state IN ('failed', 'upstream_failed', 'canceled'))
                        THEN 'failed' ELSE 'succeeded' END,
           finished_at = now()
     WHERE r.id = p_run AND r.steps_left = 0 AND r.state IN ('running', 'paused');
    IF FOUND THEN
        PERFORM pg_notify('baton_run_finished', p_run::text);
    END IF;
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

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION workflow_pause(p_run bigint) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    UPDATE workflow_runs SET state = 'paused' WHERE id = p_run AND state = 'running';
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    UPDATE tasks SET available_at = 'infinity' WHERE workflow_run_id = p_run AND state = 'queued';
    RETURN true;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION workflow_resume(p_run bigint) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    v_version bigint;
BEGIN
    UPDATE workflow_runs SET state = 'running' WHERE id = p_run AND state = 'paused' RETURNING version_id INTO v_version;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    UPDATE tasks SET available_at = now() WHERE workflow_run_id = p_run AND state = 'queued' AND available_at = 'infinity';
    PERFORM workflow_advance(p_run, ARRAY(
        SELECT s.name FROM workflow_run_steps s JOIN workflow_version_steps v ON v.version_id = v_version AND v.name = s.name
         WHERE s.run_id = p_run AND s.state = 'pending' ORDER BY v.position));
    RETURN true;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION workflow_end(p_run bigint, p_state text, p_reason text) RETURNS SETOF bigint LANGUAGE plpgsql AS $$
DECLARE
    n int;
BEGIN
    UPDATE workflow_runs SET state = p_state, finished_at = now(), error = p_reason WHERE id = p_run AND state IN ('running', 'paused');
    IF NOT FOUND THEN
        RETURN;
    END IF;
    UPDATE workflow_run_steps SET state = 'canceled', finished_at = now(), error = p_reason
     WHERE run_id = p_run AND state = 'pending';
    GET DIAGNOSTICS n = ROW_COUNT;
    UPDATE workflow_runs SET steps_left = steps_left - n WHERE id = p_run;
    RETURN QUERY SELECT s.task_id FROM workflow_run_steps s
                  WHERE s.run_id = p_run AND s.state IN ('queued', 'running') ORDER BY s.task_id;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION workflow_rerun(p_run bigint, p_steps text[]) RETURNS int LANGUAGE plpgsql AS $$
DECLARE
    v_version bigint;
    v_reset text[];
BEGIN
    SELECT version_id INTO v_version FROM workflow_runs
     WHERE id = p_run AND state IN ('succeeded', 'failed', 'canceled', 'stopped') FOR UPDATE;
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    WITH RECURSIVE down(name) AS (
        SELECT unnest(p_steps)
        UNION
        SELECT e.to_step FROM workflow_version_edges e JOIN down d ON e.from_step = d.name WHERE e.version_id = v_version
    )
    SELECT array_agg(v.name ORDER BY v.position) INTO v_reset
      FROM workflow_version_steps v WHERE v.version_id = v_version AND v.name IN (SELECT name FROM down);
    IF v_reset IS NULL THEN
        RETURN 0;
    END IF;
    UPDATE workflow_run_steps SET state = 'pending', finished_at = NULL, error = '', output = NULL, ready_at = NULL
     WHERE run_id = p_run AND name = ANY (v_reset);
    UPDATE workflow_runs r SET state = 'running', finished_at = NULL, error = '', steps_left = cardinality(v_reset),
           step_failed = EXISTS (SELECT 1 FROM workflow_run_steps s WHERE s.run_id = r.id AND s.state = 'failed')
     WHERE r.id = p_run;
    PERFORM workflow_advance(p_run, v_reset);
    RETURN cardinality(v_reset);
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION workflow_start(p_version bigint, p_params jsonb, p_strategy text, p_key text, p_timeout_ms bigint,
                               OUT run_id bigint, OUT created boolean) LANGUAGE plpgsql AS $$
DECLARE
    v_workflow bigint;
BEGIN
    SELECT workflow_id INTO STRICT v_workflow FROM workflow_versions WHERE id = p_version;
    INSERT INTO workflow_runs (workflow_id, version_id, params, failure_strategy, idempotency_key, steps_left, deadline)
    VALUES (v_workflow, p_version, p_params, p_strategy, p_key,
            (SELECT count(*) FROM workflow_version_steps WHERE version_id = p_version),
            CASE WHEN p_timeout_ms > 0 THEN now() + p_timeout_ms * interval '1 millisecond' END)
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING id INTO run_id;
    IF run_id IS NULL THEN
        SELECT id INTO STRICT run_id FROM workflow_runs WHERE idempotency_key = p_key;
        created := false;
        RETURN;
    END IF;
    created := true;
    INSERT INTO workflow_run_steps (run_id, name)
    SELECT run_id, s.name FROM workflow_version_steps s WHERE s.version_id = p_version ORDER BY s.position;
    PERFORM workflow_advance(run_id, ARRAY(
        SELECT s.name FROM workflow_version_steps s
         WHERE s.version_id = p_version
           AND NOT EXISTS (SELECT 1 FROM workflow_version_edges e WHERE e.version_id = p_version AND e.to_step = s.name)
         ORDER BY s.position));
END
$$;
-- +goose StatementEnd

DROP FUNCTION workflow_child_finished(bigint);
DROP FUNCTION workflow_child_start(bigint, workflow_version_steps, jsonb);
DROP FUNCTION workflow_child_params(jsonb, jsonb);
DROP FUNCTION workflow_map_progress(bigint, text);
DROP FUNCTION workflow_step_ended(bigint, text, text);
DROP FUNCTION workflow_count_ended(bigint, text, text);
DROP FUNCTION workflow_map_fill(bigint, text);
DROP FUNCTION workflow_map_array(bigint, workflow_version_steps, jsonb);
DROP FUNCTION workflow_map_payload(jsonb, jsonb, integer);
DROP FUNCTION workflow_step_task(bigint, workflow_version_steps, jsonb, integer);
DROP TABLE workflow_run_map_items;
ALTER TABLE workflow_run_steps DROP COLUMN child_run_id, DROP COLUMN up_total, DROP COLUMN up_done, DROP COLUMN up_succeeded,
    DROP COLUMN up_failed, DROP COLUMN up_skipped;
ALTER TABLE workflow_runs DROP CONSTRAINT workflow_runs_parent, DROP COLUMN parent_step, DROP COLUMN parent_run_id;
ALTER TABLE workflow_version_steps DROP COLUMN sub_params, DROP COLUMN sub_workflow, DROP COLUMN map_parallelism,
    DROP COLUMN map_max_items, DROP COLUMN map_over;
ALTER TABLE tasks DROP COLUMN workflow_item, DROP COLUMN step_outputs;
