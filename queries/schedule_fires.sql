-- The fire ledger (migrations/00007_schedules.sql).

-- Claims a fire time: inserted buffered or skipped, or as started with the run
-- it started (ScheduleFireSetRun then records the run's state and lag). Returns
-- nothing if the time is already in the ledger: whoever wrote it first owns it.
-- name: ScheduleFireInsert :one
INSERT INTO schedule_fires (schedule_id, workflow_id, nominal_time, source, backfill_id, outcome, reason, kind, recorded_at, run_id)
VALUES (sqlc.narg('schedule_id'), @workflow_id, @nominal_time, @source, sqlc.narg('backfill_id'), @outcome, sqlc.narg('reason'),
        @kind, coalesce(sqlc.narg('now')::timestamptz, clock_timestamp()), sqlc.narg('run_id'))
ON CONFLICT DO NOTHING
RETURNING id;

-- Records the run a fire started (its row was inserted or re-claimed in this
-- transaction).
-- name: ScheduleFireSetRun :exec
UPDATE schedule_fires f SET outcome = 'started', reason = NULL, run_id = @run_id,
       previous_run_ids = CASE WHEN f.run_id IS NOT NULL AND f.run_id <> @run_id THEN f.previous_run_ids || f.run_id ELSE f.previous_run_ids END,
       run_state = r.state, run_active = r.state IN ('running', 'paused'), failure_seen = false,
       started_at = coalesce(sqlc.narg('now')::timestamptz, clock_timestamp()),
       lag_ms = (extract(epoch FROM coalesce(sqlc.narg('now')::timestamptz, clock_timestamp()) - f.nominal_time) * 1000)::bigint,
       backfill_id = coalesce(sqlc.narg('backfill_id'), f.backfill_id),
       source = CASE WHEN sqlc.narg('backfill_id')::bigint IS NOT NULL THEN 'backfill' ELSE f.source END
FROM workflow_runs r
WHERE f.id = @id AND r.id = @run_id;

-- The oldest buffered fire of a schedule.
-- name: ScheduleFireOldestBuffered :one
SELECT id, nominal_time FROM schedule_fires
WHERE schedule_id = @schedule_id AND outcome = 'buffered'
ORDER BY nominal_time LIMIT 1;

-- name: ScheduleFireBufferedCount :one
SELECT count(*)::int FROM schedule_fires WHERE schedule_id = @schedule_id AND outcome = 'buffered';

-- A ledger row of a logical time, locked (backfill admission).
-- name: ScheduleFireGetForUpdate :one
SELECT id, outcome, run_id, run_state, run_active FROM schedule_fires
WHERE ((sqlc.narg('schedule_id')::bigint IS NOT NULL AND schedule_id = sqlc.narg('schedule_id'))
       OR (sqlc.narg('schedule_id')::bigint IS NULL AND schedule_id IS NULL AND workflow_id = @workflow_id))
  AND nominal_time = @nominal_time
FOR UPDATE;

-- Ledger rows of times in a range (backfill dry run).
-- name: ScheduleFireInRange :many
SELECT nominal_time, outcome, run_id, run_state, run_active FROM schedule_fires
WHERE ((sqlc.narg('schedule_id')::bigint IS NOT NULL AND schedule_id = sqlc.narg('schedule_id'))
       OR (sqlc.narg('schedule_id')::bigint IS NULL AND schedule_id IS NULL AND workflow_id = @workflow_id))
  AND nominal_time BETWEEN @from_at AND @to_at;

-- name: ScheduleFireList :many
SELECT f.id, f.nominal_time, f.source, f.backfill_id, f.outcome, f.reason, f.kind, f.run_id, f.run_state,
       f.recorded_at, f.started_at, f.lag_ms
FROM schedule_fires f
WHERE f.schedule_id = @schedule_id
ORDER BY f.nominal_time DESC
LIMIT @max_rows;

-- name: ScheduleFireSetSkipped :exec
UPDATE schedule_fires SET outcome = 'skipped', reason = @reason WHERE id = @id AND outcome <> 'started';

-- The batch fire (schedule.FirePass). Active runs of the locked schedules.
-- name: ScheduleActiveRunsMany :many
SELECT schedule_id::bigint AS schedule_id, run_id::bigint AS run_id FROM schedule_fires
WHERE schedule_id = ANY (@schedule_ids::bigint[]) AND run_active
ORDER BY schedule_id, run_id;

-- Ledger rows already present (a backfill's, a manual trigger's) at or after
-- each locked schedule's next nominal time, up to until.
-- name: ScheduleFireExistingMany :many
SELECT f.schedule_id::bigint AS schedule_id, f.nominal_time FROM schedule_fires f
JOIN (SELECT unnest(@schedule_ids::bigint[]) AS id, unnest(@from_nominals::timestamptz[]) AS from_at) u
  ON f.schedule_id = u.id AND f.nominal_time >= u.from_at AND f.nominal_time <= @until::timestamptz;

-- Records skipped and buffered fire times of many schedules in one statement;
-- a time already in the ledger keeps its row.
-- name: ScheduleFireRecordMany :execrows
INSERT INTO schedule_fires (schedule_id, workflow_id, nominal_time, source, outcome, reason, kind, recorded_at)
SELECT u.sid, u.wid, u.at, 'schedule', u.outcome, nullif(u.reason, ''), u.kind, coalesce(sqlc.narg('now')::timestamptz, clock_timestamp())
FROM (SELECT unnest(@schedule_ids::bigint[]) AS sid, unnest(@workflow_ids::bigint[]) AS wid,
             unnest(@nominal_times::timestamptz[]) AS at, unnest(@outcomes::text[]) AS outcome,
             unnest(@reasons::text[]) AS reason, unnest(@kinds::text[]) AS kind) u
ON CONFLICT DO NOTHING;

-- Claims and starts many fire times (function schedule_fire_start_many): one
-- row per run started; a time already in the ledger returns nothing.
-- name: ScheduleFireStartMany :many
SELECT o_schedule::bigint AS schedule_id, o_nominal::timestamptz AS nominal_time, o_fire::bigint AS fire_id, o_run::bigint AS run_id
FROM schedule_fire_start_many(@schedule_ids::bigint[], @workflow_ids::bigint[], @nominal_times::timestamptz[], @kinds::text[],
     @version_ids::bigint[], @params::jsonb[], @strategies::text[], @keys::text[], @timeouts_ms::bigint[], sqlc.narg('now')::timestamptz, @set_based::bool);

-- A manual trigger's run recorded on a row it re-claimed (the row was locked by
-- ScheduleFireGetForUpdate in this transaction, and is not active).
-- name: ScheduleFireSetManual :exec
UPDATE schedule_fires SET source = 'manual' WHERE id = @id AND NOT run_active;

