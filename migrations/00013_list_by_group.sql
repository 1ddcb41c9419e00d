-- +goose Up
-- Pages of one group's tasks, newest first (the API's, the CLI's and the status
-- page's lists with a group): without it a group filter read the primary key
-- backwards until it had a page, the whole table for a group with few tasks
-- among many (91 ms at 1 M tasks for a group of 10). The list by group
-- (TaskListPageByGroup) reads one range per state and merges them: queued tasks
-- from tasks_queue, dispatched and running ones from tasks_active_by_session,
-- and every other state from this index.
--
-- Only the row version that enters scheduled or an end state is written here, so
-- a task adds one entry in its life (at its finish, or at a run_at submit): 6%
-- more WAL per task, and the burn-down against River unchanged within its noise.
-- A state change is never a HOT update, and an index of every version,
-- (group_name, id), cost a new entry at submit, claim and finish: 18% more WAL
-- and 15-20% of the burn-down throughput (docs/benchmarks.md).
--
-- Keyed by id + 0, not id: keyed by id, the planner compared it with reading the
-- primary key backwards, took that whenever it guessed the group's rows dense,
-- and read most of the table when they were not (a group whose tasks are old, or
-- a deep page); id + 0 is an order only this index gives, and its entries still
-- arrive in ascending order (-id, the other such order, filled its pages half:
-- 7.2 MB per 100,000 tasks against 4.0 MB). IF NOT EXISTS: on a large table an operator may build it first without
-- blocking writes, CREATE INDEX CONCURRENTLY with the same definition.
CREATE INDEX IF NOT EXISTS tasks_group_state ON tasks (group_name, state, (id + 0))
    WHERE state IN ('scheduled', 'succeeded', 'failed', 'timed_out', 'canceled');

-- +goose Down
DROP INDEX tasks_group_state;
