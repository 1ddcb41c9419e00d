-- name: MasterSessionRegister :one
INSERT INTO master_sessions (name, host, pid, version)
VALUES (@name, @host, @pid, @version)
RETURNING *;

-- name: MasterSessionHeartbeat :one
UPDATE master_sessions
SET last_heartbeat_at = CASE WHEN state = 'alive' THEN now() ELSE last_heartbeat_at END
WHERE id = @id
RETURNING state;

-- name: MasterSessionStop :execrows
UPDATE master_sessions SET state = 'stopped', ended_at = now()
WHERE id = @id AND state = 'alive';

-- Live masters whose heartbeat is older than the timeout (Postgres time, or the
-- test's "now").
-- name: MasterSessionListStale :many
SELECT id FROM master_sessions
WHERE state = 'alive'
  AND last_heartbeat_at < coalesce(sqlc.narg('now')::timestamptz, now()) - make_interval(secs => sqlc.arg(timeout_ms)::float8 / 1000)
ORDER BY id;

-- name: MasterSessionMarkDead :one
UPDATE master_sessions
SET state = 'dead', ended_at = clock_timestamp()
WHERE id = @id
  AND state = 'alive'
  AND last_heartbeat_at < coalesce(sqlc.narg('now')::timestamptz, now()) - make_interval(secs => sqlc.arg(timeout_ms)::float8 / 1000)
RETURNING ended_at::timestamptz AS deadline;

-- Retention: ended master sessions older than the cutoff, in batches (index
-- master_sessions_ended). Their failover events keep the id in detected_by.
-- name: MasterSessionPruneEnded :execrows
DELETE FROM master_sessions
WHERE id = ANY (ARRAY(
    SELECT s.id FROM master_sessions s
    WHERE s.ended_at < coalesce(sqlc.narg('now')::timestamptz, now()) - make_interval(secs => @retention_s::float8)
    ORDER BY s.ended_at
    LIMIT @max_rows
    FOR UPDATE SKIP LOCKED))
  AND ended_at < coalesce(sqlc.narg('now')::timestamptz, now()) - make_interval(secs => @retention_s::float8);

-- Masters alive by heartbeat (Postgres time): with none, queued tasks wait.
-- name: MasterSessionCountLive :one
SELECT count(*) FROM master_sessions
WHERE state = 'alive'
  AND last_heartbeat_at > coalesce(sqlc.narg('now')::timestamptz, now()) - sqlc.arg('master_timeout_ms')::bigint * interval '1 millisecond';
