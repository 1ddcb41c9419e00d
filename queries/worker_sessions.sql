-- name: WorkerSessionRegister :one
INSERT INTO worker_sessions (name, group_name, slots, host, pid, version)
VALUES (@name, @group_name, @slots, @host, @pid, @version)
RETURNING *;

-- Heartbeat touches only last_heartbeat_at (not indexed: a HOT update) and only while
-- the session may still work; it returns the state so a worker learns it was declared dead.
-- name: WorkerSessionHeartbeat :one
UPDATE worker_sessions
SET last_heartbeat_at = CASE WHEN state IN ('alive', 'draining') THEN now() ELSE last_heartbeat_at END
WHERE id = @id
RETURNING state;

-- The heartbeat of a worker serving several groups (one session per group): one
-- statement touches every session of the process, so they age together and a
-- master never finds one of them stale while another is fresh. Same HOT update.
-- name: WorkerSessionHeartbeatMany :many
UPDATE worker_sessions
SET last_heartbeat_at = CASE WHEN state IN ('alive', 'draining') THEN now() ELSE last_heartbeat_at END
WHERE id = ANY (@ids::bigint[])
RETURNING id, state;

-- name: WorkerSessionDrain :execrows
UPDATE worker_sessions SET state = 'draining'
WHERE id = @id AND state = 'alive';

-- The caller holds the group's dispatch lock, so no dispatch to this session can
-- commit after ended_at (clock_timestamp(), taken after the lock wait): failover's
-- deadline then covers every task the session was ever given.
-- name: WorkerSessionStop :execrows
UPDATE worker_sessions SET state = 'stopped', ended_at = clock_timestamp()
WHERE id = @id AND state IN ('alive', 'draining');

