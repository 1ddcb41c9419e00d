-- +goose Up
-- Schema v5: workflows. A definition is stored as immutable versions; a run pins
-- one version and its progress lives in rows only: the transaction that records a
-- step's task result (any UPDATE of tasks.state: a worker's TaskFinish, the
-- master's timeout sweep, failover's poison-task failure, a cancel) fires the
-- trigger tasks_workflow_step, which updates the step, decides which successors
-- became ready (trigger rules, in SQL), inserts their tasks (queued, claimable
-- like submitted tasks) and finishes the run when no step is left. No process
-- holds a run, so none can lose, stall or advance one twice. docs/workflows.md.
--
-- The functions use unqualified names like every baton statement: they resolve
-- in baton's schema because every statement that changes a task runs with it on
-- its search_path.

CREATE TABLE workflows (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name           text NOT NULL UNIQUE,
    latest_version integer NOT NULL DEFAULT 0,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT workflows_name_format CHECK (name ~ '^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$')
);
COMMENT ON TABLE workflows IS 'A named workflow; its content is in workflow_versions.';
COMMENT ON COLUMN workflows.latest_version IS 'The version new runs pin (0: none stored yet).';

CREATE TABLE workflow_versions (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    workflow_id  bigint NOT NULL REFERENCES workflows (id) ON DELETE CASCADE,
    version      integer NOT NULL,
    content_hash text NOT NULL,
    definition   jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT workflow_versions_number UNIQUE (workflow_id, version),
    CONSTRAINT workflow_versions_positive CHECK (version >= 1)
);
COMMENT ON TABLE workflow_versions IS 'Immutable versions of a workflow (an UPDATE is refused). Apply stores one only when the content hash differs from the latest.';
COMMENT ON COLUMN workflow_versions.content_hash IS 'sha256 of the canonical JSON of the definition.';
COMMENT ON COLUMN workflow_versions.definition IS 'The validated definition (canonical JSON of workflow.Definition).';

CREATE TABLE workflow_version_steps (
    version_id    bigint NOT NULL REFERENCES workflow_versions (id) ON DELETE CASCADE,
    name          text NOT NULL,
    position      integer NOT NULL,
    trigger_rule  text NOT NULL DEFAULT 'all_success',
    group_name    text NOT NULL,
    kind          text NOT NULL,
    payload       jsonb NOT NULL DEFAULT '{}',
    priority      integer NOT NULL DEFAULT 0,
    max_retries   integer NOT NULL DEFAULT 0,
    timeout_ms    bigint NOT NULL DEFAULT 0,
    retry_base_ms bigint NOT NULL DEFAULT -1,
    retry_max_ms  bigint NOT NULL DEFAULT -1,
    PRIMARY KEY (version_id, name),
    CONSTRAINT workflow_version_steps_rule CHECK (trigger_rule IN ('all_success', 'all_done', 'all_failed', 'one_success',
        'one_failed', 'none_failed', 'none_failed_min_one_success', 'always'))
);
COMMENT ON TABLE workflow_version_steps IS 'The steps of a version: what task each step runs (payload references resolved when it becomes ready).';
COMMENT ON COLUMN workflow_version_steps.retry_base_ms IS 'Retry backoff of the step''s task; -1 takes its group''s.';

CREATE TABLE workflow_version_edges (
    version_id bigint NOT NULL,
    from_step  text NOT NULL,
    to_step    text NOT NULL,
    PRIMARY KEY (version_id, from_step, to_step),
    FOREIGN KEY (version_id, from_step) REFERENCES workflow_version_steps (version_id, name) ON DELETE CASCADE,
    FOREIGN KEY (version_id, to_step) REFERENCES workflow_version_steps (version_id, name) ON DELETE CASCADE
);
COMMENT ON TABLE workflow_version_edges IS 'depends_on: to_step waits for from_step.';
CREATE INDEX workflow_version_edges_to ON workflow_version_edges (version_id, to_step);

-- +goose StatementBegin
CREATE FUNCTION workflow_versions_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'workflow versions are immutable (version %)', OLD.id USING ERRCODE = 'integrity_constraint_violation';
END
$$;
-- +goose StatementEnd
CREATE TRIGGER workflow_versions_immutable BEFORE UPDATE ON workflow_versions
    FOR EACH ROW EXECUTE FUNCTION workflow_versions_immutable();
CREATE TRIGGER workflow_version_steps_immutable BEFORE UPDATE ON workflow_version_steps
    FOR EACH ROW EXECUTE FUNCTION workflow_versions_immutable();