-- Ledger retention: rows of fire times older than the retention, in batches.
-- Kept: a row whose run is active or buffered (overlap, max_active_runs and
-- a backfill's parallel count them), a failed run pause_on_failure has not
-- acted on, rows of a backfill still running or paused, and rows at or past
-- their schedule's next nominal time. The schedule never fires a time before
-- its next nominal time again, so a pruned row cannot be fired twice. The
-- DELETE re-checks the age and the activity.
-- name: ScheduleFirePrune :execrows
DELETE FROM schedule_fires f
WHERE f.id = ANY (ARRAY(
    SELECT o.id FROM schedule_fires o
    WHERE o.nominal_time < coalesce(sqlc.narg('now')::timestamptz, now()) - make_interval(secs => @retention_s::float8)
      AND NOT o.run_active AND o.outcome <> 'buffered'
      AND (o.run_state IS DISTINCT FROM 'failed' OR o.failure_seen
           OR NOT coalesce((SELECT s.pause_on_failure FROM schedules s WHERE s.id = o.schedule_id), false))
      AND (o.backfill_id IS NULL
           OR coalesce((SELECT b.state FROM backfills b WHERE b.id = o.backfill_id), '') NOT IN ('running', 'paused'))
      AND o.nominal_time < coalesce((SELECT s.next_nominal_at FROM schedules s WHERE s.id = o.schedule_id), 'infinity')
    ORDER BY o.nominal_time
    LIMIT @max_rows
    FOR UPDATE SKIP LOCKED))
  AND f.nominal_time < coalesce(sqlc.narg('now')::timestamptz, now()) - make_interval(secs => @retention_s::float8)
  AND NOT f.run_active AND f.outcome <> 'buffered';
