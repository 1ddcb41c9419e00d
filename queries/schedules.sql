-- Schedules (migrations/00007_schedules.sql). The fire pass is in
-- internal/schedule: every statement that acts on a schedule it selected
-- re-checks the predicate it was selected by.

-- name: ScheduleInsert :one
INSERT INTO schedules (name, workflow_id, params, cron, interval_ms, zone, start_at, end_at, anchor_at, jitter_ms,
                       overlap, buffer_max, max_active_runs, catchup, catchup_window_ms, catchup_max, pause_on_failure,
                       dst_gap, dst_fold, paused, next_nominal_at, next_fire_at)
VALUES (@name, @workflow_id, @params, sqlc.narg('cron'), sqlc.narg('interval_ms'), @zone, sqlc.narg('start_at'),
        sqlc.narg('end_at'), @anchor_at, @jitter_ms, @overlap, @buffer_max, @max_active_runs, @catchup,
        @catchup_window_ms, @catchup_max, @pause_on_failure, @dst_gap, @dst_fold, @paused,
        sqlc.narg('next_nominal_at'), sqlc.narg('next_fire_at'))
RETURNING id;

-- The update rewrites the whole definition (the caller read and merged it
-- under ScheduleGetForUpdate) and the next fire time computed from it.
-- name: ScheduleUpdate :exec
UPDATE schedules SET workflow_id = @workflow_id, params = @params, cron = sqlc.narg('cron'), interval_ms = sqlc.narg('interval_ms'),
       zone = @zone, start_at = sqlc.narg('start_at'), end_at = sqlc.narg('end_at'), anchor_at = @anchor_at, jitter_ms = @jitter_ms,
       overlap = @overlap, buffer_max = @buffer_max, max_active_runs = @max_active_runs, catchup = @catchup,
       catchup_window_ms = @catchup_window_ms, catchup_max = @catchup_max, pause_on_failure = @pause_on_failure,
       dst_gap = @dst_gap, dst_fold = @dst_fold, next_nominal_at = sqlc.narg('next_nominal_at'),
       next_fire_at = sqlc.narg('next_fire_at'), updated_at = now()
WHERE id = @id;

-- name: ScheduleGetForUpdate :one
SELECT s.*, w.name AS workflow FROM schedules s JOIN workflows w ON w.id = s.workflow_id
WHERE s.name = @name FOR UPDATE OF s;

-- name: ScheduleGet :one
SELECT s.*, w.name AS workflow,
       (SELECT count(*) FROM schedule_fires f WHERE f.schedule_id = s.id AND f.run_active)::int AS active_runs
FROM schedules s JOIN workflows w ON w.id = s.workflow_id
WHERE s.name = @name;

-- name: ScheduleList :many
SELECT s.*, w.name AS workflow,
       (SELECT count(*) FROM schedule_fires f WHERE f.schedule_id = s.id AND f.run_active)::int AS active_runs
FROM schedules s JOIN workflows w ON w.id = s.workflow_id
WHERE (sqlc.narg('workflow')::text IS NULL OR w.name = sqlc.narg('workflow'))
ORDER BY s.name
LIMIT @max_rows;

-- name: ScheduleSetPaused :one
UPDATE schedules SET paused = @paused, paused_reason = @reason, updated_at = now()
WHERE name = @name AND paused <> @paused
RETURNING id;

-- name: ScheduleDelete :execrows
DELETE FROM schedules WHERE name = @name;

-- The due scan: schedules whose next fire is due, locked; those another master
-- holds are skipped (it is firing them).
-- name: ScheduleLockDue :many
SELECT s.*, w.name AS workflow FROM schedules s JOIN workflows w ON w.id = s.workflow_id
WHERE s.next_fire_at <= coalesce(sqlc.narg('now')::timestamptz, now())
ORDER BY s.next_fire_at
LIMIT @max_rows
FOR UPDATE OF s SKIP LOCKED;

-- Schedules with buffered fires and no active run, locked.
-- name: ScheduleLockBuffered :many
SELECT s.*, w.name AS workflow FROM schedules s JOIN workflows w ON w.id = s.workflow_id
WHERE s.buffered > 0 AND NOT s.paused
  AND NOT EXISTS (SELECT 1 FROM schedule_fires f WHERE f.schedule_id = s.id AND f.run_active)
