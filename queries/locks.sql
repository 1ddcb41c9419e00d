-- Advisory locks and NOTIFYs: the coordination baton does without writing rows.
-- Lock classes (first key of the two-key form) are spelled only here:
--   1650524161 = 0x62610001 worker failover (per session)
--   1650524162 = 0x62610002 master failover (per master session)
--   1650524163 = 0x62610003 dispatch (per worker group)
-- Channel names are spelled only here and in internal/notify (which LISTENs).

-- name: LockTryWorkerFailover :one
SELECT pg_try_advisory_xact_lock(1650524161, hashtext(format('%s', @session_id::bigint)))::boolean AS locked;

-- name: LockTryMasterFailover :one
SELECT pg_try_advisory_xact_lock(1650524162, hashtext(format('%s', @master_id::bigint)))::boolean AS locked;

-- Waits for the group's dispatch lock (bounded by the session's lock_timeout).
-- name: LockDispatchGroup :exec
SELECT pg_advisory_xact_lock(1650524163, hashtext(@group_name::text));

-- name: LockTryDispatchGroup :one
SELECT pg_try_advisory_xact_lock(1650524163, hashtext(@group_name::text))::boolean AS locked;

-- Wakes masters' liveness sweep (a session stopped and may have left tasks).
-- name: NotifySweep :exec
SELECT pg_notify('baton_sweep', @payload::text);

-- Wakes masters' dispatchers (tasks are waiting or slots were freed).
-- name: NotifyDispatch :exec
SELECT pg_notify('baton_dispatch', '');

-- Wakes the workers named in the payload (comma-separated session ids, "*" = all).
-- name: NotifyClaim :exec
SELECT pg_notify('baton_claim', @payload::text);

-- Bounds every lock wait of the current transaction (SET LOCAL), so one candidate a
-- hung session holds cannot stall a sweep: the wait fails with 55P03 instead.
-- name: LockTimeoutLocal :exec
SELECT set_config('lock_timeout', format('%sms', @timeout_ms::bigint), true);
