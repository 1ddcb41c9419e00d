-- Cluster gauges for /metrics (internal/metrics), read every refresh interval and
-- cached; each statement is index-backed or reads a small table, so the cost does
-- not grow with finished tasks (River #781: counting every row is slow).

-- Unfinished tasks by group and state: queued from the tasks_queue partial index,
-- scheduled from tasks_scheduled, dispatched and running from
-- tasks_active_by_session.
-- name: MetricsTasksUnfinished :many
SELECT group_name, 'queued'::text AS state, count(*)::bigint AS tasks FROM tasks WHERE state = 'queued' GROUP BY group_name
UNION ALL
SELECT group_name, 'scheduled'::text, count(*)::bigint FROM tasks WHERE state = 'scheduled' GROUP BY group_name
UNION ALL
SELECT group_name, state, count(*)::bigint FROM tasks WHERE worker_session_id IS NOT NULL GROUP BY group_name, state;

-- Per group: seconds since its oldest runnable task (queued, due) became
-- runnable; 0 when none waits.
-- name: MetricsOldestRunnable :many
SELECT g.name AS group_name,
       coalesce((SELECT extract(epoch FROM now() - min(t.available_at)) FROM tasks t
                 WHERE t.group_name = g.name AND t.state = 'queued' AND t.available_at <= now()), 0)::float8 AS age_seconds
FROM worker_groups g;

-- Live worker sessions by group and state, and each group's newest heartbeat
-- (of any session, so a group whose workers all died keeps its last one).
-- name: MetricsWorkers :many
SELECT g.name AS group_name,
       (SELECT count(*) FROM worker_sessions s WHERE s.group_name = g.name AND s.state = 'alive')::bigint AS alive,
       (SELECT count(*) FROM worker_sessions s WHERE s.group_name = g.name AND s.state = 'draining')::bigint AS draining,
       coalesce((SELECT extract(epoch FROM max(s.last_heartbeat_at)) FROM worker_sessions s WHERE s.group_name = g.name), 0)::float8 AS last_heartbeat
FROM worker_groups g;

-- name: MetricsCluster :one
SELECT (SELECT count(*) FROM master_sessions WHERE state = 'alive')::bigint AS masters_alive,
       (SELECT count(*) FROM failover_events WHERE finished_at IS NULL)::bigint AS failovers_unfinished,
       (SELECT count(*) FROM worker_groups WHERE paused)::bigint AS groups_paused;

-- Postgres' clock, for ages shown beside its timestamps.
-- name: MetricsNow :one
SELECT now()::timestamptz AS now;
