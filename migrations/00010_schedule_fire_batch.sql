-- +goose Up
-- Set-based firing (docs/schedules.md): one statement records and starts the
-- planned fires of a whole batch of locked schedules, in the caller's
-- transaction, which also advances the schedules.
--
-- p_set true: set-based. The runs, their steps, the tasks of their root steps
-- (a root step has no upstream, so its trigger rule always says run) and the
-- ledger rows (started, with the run and its lag) are inserted by one
-- statement, with plain INSERTs: a ledger key or an idempotency key already
-- there, or a task that cannot be stored, fails the whole statement, and the
-- caller fires those schedules one by one (p_set false).
-- p_set false: for each (schedule, nominal time), claims the ledger key (ON
-- CONFLICT DO NOTHING: a row already there keeps its owner and nothing
-- starts), starts the run with workflow_start (which fails a step whose task
-- cannot be stored) and records the run and its lag on the row.
-- +goose StatementBegin
CREATE FUNCTION schedule_fire_start_many(p_schedules bigint[], p_workflows bigint[], p_nominals timestamptz[], p_kinds text[],
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

-- Ledger retention (schedule.PruneLedger) deletes old rows of a schedule by
-- nominal time; the key's index (schedule_id, nominal_time) serves it. Rows of
-- unscheduled backfills are pruned by (workflow_id, nominal_time).
CREATE INDEX schedule_fires_nominal ON schedule_fires (nominal_time);

-- +goose Down
DROP INDEX schedule_fires_nominal;
DROP FUNCTION schedule_fire_start_many(bigint[], bigint[], timestamptz[], text[], bigint[], jsonb[], text[], text[], bigint[], timestamptz, boolean);
