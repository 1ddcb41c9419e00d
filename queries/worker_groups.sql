-- name: GroupEnsure :exec
INSERT INTO worker_groups (name) VALUES (@name) ON CONFLICT (name) DO NOTHING;

-- name: GroupExists :one
SELECT EXISTS (SELECT 1 FROM worker_groups WHERE name = @name);

-- Client.CreateGroup: 1 when created, 0 when it existed.
-- name: GroupCreate :execrows
INSERT INTO worker_groups (name, description) VALUES (@name, @description) ON CONFLICT (name) DO NOTHING;

-- Client.Groups: live workers (Postgres time) and waiting tasks per group.
-- name: GroupHealth :many
SELECT g.name, g.description, g.created_at,
       (SELECT count(*) FROM worker_sessions s
        WHERE s.group_name = g.name AND s.state IN ('alive', 'draining')
          AND s.last_heartbeat_at > coalesce(sqlc.narg('now')::timestamptz, now()) - sqlc.arg('worker_timeout_ms')::bigint * interval '1 millisecond'
       )::bigint AS live_workers,
       (SELECT count(*) FROM tasks t WHERE t.group_name = g.name AND t.state = 'queued')::bigint AS waiting_tasks
FROM worker_groups g
ORDER BY g.name;

-- Client.SetGroupRetryBackoff: the default backoff of tasks submitted to the group
-- from now on (tasks already submitted keep theirs).
-- name: GroupSetRetryBackoff :execrows
UPDATE worker_groups SET retry_base_ms = @retry_base_ms, retry_max_ms = @retry_max_ms WHERE name = @name;

-- Declares kinds a group runs (worker_group_kinds): added or updated, never
-- removed here.
-- name: GroupDeclareKinds :exec
INSERT INTO worker_group_kinds (group_name, kind, payload_type)
SELECT k.group_name, k.kind, nullif(k.payload_type, '')
FROM (SELECT @group_name::text AS group_name, unnest(@kinds::text[]) AS kind, unnest(@payload_types::text[]) AS payload_type) AS k
ON CONFLICT (group_name, kind) DO UPDATE
SET payload_type = excluded.payload_type, declared_at = now();

-- name: GroupKinds :many
SELECT kind, payload_type FROM worker_group_kinds WHERE group_name = @group_name ORDER BY kind;
