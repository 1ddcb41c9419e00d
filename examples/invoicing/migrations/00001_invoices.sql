-- +goose Up
CREATE TABLE invoices (
    id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer text NOT NULL,
    cents    integer NOT NULL,
    sent_at  timestamptz
);
-- The application's own "tasks" (a to-do list): same name as baton's table, on purpose.
CREATE TABLE tasks (
    id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    title text NOT NULL
);

-- +goose Down
DROP TABLE tasks;
DROP TABLE invoices;
