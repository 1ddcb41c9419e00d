-- +goose Up
-- Schema v12: a statement's ended workflow tasks advance their runs together
-- (docs/workflows.md, "The transaction of a step completion").
--
-- A worker writes a batch of results in one statement. The per-row trigger
-- ended each step and decided its successors one row at a time: a fan-in sink
-- of 998 upstreams had its counters updated, and was decided again, once per
-- upstream, and each end cost ~0.2 ms under the run's lock. Now a statement
-- trigger reads the statement's updated rows (a transition table) and, once
-- per statement: locks the runs concerned (in id order), ends their steps and
-- map items in one UPDATE each, updates the runs' and successors' counters with
-- one aggregated UPDATE each, and decides each run's successors once. It runs
-- in the transaction of the statement that ended the tasks, as before: a crash
-- leaves the results and the advancement both or neither, and a zombie's
-- refused result updates no task row, so no step.
--
-- The per-row trigger stays for requeues only (a paused run holds them).
--
-- workflow_advance decides a fan-out (every candidate a plain task step whose
-- rule says run) with one query instead of two statements per step, and a map
-- step with no pending item is not filled again (workflow_map_fill).
--
-- Schedules' set-based firing (schedule_fire_start_many, v10) inserted run
-- steps without their upstream count (up_total, v11), so a fan-in step of a
-- scheduled run ran after its first upstream ended, and a failed upstream did
-- not stop its successor. It stores the count now, and the counts of every
-- stored run step are recomputed.

-- A text as JSON, NULL when it is not JSON (a handler's output that merely
-- starts with a brace).
-- +goose StatementBegin
CREATE FUNCTION workflow_try_jsonb(p text) RETURNS jsonb LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN p::jsonb;
EXCEPTION WHEN OTHERS THEN
    RETURN NULL;
END
$$;
-- +goose StatementEnd

-- The workflow tasks a statement ended (succeeded, failed, timed_out, canceled)
-- end their steps and map items, and their runs advance. ended_tasks holds
-- every row the statement updated (a transition table cannot be limited to a
-- column or a condition); rows that are not workflow tasks, or not ended, are
-- left out by the first query, which is all a statement of plain tasks pays.
-- A row whose step (or item) no longer names it as its current task, or has
-- ended already, changes nothing.
-- +goose StatementBegin
CREATE FUNCTION workflow_tasks_ended() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    e_id bigint[];
    e_run bigint[];
    e_step text[];
    e_item integer[];
    e_state text[];
    e_out jsonb[];
    e_err text[];
    v_runs bigint[];
    v_run bigint;
    s_run bigint[];
    s_name text[];
    s_state text[];
    n_run bigint[];
    n_name text[];
    m_run bigint[];
    m_step text[];
    v_done bigint[];
    i int;
