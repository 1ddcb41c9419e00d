-- +goose Up
-- Set-based firing (docs/schedules.md): one statement records and starts the
-- planned fires of a whole batch of locked schedules. For each (schedule,
-- nominal time) it claims the ledger key (ON CONFLICT DO NOTHING: a row already
-- there keeps its owner and nothing starts), starts the run with
-- workflow_start, and records the run and its lag on the row, all in the
-- caller's transaction, which also advances the schedules.
-- +goose StatementBegin
CREATE FUNCTION schedule_fire_start_many(p_schedules bigint[], p_workflows bigint[], p_nominals timestamptz[], p_kinds text[],
                                         p_versions bigint[], p_params jsonb[], p_strategies text[], p_keys text[],
                                         p_timeouts bigint[], p_now timestamptz)
RETURNS TABLE (o_schedule bigint, o_nominal timestamptz, o_fire bigint, o_run bigint) LANGUAGE plpgsql AS $$
DECLARE
    v_fire bigint;
    v_run bigint;
    v_created boolean;
    v_at timestamptz;
BEGIN
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
DROP FUNCTION schedule_fire_start_many(bigint[], bigint[], timestamptz[], text[], bigint[], jsonb[], text[], text[], bigint[], timestamptz);
