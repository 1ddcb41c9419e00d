-- +goose Up
-- Pages of tasks in a rare end state, newest first (the API's and the status
-- page's lists): without it a filter matching few of a million tasks read them
-- all. Failed, timed-out and canceled tasks are the ones an operator looks for,
-- and only a task entering one of those states writes to this index; queued,
-- scheduled and running tasks have indexes already, and succeeded ones are most
-- of the table (the primary key serves them). No index by group: every state
-- change writes a new entry to every index of tasks, and a (group_name, id)
-- index cost 15-20% of the burn-down throughput (docs/benchmarks.md); a group
-- filter reads the primary key backwards.
CREATE INDEX tasks_unhappy_id ON tasks (state, id) WHERE state IN ('failed', 'timed_out', 'canceled');

-- +goose Down
DROP INDEX tasks_unhappy_id;
