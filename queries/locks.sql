-- Advisory locks and NOTIFYs: the coordination baton does without writing rows.
-- Lock classes (first key of the two-key form) are spelled only here:
--   1650524161 = 0x62610001 worker failover (per session)
--   1650524162 = 0x62610002 master failover (per master session)
--   1650524163 = 0x62610003 dispatch (per worker group)
--   1650524164 = 0x62610004 worker liveness (per worker session; session-level)
--   1650524165 = 0x62610005 analyzing tasks (one master at a time)
-- Channel names are spelled only here and in internal/notify (which LISTENs).

-- name: LockTryWorkerFailover :one
SELECT pg_try_advisory_xact_lock(1650524161, hashtext(format('%s', @session_id::bigint)))::boolean AS locked;

-- name: LockTryMasterFailover :one
SELECT pg_try_advisory_xact_lock(1650524162, hashtext(format('%s', @master_id::bigint)))::boolean AS locked;

-- Waits for the group's dispatch lock (bounded by the session's lock_timeout).
-- name: LockDispatchGroup :exec
SELECT pg_advisory_xact_lock(1650524163, hashtext(@group_name::text));

-- name: LockTryAnalyze :one
SELECT pg_try_advisory_xact_lock(1650524165, 0)::boolean AS locked;

-- name: LockTryDispatchGroup :one
SELECT pg_try_advisory_xact_lock(1650524163, hashtext(@group_name::text))::boolean AS locked;

-- Wakes masters' liveness sweep (a session stopped and may have left tasks).
-- name: NotifySweep :exec
SELECT pg_notify('baton_sweep', @payload::text);

-- Wakes masters' dispatchers (tasks are waiting or slots were freed).
-- name: NotifyDispatch :exec
SELECT pg_notify('baton_dispatch', '');

-- Wakes the workers of the given groups (payload "g:<group>", one NOTIFY per
-- group): tasks are waiting in their queue, which they claim directly.
-- name: NotifyQueued :exec
SELECT pg_notify('baton_claim', 'g:' || g) FROM (SELECT DISTINCT unnest(@groups::text[]) AS g) AS s;

-- Wakes the workers named in the payload (comma-separated session ids, "*" = all).
-- name: NotifyClaim :exec
SELECT pg_notify('baton_claim', @payload::text);

-- Bounds every lock wait of the current transaction (SET LOCAL), so one candidate a
-- hung session holds cannot stall a sweep: the wait fails with 55P03 instead.
-- name: LockTimeoutLocal :exec
SELECT set_config('lock_timeout', format('%sms', @timeout_ms::bigint), true);

-- For the rest of the transaction, price a primary-key probe as what it is for
-- rows a batch just locked (cached): with the stock 4.0, a custom plan of a
-- failover batch of 1,000 ids hash-joined a sequential scan of every task instead
-- of 1,000 probes — proportional to the table, not the batch.
-- name: PlanIndexProbesLocal :exec
SELECT set_config('random_page_cost', '1.1', true);

-- Taken by a worker, session-level, on a dedicated connection it keeps for the
-- session's life: the lock is free exactly when no connection of that process
-- holds it any more (crashed process, closed connection). See liveness_lock.
-- name: LockWorkerLiveness :one
SELECT pg_try_advisory_lock(1650524164, hashtext(format('%s', @session_id::bigint)))::boolean AS locked;

-- A master's probe of a worker's liveness lock: true means no connection holds it.
-- Held until the transaction ends, so the worker cannot take it back meanwhile.
-- name: LockTryWorkerLivenessProbe :one
SELECT pg_try_advisory_xact_lock(1650524164, hashtext(format('%s', @session_id::bigint)))::boolean AS locked;
