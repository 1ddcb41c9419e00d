-- baton's own schema (internal/migrate) and the search_path of client transactions
-- (the root package's Client runs on the application's pool).

-- name: SchemaVersionTableExists :one
SELECT (to_regclass(@qualified_name::text) IS NOT NULL)::boolean AS found;

-- An install from before baton had its own schema: its tables are in public.
-- name: SchemaLegacyPublicInstall :one
SELECT (to_regclass('public.dispatch_queue') IS NOT NULL
    AND to_regclass('public.failover_events') IS NOT NULL)::boolean AS found;

-- name: SchemaSearchPath :one
SELECT current_setting('search_path')::text AS search_path;

-- Sets search_path until the end of the current transaction.
-- name: SchemaSetLocalSearchPath :exec
SELECT set_config('search_path', @search_path::text, true);

-- name: TxSetAsyncCommit :exec
-- For a transaction whose writes are hints that a Postgres crash may lose (the
-- commit returns before the WAL flush, and its row locks are released sooner).
SELECT set_config('synchronous_commit', 'off', true);

-- name: TxListPlanning :exec
-- For a page read whose optional filters a generic plan cannot drop: plan it
-- with this transaction's parameter values; and without JIT, which a page of
-- rows never repays: the list by group's estimate (its recursive step is a
-- guess) passed jit_above_cost, and compiling added 10-40 ms to a 1 ms read.
SELECT set_config('plan_cache_mode', 'force_custom_plan', true), set_config('jit', 'off', true);