BEGIN
    SELECT array_agg(t.id), array_agg(t.workflow_run_id), array_agg(t.workflow_step), array_agg(t.workflow_item), array_agg(x.st),
           array_agg(CASE WHEN x.st <> 'succeeded' THEN NULL
                          WHEN t.step_outputs IS NOT NULL THEN t.step_outputs -- a shell step's $BATON_OUTPUT
                          WHEN t.kind <> 'shell' AND t.output ~ '^\s*\{' THEN workflow_try_jsonb(t.output) END),
           array_agg(CASE WHEN x.st = 'succeeded' THEN '' ELSE t.last_error END),
           array_agg(DISTINCT t.workflow_run_id ORDER BY t.workflow_run_id)
      INTO e_id, e_run, e_step, e_item, e_state, e_out, e_err, v_runs
      FROM ended_tasks t
     CROSS JOIN LATERAL (SELECT CASE t.state WHEN 'succeeded' THEN 'succeeded' WHEN 'canceled' THEN 'canceled' ELSE 'failed' END AS st) AS x
     WHERE t.workflow_run_id IS NOT NULL AND t.state IN ('succeeded', 'failed', 'timed_out', 'canceled');
    IF v_runs IS NULL THEN
        RETURN NULL;
    END IF;
    -- Serialize with every other advancement of these runs; in id order, so
    -- two statements ending tasks of the same runs cannot deadlock.
    PERFORM 1 FROM workflow_runs WHERE id = ANY (v_runs) ORDER BY id FOR UPDATE;
    -- Map items: only an item's current task speaks for it, once.
    WITH it AS (
        UPDATE workflow_run_map_items m SET state = e.st, output = e.out, error = e.err
          FROM unnest(e_id, e_run, e_step, e_item, e_state, e_out, e_err) AS e(id, run_id, step, item, st, out, err)
         WHERE e.item IS NOT NULL AND m.run_id = e.run_id AND m.step = e.step AND m.idx = e.item AND m.task_id = e.id
           AND m.state IN ('queued', 'running')
        RETURNING m.run_id, m.step
    )
    SELECT array_agg(d.run_id ORDER BY d.run_id, d.step), array_agg(d.step ORDER BY d.run_id, d.step) INTO m_run, m_step
      FROM (SELECT DISTINCT run_id, step FROM it) AS d;
    -- Steps: only a step's current task speaks for it, once.
    WITH ended AS (
        UPDATE workflow_run_steps s SET state = e.st, finished_at = now(), output = e.out, error = e.err
          FROM unnest(e_id, e_run, e_step, e_item, e_state, e_out, e_err) AS e(id, run_id, step, item, st, out, err)
         WHERE e.item IS NULL AND s.run_id = e.run_id AND s.name = e.step AND s.task_id = e.id
           AND s.state IN ('queued', 'running')
        RETURNING s.run_id, s.name, s.state
    )
    SELECT array_agg(run_id), array_agg(name), array_agg(state) INTO s_run, s_name, s_state FROM ended;
    IF s_run IS NOT NULL THEN
        -- What workflow_count_ended does for one step, for all of them: the
        -- runs count them, their successors' upstream counters count them.
        WITH c AS (
            UPDATE workflow_runs r SET steps_left = r.steps_left - c.n, step_failed = r.step_failed OR c.failed
              FROM (SELECT x.run_id, count(*) AS n, bool_or(x.state = 'failed') AS failed
                      FROM unnest(s_run, s_state) AS x(run_id, state) GROUP BY x.run_id) AS c
             WHERE r.id = c.run_id
            RETURNING r.id, r.steps_left
        )
        SELECT array_agg(c.id) FILTER (WHERE c.steps_left = 0) INTO v_done FROM c;
        -- Only the successors whose rule can decide now are handed to
        -- workflow_advance (a fan-in sink waits for its last upstream without
        -- being decided at each batch).
        WITH up AS (
            UPDATE workflow_run_steps s
               SET up_done = s.up_done + c.done, up_succeeded = s.up_succeeded + c.succ,
                   up_failed = s.up_failed + c.fail, up_skipped = s.up_skipped + c.skip
              FROM (SELECT x.run_id, r.version_id, e.to_step, count(*) AS done,
                           count(*) FILTER (WHERE x.state = 'succeeded') AS succ,
                           count(*) FILTER (WHERE x.state IN ('failed', 'upstream_failed', 'canceled')) AS fail,
                           count(*) FILTER (WHERE x.state = 'skipped') AS skip
                      FROM unnest(s_run, s_name, s_state) AS x(run_id, name, state)
                     CROSS JOIN LATERAL (SELECT r.version_id FROM workflow_runs r WHERE r.id = x.run_id) AS r
                     -- Per ended step, its out-edges by the primary key (OFFSET 0
                     -- keeps the lookup a lateral one: a hash join over all
                     -- versions' edges was chosen on fresh statistics).
                     CROSS JOIN LATERAL (SELECT e.to_step FROM workflow_version_edges e
                                          WHERE e.version_id = r.version_id AND e.from_step = x.name OFFSET 0) AS e
                     GROUP BY x.run_id, r.version_id, e.to_step) AS c
             WHERE s.run_id = c.run_id AND s.name = c.to_step
            RETURNING s.run_id, s.name, s.state = 'pending'
                      AND workflow_trigger_decision((SELECT v.trigger_rule FROM workflow_version_steps v
                                                      WHERE v.version_id = c.version_id AND v.name = s.name),
                                                    s.up_total, s.up_succeeded, s.up_failed, s.up_skipped, s.up_done) <> 'wait' AS decide
        )
        SELECT array_agg(run_id ORDER BY run_id, name) FILTER (WHERE decide), array_agg(name ORDER BY run_id, name) FILTER (WHERE decide)
          INTO n_run, n_name FROM up;
    END IF;
    -- Each run, in id order: its map steps' progress, then its successors
    -- decided, and the run finished when no step is left (both in
    -- workflow_advance, called when there is something to decide or finish).
    FOREACH v_run IN ARRAY v_runs LOOP
        FOR i IN 1 .. coalesce(cardinality(m_run), 0) LOOP
            IF m_run[i] = v_run THEN
                PERFORM workflow_map_progress(v_run, m_step[i]);
            END IF;
        END LOOP;
        IF v_run = ANY (n_run) OR v_run = ANY (v_done) THEN
            PERFORM workflow_advance(v_run, ARRAY(SELECT u.name FROM unnest(n_run, n_name) AS u(run_id, name)
                                                   WHERE u.run_id = v_run ORDER BY u.name));
        END IF;
    END LOOP;
    RETURN NULL;
END
$$;
-- +goose StatementEnd

-- Ends: the statement trigger. Requeues (retry, snooze, failover): the row
-- trigger, as before (workflow_task_changed's requeue branch).
DROP TRIGGER tasks_workflow_step ON tasks;
CREATE TRIGGER tasks_workflow_step AFTER UPDATE OF state ON tasks
    FOR EACH ROW WHEN (NEW.workflow_run_id IS NOT NULL AND NEW.state IS DISTINCT FROM OLD.state AND NEW.state = 'queued')
    EXECUTE FUNCTION workflow_task_changed();
CREATE TRIGGER tasks_workflow_steps_ended AFTER UPDATE ON tasks
    REFERENCING NEW TABLE AS ended_tasks
    FOR EACH STATEMENT EXECUTE FUNCTION workflow_tasks_ended();
-- +goose StatementBegin
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION workflow_tasks_ended() SET search_path = %I', current_schema());
    -- Its statements take arrays: a custom plan for each call looked cheaper
    -- than the generic one (ten elements assumed), so every statement of the
    -- trigger and of what it calls was planned again at every call (~0.6 ms per
    -- result written). They are written for any size (key lookups, lateral
    -- joins), so one plan per session serves.
    ALTER FUNCTION workflow_tasks_ended() SET plan_cache_mode = force_generic_plan;
END
$$;
-- +goose StatementEnd

-- A map step's pending items (workflow_map_fill, at each statement that ends
-- some of its items): through the index of open items, finding them read
-- every queued and running item first (6 ms per call at 1,000 items).
CREATE INDEX workflow_run_map_items_pending ON workflow_run_map_items (run_id, step, idx) WHERE state = 'pending';

-- Run steps stored by the set-based firing without their upstream count.
UPDATE workflow_run_steps s SET up_total = c.total
  FROM (SELECT s2.run_id, s2.name, count(e.from_step) AS total
          FROM workflow_run_steps s2
          JOIN workflow_runs r ON r.id = s2.run_id
          LEFT JOIN workflow_version_edges e ON e.version_id = r.version_id AND e.to_step = s2.name
         GROUP BY s2.run_id, s2.name) AS c
 WHERE s.run_id = c.run_id AND s.name = c.name AND s.up_total <> c.total;

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
    v_slow bigint;
    v_plain text[];
    v_ids jsonb;
BEGIN
    SELECT * INTO r FROM workflow_runs WHERE id = p_run;
    LOOP
        -- A fan-out: when every candidate a rule can decide now is a task step
        -- whose rule says run, in a running run that may start steps, they are
        -- all made ready by one query (what the loop below would decide one by
        -- one, at two statements per step). Anything else takes the loop.
        IF cardinality(work) > 1 AND r.state = 'running' AND NOT (r.failure_strategy = 'end' AND r.step_failed) THEN
            SELECT count(*) FILTER (WHERE x.d <> 'run' OR x.special),
                   coalesce(array_agg(x.name) FILTER (WHERE x.d = 'run' AND NOT x.special), '{}')
              INTO v_slow, v_plain
              FROM (SELECT s.name, vs.sub_workflow IS NOT NULL OR vs.map_over IS NOT NULL AS special,
                           workflow_trigger_decision(vs.trigger_rule, s.up_total, s.up_succeeded, s.up_failed, s.up_skipped, s.up_done) AS d
                      FROM workflow_run_steps s
                      JOIN workflow_version_steps vs ON vs.version_id = r.version_id AND vs.name = s.name
                     WHERE s.run_id = p_run AND s.name = ANY (work) AND s.state = 'pending') AS x
             WHERE x.d <> 'wait';
            IF v_slow = 0 THEN
                v_ready := v_ready || v_plain;
                work := '{}';
            END IF;
        END IF;
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
                SELECT vs.group_name, vs.kind,
                       -- Most payloads reference nothing: no call for them.
                       CASE WHEN strpos(vs.payload::text, '${') = 0 THEN vs.payload ELSE workflow_resolve(vs.payload, p_run, r.params) END,
                       vs.priority, vs.max_retries, vs.timeout_ms,
                       b.base, greatest(b.maxv, b.base), p_run, vs.name
                  FROM workflow_version_steps vs
                  LEFT JOIN worker_groups wg ON wg.name = vs.group_name
                 CROSS JOIN LATERAL (SELECT CASE WHEN vs.retry_base_ms >= 0 THEN vs.retry_base_ms ELSE coalesce(wg.retry_base_ms, 1000) END AS base,
                                            CASE WHEN vs.retry_max_ms >= 0 THEN vs.retry_max_ms ELSE coalesce(wg.retry_max_ms, 300000) END AS maxv) AS b
                 WHERE vs.version_id = r.version_id AND vs.name = ANY (v_ready)
                 ORDER BY vs.position
                RETURNING tasks.id, tasks.workflow_step, tasks.group_name
            )
            SELECT jsonb_object_agg(ins.workflow_step, ins.id), coalesce(array_agg(DISTINCT ins.group_name), '{}')
              INTO v_ids, v_g FROM ins;
            -- Each step its task's id through the map, by the primary key: a
            -- join with the inserted rows was planned as a nested loop over
            -- both (a million comparisons for 1,000 steps) on fresh statistics.
            UPDATE workflow_run_steps s SET state = 'queued', task_id = (v_ids ->> s.name)::bigint, task_count = s.task_count + 1, ready_at = now()
             WHERE s.run_id = p_run AND s.name = ANY (v_ready) AND s.state = 'pending';
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