CREATE TABLE workflow_runs (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    workflow_id      bigint NOT NULL REFERENCES workflows (id),
    version_id       bigint NOT NULL REFERENCES workflow_versions (id),
    params           jsonb NOT NULL DEFAULT '{}',
    state            text NOT NULL DEFAULT 'running',
    failure_strategy text NOT NULL DEFAULT 'continue',
    idempotency_key  text UNIQUE,
    steps_left       integer NOT NULL,
    step_failed      boolean NOT NULL DEFAULT false,
    deadline         timestamptz,
    error            text NOT NULL DEFAULT '',
    created_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    CONSTRAINT workflow_runs_state CHECK (state IN ('running', 'paused', 'succeeded', 'failed', 'canceled', 'stopped')),
    CONSTRAINT workflow_runs_strategy CHECK (failure_strategy IN ('end', 'continue')),
    CONSTRAINT workflow_runs_steps_left CHECK (steps_left >= 0),
    CONSTRAINT workflow_runs_finished CHECK ((state IN ('succeeded', 'failed', 'canceled', 'stopped')) = (finished_at IS NOT NULL))
);
COMMENT ON TABLE workflow_runs IS 'One execution of a pinned workflow version. Its progress is its steps'' rows; no process holds it.';
COMMENT ON COLUMN workflow_runs.state IS 'running, paused (nothing new becomes claimable), or terminal: succeeded, failed (some step failed, upstream_failed or canceled), canceled, stopped.';
COMMENT ON COLUMN workflow_runs.failure_strategy IS 'end: after a step fails no step becomes ready (they end canceled); continue: run what does not depend on it.';
COMMENT ON COLUMN workflow_runs.idempotency_key IS 'A second start with the same key returns this run.';
COMMENT ON COLUMN workflow_runs.steps_left IS 'Steps not yet terminal; the run finishes in the transaction that brings it to 0.';
COMMENT ON COLUMN workflow_runs.step_failed IS 'A step failed (its task failed or timed out with no retry left).';
COMMENT ON COLUMN workflow_runs.deadline IS 'Run timeout: a master ends the run failed (its live tasks canceled) once Postgres now() passes it; NULL: none.';
COMMENT ON COLUMN workflow_runs.error IS 'Why the run was ended by a control or its timeout.';
CREATE INDEX workflow_runs_active ON workflow_runs (id) WHERE state IN ('running', 'paused');
CREATE INDEX workflow_runs_deadline ON workflow_runs (deadline) WHERE state IN ('running', 'paused') AND deadline IS NOT NULL;
CREATE INDEX workflow_runs_by_workflow ON workflow_runs (workflow_id, id);

CREATE TABLE workflow_run_steps (
    run_id      bigint NOT NULL REFERENCES workflow_runs (id) ON DELETE CASCADE,
    name        text NOT NULL,
    state       text NOT NULL DEFAULT 'pending',
    task_id     bigint,
    task_count  integer NOT NULL DEFAULT 0,
    output      jsonb,
    error       text NOT NULL DEFAULT '',
    ready_at    timestamptz,
    finished_at timestamptz,
    PRIMARY KEY (run_id, name),
    CONSTRAINT workflow_run_steps_state CHECK (state IN ('pending', 'queued', 'running', 'succeeded', 'failed', 'skipped',
        'upstream_failed', 'canceled')),
    CONSTRAINT workflow_run_steps_finished CHECK ((state IN ('succeeded', 'failed', 'skipped', 'upstream_failed', 'canceled')) = (finished_at IS NOT NULL))
);
COMMENT ON TABLE workflow_run_steps IS 'A step of a run: pending until its trigger rule decides; queued/running mirror its task; then terminal.';
COMMENT ON COLUMN workflow_run_steps.task_id IS 'The step''s current task (a rerun gives it a new one; older ones keep workflow_step for history). No foreign key: retention prunes tasks.';
COMMENT ON COLUMN workflow_run_steps.task_count IS 'How many tasks the step was given (1 + reruns).';
COMMENT ON COLUMN workflow_run_steps.output IS 'The JSON object its succeeded task returned as output (NULL if the output was not a JSON object).';

CREATE TABLE workflow_run_findings (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id      bigint NOT NULL UNIQUE REFERENCES workflow_runs (id) ON DELETE CASCADE,
    detected_by bigint,
    found_at    timestamptz NOT NULL DEFAULT now(),
    run_state   text NOT NULL,
    steps_left  integer NOT NULL,
    live_steps  integer NOT NULL,
    open_steps  integer NOT NULL
);
COMMENT ON TABLE workflow_run_findings IS 'The repair sweep''s report: a run found not terminal with nothing live (or with steps_left disagreeing with its steps). The advancement makes this impossible; a row here is a bug to investigate.';
COMMENT ON COLUMN workflow_run_findings.detected_by IS 'The master session that found it.';
COMMENT ON COLUMN workflow_run_findings.live_steps IS 'Steps queued or running when found.';
COMMENT ON COLUMN workflow_run_findings.open_steps IS 'Steps not terminal (pending, queued, running) when found.';

