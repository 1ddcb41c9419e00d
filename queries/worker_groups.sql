-- name: GroupEnsure :exec
INSERT INTO worker_groups (name) VALUES (@name) ON CONFLICT (name) DO NOTHING;

-- name: GroupExists :one
SELECT EXISTS (SELECT 1 FROM worker_groups WHERE name = @name);