-- Root step tasks and, now, every step's upstream count.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION schedule_fire_start_many(p_schedules bigint[], p_workflows bigint[], p_nominals timestamptz[], p_kinds text[],
                                         p_versions bigint[], p_params jsonb[], p_strategies text[], p_keys text[],
                                         p_timeouts bigint[], p_now timestamptz, p_set boolean)
RETURNS TABLE (o_schedule bigint, o_nominal timestamptz, o_fire bigint, o_run bigint) LANGUAGE plpgsql AS $$
DECLARE
    v_fire bigint;
    v_run bigint;
    v_created boolean;
    v_at timestamptz;
BEGIN
    IF p_set THEN
        RETURN QUERY
        WITH input AS (
            SELECT unnest(p_schedules) AS sid, unnest(p_workflows) AS wid, unnest(p_nominals) AS at, unnest(p_kinds) AS kind,
                   unnest(p_versions) AS vid, unnest(p_params) AS params, unnest(p_strategies) AS strategy,
                   unnest(p_keys) AS key, unnest(p_timeouts) AS timeout_ms
        ), runs AS (
            INSERT INTO workflow_runs (workflow_id, version_id, params, failure_strategy, idempotency_key, steps_left, deadline)
            SELECT i.wid, i.vid, i.params, i.strategy, i.key,
                   (SELECT count(*) FROM workflow_version_steps s WHERE s.version_id = i.vid),
                   CASE WHEN i.timeout_ms > 0 THEN now() + i.timeout_ms * interval '1 millisecond' END
            FROM input i
            RETURNING id, version_id, params, idempotency_key
        ), roots AS (
            SELECT r.id AS run_id, r.params, st.*
            FROM runs r JOIN workflow_version_steps st ON st.version_id = r.version_id
            WHERE NOT EXISTS (SELECT 1 FROM workflow_version_edges e WHERE e.version_id = r.version_id AND e.to_step = st.name)
        ), tasks_in AS (
            INSERT INTO tasks (group_name, kind, payload, priority, max_retries, timeout_ms, retry_base_ms, retry_max_ms,
                               workflow_run_id, workflow_step)
            SELECT st.group_name, st.kind, workflow_resolve(st.payload, st.run_id, st.params), st.priority, st.max_retries, st.timeout_ms,
                   CASE WHEN st.retry_base_ms >= 0 THEN st.retry_base_ms
                        ELSE coalesce((SELECT wg.retry_base_ms FROM worker_groups wg WHERE wg.name = st.group_name), 1000) END,
                   greatest(CASE WHEN st.retry_max_ms >= 0 THEN st.retry_max_ms
                                 ELSE coalesce((SELECT wg.retry_max_ms FROM worker_groups wg WHERE wg.name = st.group_name), 300000) END,
                            CASE WHEN st.retry_base_ms >= 0 THEN st.retry_base_ms
                                 ELSE coalesce((SELECT wg.retry_base_ms FROM worker_groups wg WHERE wg.name = st.group_name), 1000) END),
                   st.run_id, st.name
            FROM roots st
            RETURNING id, group_name, workflow_run_id, workflow_step
        ), steps_in AS (
            INSERT INTO workflow_run_steps (run_id, name, state, task_id, task_count, ready_at, up_total)
            SELECT r.id, s.name, CASE WHEN t.id IS NULL THEN 'pending' ELSE 'queued' END, t.id,
                   CASE WHEN t.id IS NULL THEN 0 ELSE 1 END, CASE WHEN t.id IS NULL THEN NULL ELSE now() END,
                   (SELECT count(*) FROM workflow_version_edges e WHERE e.version_id = r.version_id AND e.to_step = s.name)
            FROM runs r JOIN workflow_version_steps s ON s.version_id = r.version_id
            LEFT JOIN tasks_in t ON t.workflow_run_id = r.id AND t.workflow_step = s.name
            ORDER BY r.id, s.position
        ), fires AS (
            INSERT INTO schedule_fires (schedule_id, workflow_id, nominal_time, source, outcome, kind, recorded_at,
                                        run_id, run_state, run_active, started_at, lag_ms)
            SELECT i.sid, i.wid, i.at, 'schedule', 'started', i.kind, coalesce(p_now, clock_timestamp()),
                   r.id, 'running', true, coalesce(p_now, clock_timestamp()),
                   (extract(epoch FROM coalesce(p_now, clock_timestamp()) - i.at) * 1000)::bigint
            FROM input i JOIN runs r ON r.idempotency_key = i.key
            RETURNING id, schedule_id, nominal_time, run_id
        ), notified AS (
            -- One wake-up per group, on the channel submit uses (delivered at commit).
            SELECT count(pg_notify('baton_claim', 'g:' || g.group_name)) AS n
            FROM (SELECT DISTINCT group_name FROM tasks_in) g
        )
        SELECT f.schedule_id, f.nominal_time, f.id, f.run_id FROM fires f, notified;
        RETURN;
    END IF;
    FOR i IN 1 .. coalesce(cardinality(p_schedules), 0) LOOP
        v_fire := NULL;
        INSERT INTO schedule_fires (schedule_id, workflow_id, nominal_time, source, outcome, reason, kind, recorded_at)
        VALUES (p_schedules[i], p_workflows[i], p_nominals[i], 'schedule', 'skipped', 'starting', p_kinds[i],
                coalesce(p_now, clock_timestamp()))
        ON CONFLICT DO NOTHING
        RETURNING id INTO v_fire;
        CONTINUE WHEN v_fire IS NULL;
        SELECT ws.run_id, ws.created INTO v_run, v_created
          FROM workflow_start(p_versions[i], p_params[i], p_strategies[i], p_keys[i], p_timeouts[i]) ws;
        IF NOT v_created THEN
            RAISE EXCEPTION 'fire % of schedule %: run % already holds key %', p_nominals[i], p_schedules[i], v_run, p_keys[i];
        END IF;
        v_at := coalesce(p_now, clock_timestamp());
        UPDATE schedule_fires f SET outcome = 'started', reason = NULL, run_id = v_run, run_state = r.state,
               run_active = r.state IN ('running', 'paused'), started_at = v_at,
               lag_ms = (extract(epoch FROM v_at - f.nominal_time) * 1000)::bigint
          FROM workflow_runs r
         WHERE f.id = v_fire AND r.id = v_run;
        o_schedule := p_schedules[i];
        o_nominal := p_nominals[i];
        o_fire := v_fire;
        o_run := v_run;
        RETURN NEXT;
    END LOOP;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION workflow_map_fill(p_run bigint, p_step text) RETURNS void LANGUAGE plpgsql AS $$
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
    v_last text;