ORDER BY s.id
LIMIT @max_rows
FOR UPDATE OF s SKIP LOCKED;

-- Schedules with pause_on_failure and a failed run it has not acted on, locked.
-- name: ScheduleLockFailed :many
SELECT s.id FROM schedules s
WHERE s.pause_on_failure
  AND EXISTS (SELECT 1 FROM schedule_fires f WHERE f.schedule_id = s.id AND f.run_state = 'failed' AND NOT f.failure_seen)
ORDER BY s.id
LIMIT @max_rows
FOR UPDATE OF s SKIP LOCKED;

-- Pauses a schedule for its failed runs and marks them seen. Re-checks that
-- pause_on_failure is set.
-- name: SchedulePauseOnFailure :one
WITH seen AS (
    UPDATE schedule_fires f SET failure_seen = true
    WHERE f.schedule_id = @id AND f.run_state = 'failed' AND NOT f.failure_seen
    RETURNING f.run_id
)
UPDATE schedules s SET paused = true, updated_at = now(),
       paused_reason = 'run ' || (SELECT max(run_id) FROM seen)::text || ' failed (pause_on_failure)'
WHERE s.id = @id AND s.pause_on_failure AND EXISTS (SELECT 1 FROM seen)
RETURNING (SELECT max(run_id) FROM seen)::bigint AS run_id;

-- name: ScheduleBufferedDelta :exec
UPDATE schedules SET buffered = buffered + @delta WHERE id = @id;

-- How long until the earliest due schedule, in Postgres time (no row: none).
-- name: ScheduleNextDueIn :many
SELECT extract(epoch FROM (s.next_fire_at - coalesce(sqlc.narg('now')::timestamptz, now())))::float8 AS seconds
FROM schedules s WHERE s.next_fire_at IS NOT NULL
ORDER BY s.next_fire_at LIMIT 1;

-- name: ScheduleNow :one
SELECT coalesce(sqlc.narg('now')::timestamptz, clock_timestamp())::timestamptz AS now;

-- The workflow a schedule or backfill starts, with its latest definition
-- (params are checked against it when the schedule is stored).
-- name: ScheduleWorkflowLookup :one
SELECT w.id, v.definition FROM workflows w
JOIN workflow_versions v ON v.workflow_id = w.id AND v.version = w.latest_version
WHERE w.name = @name;

-- A schedule's row locked for a backfill's admission (skipped if the fire pass
-- holds it: the backfill tries again next pass).
-- name: ScheduleLockByID :one
SELECT id FROM schedules WHERE id = @id FOR UPDATE SKIP LOCKED;

-- name: ScheduleIDByName :one
SELECT id FROM schedules WHERE name = @name;

-- Sets a new schedule's first fire time (its id is part of the jitter).
-- name: ScheduleAdvanceInit :execrows
UPDATE schedules SET next_nominal_at = sqlc.narg('next_nominal_at'), next_fire_at = sqlc.narg('next_fire_at')
WHERE id = @id AND next_nominal_at IS NULL;

-- Advances many locked schedules past the fire times they recorded. Re-checks
-- each one's next nominal time is still the one its pass started from.
-- name: ScheduleAdvanceMany :execrows
UPDATE schedules s SET next_nominal_at = CASE WHEN u.has_next THEN u.next_nominal END,
       next_fire_at = CASE WHEN u.has_next THEN u.next_fire END,
       buffered = s.buffered + u.delta
FROM (SELECT unnest(@ids::bigint[]) AS id, unnest(@from_nominals::timestamptz[]) AS from_nominal,
             unnest(@has_next::bool[]) AS has_next, unnest(@next_nominals::timestamptz[]) AS next_nominal,
             unnest(@next_fires::timestamptz[]) AS next_fire, unnest(@deltas::int[]) AS delta) u
WHERE s.id = u.id AND s.next_nominal_at = u.from_nominal;

-- The latest version of each workflow the locked schedules start.
-- name: ScheduleWorkflowVersions :many
SELECT w.id AS workflow_id, v.id AS version_id, v.definition FROM workflows w
JOIN workflow_versions v ON v.workflow_id = w.id AND v.version = w.latest_version
WHERE w.id = ANY (@workflow_ids::bigint[]);