ALTER TABLE tasks ADD COLUMN workflow_step text,
    ADD CONSTRAINT tasks_workflow_run_id_fkey FOREIGN KEY (workflow_run_id) REFERENCES workflow_runs (id) ON DELETE CASCADE,
    ADD CONSTRAINT tasks_workflow_step CHECK ((workflow_run_id IS NULL) = (workflow_step IS NULL));
COMMENT ON COLUMN tasks.workflow_run_id IS 'The workflow run the task belongs to (NULL for a task submitted on its own).';
COMMENT ON COLUMN tasks.workflow_step IS 'The step of that run the task executes.';
CREATE INDEX tasks_workflow_run ON tasks (workflow_run_id, id) WHERE workflow_run_id IS NOT NULL;

-- The trigger-rule decision for a pending step from its upstream outcomes:
-- 'run', 'skipped', 'upstream_failed' or 'wait' (not decided yet). "failed"
-- counts failed, upstream_failed and canceled upstreams; done counts terminal ones.
-- +goose StatementBegin
CREATE FUNCTION workflow_trigger_decision(rule text, total int, succeeded int, failed int, skipped int, done int)
RETURNS text LANGUAGE sql IMMUTABLE AS $$
SELECT CASE
    WHEN total = 0 THEN 'run'
    WHEN rule = 'one_success' AND succeeded > 0 THEN 'run'
    WHEN rule = 'one_failed' AND failed > 0 THEN 'run'
    WHEN done < total THEN 'wait'
    ELSE CASE rule
        WHEN 'all_success' THEN CASE WHEN succeeded = total THEN 'run' WHEN failed > 0 THEN 'upstream_failed' ELSE 'skipped' END
        WHEN 'all_failed' THEN CASE WHEN failed = total THEN 'run' ELSE 'skipped' END
        WHEN 'all_done' THEN 'run'
        WHEN 'always' THEN 'run'
        WHEN 'one_success' THEN CASE WHEN skipped = total THEN 'skipped' ELSE 'upstream_failed' END
        WHEN 'one_failed' THEN 'skipped'
        WHEN 'none_failed' THEN CASE WHEN failed = 0 THEN 'run' ELSE 'upstream_failed' END
        WHEN 'none_failed_min_one_success' THEN CASE WHEN failed > 0 THEN 'upstream_failed' WHEN succeeded > 0 THEN 'run' ELSE 'skipped' END
    END
END
$$;
-- +goose StatementEnd