BEGIN
    SELECT * INTO r FROM workflow_runs WHERE id = p_run;
    IF r.state <> 'running' THEN
        RETURN;
    END IF;
    -- Items get tasks in index order, so the pending ones are a suffix: none
    -- when the last is not pending (one primary-key probe; this runs at every
    -- statement that ends some of the step's items).
    -- (No state in the WHERE clause: the partial indexes would be chosen, and
    -- their entries of items given tasks are read before they are cleaned.)
    SELECT i.state INTO v_last FROM workflow_run_map_items i
     WHERE i.run_id = p_run AND i.step = p_step ORDER BY i.idx DESC LIMIT 1;
    IF v_last IS DISTINCT FROM 'pending' THEN
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

-- +goose Down
DROP TRIGGER tasks_workflow_steps_ended ON tasks;
DROP TRIGGER tasks_workflow_step ON tasks;
CREATE TRIGGER tasks_workflow_step AFTER UPDATE OF state ON tasks
    FOR EACH ROW WHEN (NEW.workflow_run_id IS NOT NULL AND NEW.state IS DISTINCT FROM OLD.state
                       AND NEW.state NOT IN ('dispatched', 'running'))
    EXECUTE FUNCTION workflow_task_changed();
DROP FUNCTION workflow_tasks_ended();
DROP INDEX workflow_run_map_items_pending;
DROP FUNCTION workflow_try_jsonb(text);
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
CREATE OR REPLACE FUNCTION schedule_fire_start_many(p_schedules bigint[], p_workflows bigint[], p_nominals timestamptz[], p_kinds text[],
                                         p_versions bigint[], p_params jsonb[], p_strategies text[], p_keys text[],
                                         p_timeouts bigint[], p_now timestamptz, p_set boolean)
RETURNS TABLE (o_schedule bigint, o_nominal timestamptz, o_fire bigint, o_run bigint) LANGUAGE plpgsql AS $$
DECLARE
    v_fire bigint;
    v_run bigint;
    v_created boolean;
    v_at timestamptz;
BEGIN
    IF p_set THEN
        RETURN QUERY
        WITH input AS (
            SELECT unnest(p_schedules) AS sid, unnest(p_workflows) AS wid, unnest(p_nominals) AS at, unnest(p_kinds) AS kind,
                   unnest(p_versions) AS vid, unnest(p_params) AS params, unnest(p_strategies) AS strategy,
                   unnest(p_keys) AS key, unnest(p_timeouts) AS timeout_ms
        ), runs AS (
            INSERT INTO workflow_runs (workflow_id, version_id, params, failure_strategy, idempotency_key, steps_left, deadline)
            SELECT i.wid, i.vid, i.params, i.strategy, i.key,
                   (SELECT count(*) FROM workflow_version_steps s WHERE s.version_id = i.vid),
                   CASE WHEN i.timeout_ms > 0 THEN now() + i.timeout_ms * interval '1 millisecond' END
            FROM input i
            RETURNING id, version_id, params, idempotency_key
        ), roots AS (
            SELECT r.id AS run_id, r.params, st.*
            FROM runs r JOIN workflow_version_steps st ON st.version_id = r.version_id
            WHERE NOT EXISTS (SELECT 1 FROM workflow_version_edges e WHERE e.version_id = r.version_id AND e.to_step = st.name)
        ), tasks_in AS (
            INSERT INTO tasks (group_name, kind, payload, priority, max_retries, timeout_ms, retry_base_ms, retry_max_ms,
                               workflow_run_id, workflow_step)
            SELECT st.group_name, st.kind, workflow_resolve(st.payload, st.run_id, st.params), st.priority, st.max_retries, st.timeout_ms,
                   CASE WHEN st.retry_base_ms >= 0 THEN st.retry_base_ms
                        ELSE coalesce((SELECT wg.retry_base_ms FROM worker_groups wg WHERE wg.name = st.group_name), 1000) END,
                   greatest(CASE WHEN st.retry_max_ms >= 0 THEN st.retry_max_ms
                                 ELSE coalesce((SELECT wg.retry_max_ms FROM worker_groups wg WHERE wg.name = st.group_name), 300000) END,
                            CASE WHEN st.retry_base_ms >= 0 THEN st.retry_base_ms
                                 ELSE coalesce((SELECT wg.retry_base_ms FROM worker_groups wg WHERE wg.name = st.group_name), 1000) END),
                   st.run_id, st.name
            FROM roots st
            RETURNING id, group_name, workflow_run_id, workflow_step
        ), steps_in AS (
            INSERT INTO workflow_run_steps (run_id, name, state, task_id, task_count, ready_at)
            SELECT r.id, s.name, CASE WHEN t.id IS NULL THEN 'pending' ELSE 'queued' END, t.id,
                   CASE WHEN t.id IS NULL THEN 0 ELSE 1 END, CASE WHEN t.id IS NULL THEN NULL ELSE now() END
            FROM runs r JOIN workflow_version_steps s ON s.version_id = r.version_id
            LEFT JOIN tasks_in t ON t.workflow_run_id = r.id AND t.workflow_step = s.name
            ORDER BY r.id, s.position
        ), fires AS (
            INSERT INTO schedule_fires (schedule_id, workflow_id, nominal_time, source, outcome, kind, recorded_at,
                                        run_id, run_state, run_active, started_at, lag_ms)
            SELECT i.sid, i.wid, i.at, 'schedule', 'started', i.kind, coalesce(p_now, clock_timestamp()),
                   r.id, 'running', true, coalesce(p_now, clock_timestamp()),
                   (extract(epoch FROM coalesce(p_now, clock_timestamp()) - i.at) * 1000)::bigint
            FROM input i JOIN runs r ON r.idempotency_key = i.key
            RETURNING id, schedule_id, nominal_time, run_id
        ), notified AS (
            -- One wake-up per group, on the channel submit uses (delivered at commit).
            SELECT count(pg_notify('baton_claim', 'g:' || g.group_name)) AS n
            FROM (SELECT DISTINCT group_name FROM tasks_in) g
        )
        SELECT f.schedule_id, f.nominal_time, f.id, f.run_id FROM fires f, notified;
        RETURN;
    END IF;
    FOR i IN 1 .. coalesce(cardinality(p_schedules), 0) LOOP
        v_fire := NULL;
        INSERT INTO schedule_fires (schedule_id, workflow_id, nominal_time, source, outcome, reason, kind, recorded_at)
        VALUES (p_schedules[i], p_workflows[i], p_nominals[i], 'schedule', 'skipped', 'starting', p_kinds[i],
                coalesce(p_now, clock_timestamp()))
        ON CONFLICT DO NOTHING
        RETURNING id INTO v_fire;
        CONTINUE WHEN v_fire IS NULL;
        SELECT ws.run_id, ws.created INTO v_run, v_created
          FROM workflow_start(p_versions[i], p_params[i], p_strategies[i], p_keys[i], p_timeouts[i]) ws;
        IF NOT v_created THEN
            RAISE EXCEPTION 'fire % of schedule %: run % already holds key %', p_nominals[i], p_schedules[i], v_run, p_keys[i];
        END IF;
        v_at := coalesce(p_now, clock_timestamp());
        UPDATE schedule_fires f SET outcome = 'started', reason = NULL, run_id = v_run, run_state = r.state,
               run_active = r.state IN ('running', 'paused'), started_at = v_at,
               lag_ms = (extract(epoch FROM v_at - f.nominal_time) * 1000)::bigint
          FROM workflow_runs r
         WHERE f.id = v_fire AND r.id = v_run;
        o_schedule := p_schedules[i];
        o_nominal := p_nominals[i];
        o_fire := v_fire;
        o_run := v_run;
        RETURN NEXT;
    END LOOP;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION workflow_map_fill(p_run bigint, p_step text) RETURNS void LANGUAGE plpgsql AS $$
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