-- Sessions a master must fail over: live ones whose heartbeat is older than the
-- timeout (Postgres time, or the test's "now"), live ones that promised a liveness
-- lock and whose heartbeat is older than the crash-detection age (the failover then
-- probes the lock; never within a timeout of a Postgres restart, which frees every
-- lock), and ended ones that still own active tasks. Every branch is index-backed
-- (worker_sessions_live_by_group, tasks_active_by_session), however many ended
-- sessions and finished tasks are kept.
-- name: WorkerSessionListFailoverCandidates :many
SELECT s.id, s.group_name, s.state
FROM worker_sessions s
WHERE s.state IN ('alive', 'draining')
  AND (s.last_heartbeat_at < coalesce(sqlc.narg('now')::timestamptz, now()) - make_interval(secs => sqlc.arg(timeout_ms)::float8 / 1000)
       OR (sqlc.arg(crash_ms)::float8 > 0 AND s.liveness_lock
           AND s.last_heartbeat_at < coalesce(sqlc.narg('now')::timestamptz, now()) - make_interval(secs => sqlc.arg(crash_ms)::float8 / 1000)
           AND coalesce(sqlc.narg('postmaster_start')::timestamptz, pg_postmaster_start_time())
               < coalesce(sqlc.narg('now')::timestamptz, now()) - make_interval(secs => sqlc.arg(timeout_ms)::float8 / 1000)))
UNION
SELECT s.id, s.group_name, s.state
FROM (SELECT DISTINCT t.worker_session_id AS id FROM tasks t WHERE t.worker_session_id IS NOT NULL) AS a
JOIN worker_sessions s ON s.id = a.id
WHERE s.state IN ('dead', 'stopped')
ORDER BY id;

-- Declares a session dead, re-checking staleness in the same statement: its
-- heartbeat is older than the timeout, or (crash detection) the caller found its
-- liveness lock free (lock_free), it promised that lock, its heartbeat is older
-- than the crash-detection age and Postgres did not restart within a timeout. The
-- deadline is clock_timestamp(): taken after any lock wait, so it is later than
-- every dispatch that committed before this statement could proceed.
-- name: WorkerSessionMarkDead :one
UPDATE worker_sessions
SET state = 'dead', ended_at = clock_timestamp()
WHERE id = @id
  AND state IN ('alive', 'draining')
  AND (last_heartbeat_at < coalesce(sqlc.narg('now')::timestamptz, now()) - make_interval(secs => sqlc.arg(timeout_ms)::float8 / 1000)
       OR (@lock_free::bool AND sqlc.arg(crash_ms)::float8 > 0 AND liveness_lock
           AND last_heartbeat_at < coalesce(sqlc.narg('now')::timestamptz, now()) - make_interval(secs => sqlc.arg(crash_ms)::float8 / 1000)
           AND coalesce(sqlc.narg('postmaster_start')::timestamptz, pg_postmaster_start_time())
               < coalesce(sqlc.narg('now')::timestamptz, now()) - make_interval(secs => sqlc.arg(timeout_ms)::float8 / 1000)))
RETURNING group_name, ended_at::timestamptz AS deadline,
          (last_heartbeat_at >= coalesce(sqlc.narg('now')::timestamptz, now()) - make_interval(secs => sqlc.arg(timeout_ms)::float8 / 1000))::boolean AS crash_detected;

-- name: WorkerSessionGet :one
SELECT * FROM worker_sessions WHERE id = @id;

-- Healthy sessions of a group with their free slots, least loaded first.
-- name: WorkerSessionListHealthy :many
SELECT s.id, s.slots,
       (s.slots - (SELECT count(*) FROM tasks t
                   WHERE t.worker_session_id = s.id AND t.state IN ('dispatched', 'running')))::int AS free_slots
FROM worker_sessions s
WHERE s.group_name = @group_name
  AND s.state = 'alive'
  AND s.last_heartbeat_at >= coalesce(sqlc.narg('now')::timestamptz, now()) - make_interval(secs => sqlc.arg(timeout_ms)::float8 / 1000)
ORDER BY free_slots DESC, s.id;

-- name: WorkerSessionList :many
SELECT s.*,
       extract(epoch FROM now() - s.last_heartbeat_at)::float8 AS heartbeat_age_seconds,
       (SELECT count(*) FROM tasks t WHERE t.worker_session_id = s.id AND t.state IN ('dispatched', 'running'))::int AS active_tasks
FROM worker_sessions s
WHERE (sqlc.narg('group_name')::text IS NULL OR s.group_name = sqlc.narg('group_name'))
  AND (@include_ended::bool OR s.state IN ('alive', 'draining'))
ORDER BY s.id DESC
LIMIT @max_rows;

-- Retention: ended sessions older than the cutoff that nothing references any more
-- (no task, attempt or dispatch row names them), oldest first, in batches (index
-- worker_sessions_ended; each reference check is an index probe).
-- name: WorkerSessionPruneEnded :execrows
DELETE FROM worker_sessions
WHERE id = ANY (ARRAY(
    SELECT s.id FROM worker_sessions s
    WHERE s.ended_at < coalesce(sqlc.narg('now')::timestamptz, now()) - make_interval(secs => @retention_s::float8)
      AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.worker_session_id = s.id)
      AND NOT EXISTS (SELECT 1 FROM task_attempt_log a WHERE a.worker_session_id = s.id)
      AND NOT EXISTS (SELECT 1 FROM dispatch_queue d WHERE d.target_session_id = s.id)
    ORDER BY s.ended_at
    LIMIT @max_rows
    FOR UPDATE SKIP LOCKED))
  AND ended_at < coalesce(sqlc.narg('now')::timestamptz, now()) - make_interval(secs => @retention_s::float8);

-- The worker holds its liveness lock (LockWorkerLiveness) on a dedicated connection
-- and will fence itself if that connection is lost: masters may use the lock.
-- name: WorkerSessionSetLivenessLock :execrows
UPDATE worker_sessions SET liveness_lock = true
WHERE id = @id AND state IN ('alive', 'draining');

-- The promise of a worker serving several groups: all of its sessions' locks are
-- held on its one liveness connection. Returns how many were promised (fewer than
-- asked: a session already ended).
-- name: WorkerSessionSetLivenessLockMany :execrows
UPDATE worker_sessions SET liveness_lock = true
WHERE id = ANY (@ids::bigint[]) AND state IN ('alive', 'draining');
