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

-- name: MasterSessionListStale :many
SELECT id FROM master_sessions
WHERE state = 'alive' AND last_heartbeat_at < now() - make_interval(secs => sqlc.arg(timeout_ms)::float8 / 1000)
ORDER BY id;

-- name: MasterSessionMarkDead :one
UPDATE master_sessions
SET state = 'dead', ended_at = clock_timestamp()
WHERE id = @id
  AND state = 'alive'
  AND last_heartbeat_at < now() - make_interval(secs => sqlc.arg(timeout_ms)::float8 / 1000)
RETURNING ended_at::timestamptz AS deadline;
