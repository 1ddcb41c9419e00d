-- +goose Up
-- Pages of tasks by group, and by a rare end state, newest first (the API's and
-- the status page's lists): without them a filter matching few of a million
-- tasks read them all. Failed, timed-out and canceled tasks are the ones an
-- operator looks for; queued, scheduled and running ones have indexes already,
-- and succeeded ones are most of the table (the primary key serves them).
CREATE INDEX tasks_group_id ON tasks (group_name, id);
CREATE INDEX tasks_unhappy_id ON tasks (state, id) WHERE state IN ('failed', 'timed_out', 'canceled');

-- +goose Down
DROP INDEX tasks_unhappy_id;
DROP INDEX tasks_group_id;
