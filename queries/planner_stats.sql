-- Planner statistics of the tasks table (internal/master's analyzer).

-- name: StatsTasksStale :one
-- Whether tasks changed by at least its own size since the planner last sampled
-- it (or was never sampled and holds at least @min_rows rows): its plans are then
-- made from a size off by 2x or more. Read from the statistics counters: no lock,
-- no scan. False when this role may not analyze tasks (ANALYZE would only warn).
SELECT (CASE WHEN c.reltuples < 0 THEN pg_stat_get_live_tuples(c.oid) >= @min_rows::bigint
             ELSE pg_stat_get_mod_since_analyze(c.oid) >= greatest(@min_rows::bigint, c.reltuples::bigint) END
        AND pg_has_role(c.relowner, 'USAGE'))::boolean AS stale
FROM pg_catalog.pg_class c
WHERE c.oid = 'tasks'::regclass;

-- name: StatsAnalyzeTasks :exec
-- SKIP_LOCKED: a VACUUM of tasks in progress (autovacuum's, or an operator's)
-- is neither waited for nor canceled; the next round tries again.
ANALYZE (SKIP_LOCKED) tasks;
