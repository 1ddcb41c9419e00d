-- Backfills (migrations/00007_schedules.sql).

-- name: BackfillInsert :one
INSERT INTO backfills (workflow_id, schedule_id, params, cron, interval_ms, zone, anchor_at, dst_gap, dst_fold,
                       from_at, to_at, parallel, descending, reprocess, total)
VALUES (@workflow_id, sqlc.narg('schedule_id'), @params, sqlc.narg('cron'), sqlc.narg('interval_ms'), @zone, @anchor_at,
        @dst_gap, @dst_fold, @from_at, @to_at, @parallel, @descending, @reprocess, @total)
RETURNING id;

-- Running backfills, locked: admission of one backfill is serialized by its
-- row, so masters admitting concurrently never exceed its parallel.
-- name: BackfillLockRunning :many
SELECT b.*, w.name AS workflow FROM backfills b JOIN workflows w ON w.id = b.workflow_id
WHERE b.state = 'running'
ORDER BY b.id
LIMIT @max_rows
FOR UPDATE OF b SKIP LOCKED;

-- name: BackfillActiveRuns :one
SELECT count(*)::int FROM schedule_fires WHERE backfill_id = @backfill_id AND run_active;

-- Moves a locked running backfill's cursor. Re-checks the state.
-- name: BackfillAdvance :exec
UPDATE backfills SET cursor_at = sqlc.narg('cursor_at'), exhausted = @exhausted, started = started + @started,
       skipped = skipped + @skipped, updated_at = now()
WHERE id = @id AND state = 'running';

-- name: BackfillFinish :exec
UPDATE backfills SET state = 'succeeded', finished_at = now(), updated_at = now()
WHERE id = @id AND state = 'running' AND exhausted;

-- name: BackfillSetState :one
UPDATE backfills SET state = @to_state, updated_at = now(),
       finished_at = CASE WHEN @to_state::text IN ('canceled', 'succeeded') THEN now() END
WHERE id = @id AND state = ANY (@from_states::text[])
RETURNING id;

-- name: BackfillGet :one
SELECT b.*, w.name AS workflow, s.name AS schedule,
       (SELECT count(*) FROM schedule_fires f WHERE f.backfill_id = b.id AND f.run_active)::int AS running,
       (SELECT count(*) FROM schedule_fires f WHERE f.backfill_id = b.id AND f.run_state = 'succeeded')::int AS succeeded,
       (SELECT count(*) FROM schedule_fires f WHERE f.backfill_id = b.id AND f.run_state IN ('failed', 'canceled', 'stopped'))::int AS failed
FROM backfills b JOIN workflows w ON w.id = b.workflow_id LEFT JOIN schedules s ON s.id = b.schedule_id
WHERE b.id = @id;

-- The columns of BackfillGet, newest first.
-- name: BackfillList :many
SELECT b.*, w.name AS workflow, s.name AS schedule,
       (SELECT count(*) FROM schedule_fires f WHERE f.backfill_id = b.id AND f.run_active)::int AS running,
       (SELECT count(*) FROM schedule_fires f WHERE f.backfill_id = b.id AND f.run_state = 'succeeded')::int AS succeeded,
       (SELECT count(*) FROM schedule_fires f WHERE f.backfill_id = b.id AND f.run_state IN ('failed', 'canceled', 'stopped'))::int AS failed
FROM backfills b JOIN workflows w ON w.id = b.workflow_id LEFT JOIN schedules s ON s.id = b.schedule_id
ORDER BY b.id DESC LIMIT @max_rows;
