-- name: TaskAttemptList :many
SELECT * FROM task_attempts WHERE task_id = @task_id ORDER BY attempt;