-- Resolves ${params.NAME} and ${steps.STEP.outputs.KEY} inside the string values
-- of a step's payload, when the step becomes ready. A missing value resolves to "".
-- +goose StatementBegin
CREATE FUNCTION workflow_resolve(p_payload jsonb, p_run bigint, p_params jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    txt text := p_payload::text;
    m text[];
    val text;
BEGIN
    IF position('${' IN txt) = 0 THEN
        RETURN p_payload;
    END IF;
    FOR m IN SELECT DISTINCT regexp_matches(txt, '\$\{(params\.([A-Za-z_][A-Za-z0-9_]*)|steps\.([A-Za-z0-9][A-Za-z0-9_.-]*?)\.outputs\.([A-Za-z_][A-Za-z0-9_]*))\}', 'g') LOOP
        IF m[2] IS NOT NULL THEN
            val := p_params ->> m[2];
        ELSE
            SELECT s.output ->> m[4] INTO val FROM workflow_run_steps s WHERE s.run_id = p_run AND s.name = m[3];
        END IF;
        -- The reference sits inside a JSON string: insert the value JSON-escaped.
        val := to_json(coalesce(val, ''))::text;
        txt := replace(txt, '${' || m[1] || '}', substr(val, 2, length(val) - 2));
    END LOOP;
    RETURN txt::jsonb;
END
$$;
-- +goose StatementEnd

-- Decides pending steps of a run (the caller holds the run row locked): each
-- candidate whose trigger rule can decide is made ready (its task inserted, its
-- group's workers woken at commit), skipped, or upstream_failed; a step decided
-- without running passes the decision on to its successors (skip propagation).
-- A step that would run in a run that is not running (stopped, canceled, or
-- 'end' after a failure) ends canceled; in a paused run it stays pending until
-- resume. Finishes the run when no step is left.
-- +goose StatementBegin
CREATE FUNCTION workflow_advance(p_run bigint, p_steps text[]) RETURNS void LANGUAGE plpgsql AS $$
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

-- Ends a running or paused run whose steps are all terminal: failed if any step
-- failed, was upstream_failed or canceled, else succeeded. A run already ended
-- (canceled, stopped) keeps its state.
-- +goose StatementBegin
CREATE FUNCTION workflow_finish_if_done(p_run bigint) RETURNS void LANGUAGE plpgsql AS $$
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

-- Trigger body: a workflow task changed state. Only the step's current task
-- speaks for it, and a terminal step never changes again, so a result recorded
-- twice (or an old task of a rerun step) advances nothing. A zombie's late
-- result is refused by TaskFinish's fencing WHERE: it updates no row, so this
-- never runs for it.
-- +goose StatementBegin
CREATE FUNCTION workflow_task_changed() RETURNS trigger LANGUAGE plpgsql AS $$
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

-- Starts a run of a version (params already validated and defaulted by the
-- caller): the run, one pending row per step, and the steps without upstream
-- made ready, in the caller's transaction. With an idempotency key already
-- used, nothing is written and the first run's id is returned (created false).
-- +goose StatementBegin
CREATE FUNCTION workflow_start(p_version bigint, p_params jsonb, p_strategy text, p_key text, p_timeout_ms bigint,
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

-- Pause: nothing new becomes claimable. Queued tasks of the run are held
-- (available_at infinity); steps that become ready stay pending. True if the
-- run was running.
-- +goose StatementBegin
CREATE FUNCTION workflow_pause(p_run bigint) RETURNS boolean LANGUAGE plpgsql AS $$
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

-- Resume: held tasks become claimable and pending steps are decided again
-- (those that became ready while paused start now). True if it was paused.
-- +goose StatementBegin
CREATE FUNCTION workflow_resume(p_run bigint) RETURNS boolean LANGUAGE plpgsql AS $$
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

-- Ends a running or paused run as canceled, stopped or (run timeout) failed: its pending steps end
-- canceled at once; the ids of its live tasks are returned for the caller to
-- cancel through the task cancel path (each cancel then ends its step through
-- the trigger). Nothing if the run already ended.
-- +goose StatementBegin
CREATE FUNCTION workflow_end(p_run bigint, p_state text, p_reason text) RETURNS SETOF bigint LANGUAGE plpgsql AS $$
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

-- Reruns, in the same run, the steps named and everything downstream of them:
-- they become pending again (their old tasks stay as history) and are decided
-- as if for the first time. The run must have ended. Returns how many steps were
-- reset (0: the run is not ended or no step matched).
-- +goose StatementBegin
CREATE FUNCTION workflow_rerun(p_run bigint, p_steps text[]) RETURNS int LANGUAGE plpgsql AS $$
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

CREATE TRIGGER tasks_workflow_step AFTER UPDATE OF state ON tasks
    FOR EACH ROW WHEN (NEW.workflow_run_id IS NOT NULL AND NEW.state IS DISTINCT FROM OLD.state)
    EXECUTE FUNCTION workflow_task_changed();

-- +goose Down
DROP TRIGGER tasks_workflow_step ON tasks;
DROP FUNCTION workflow_task_changed();
DROP FUNCTION workflow_rerun(bigint, text[]);
DROP FUNCTION workflow_end(bigint, text, text);
DROP FUNCTION workflow_resume(bigint);
DROP FUNCTION workflow_pause(bigint);
DROP FUNCTION workflow_start(bigint, jsonb, text, text, bigint);
DROP FUNCTION workflow_finish_if_done(bigint);
DROP FUNCTION workflow_advance(bigint, text[]);
DROP FUNCTION workflow_resolve(jsonb, bigint, jsonb);
DROP FUNCTION workflow_trigger_decision(text, int, int, int, int, int);
DROP INDEX tasks_workflow_run;
ALTER TABLE tasks DROP CONSTRAINT tasks_workflow_step,
    DROP CONSTRAINT tasks_workflow_run_id_fkey,
    DROP COLUMN workflow_step;
UPDATE tasks SET workflow_run_id = NULL WHERE workflow_run_id IS NOT NULL;
DROP TABLE workflow_run_findings;
DROP TABLE workflow_run_steps;
DROP TABLE workflow_runs;
DROP TRIGGER workflow_version_steps_immutable ON workflow_version_steps;
DROP TRIGGER workflow_versions_immutable ON workflow_versions;
DROP FUNCTION workflow_versions_immutable();
DROP TABLE workflow_version_edges;
DROP TABLE workflow_version_steps;
DROP TABLE workflow_versions;
DROP TABLE workflows;
