-- +goose Up
-- Schema v12 (operator surface): pausing a group's claims, API tokens and the
-- audit log of every mutating API call.

ALTER TABLE worker_groups ADD COLUMN paused boolean NOT NULL DEFAULT false;
COMMENT ON COLUMN worker_groups.paused IS 'Paused by an operator: its workers claim no queued task (running ones finish; submits are accepted and wait).';

CREATE TABLE api_tokens (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name         text NOT NULL,
    scope        text NOT NULL,
    token_sha256 bytea NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz,
    CONSTRAINT api_tokens_scope CHECK (scope IN ('read', 'operate')),
    CONSTRAINT api_tokens_name CHECK (length(name) BETWEEN 1 AND 200),
    CONSTRAINT api_tokens_hash CHECK (octet_length(token_sha256) = 32)
);
COMMENT ON TABLE api_tokens IS 'Bearer tokens of the HTTP API. Only the SHA-256 of a token is stored; the token is shown once, at creation.';
COMMENT ON COLUMN api_tokens.scope IS 'read: GET endpoints; operate: also every mutating endpoint.';
COMMENT ON COLUMN api_tokens.revoked_at IS 'Set by baton token revoke; a revoked token is refused.';

CREATE TABLE audit_log (
    id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at       timestamptz NOT NULL DEFAULT now(),
    token_id bigint REFERENCES api_tokens (id),
    actor    text NOT NULL,
    action   text NOT NULL,
    target   text NOT NULL DEFAULT '',
    detail   jsonb NOT NULL DEFAULT '{}'
);
COMMENT ON TABLE audit_log IS 'One row per mutating HTTP API call (and CLI token commands), written in the same transaction as the change.';
COMMENT ON COLUMN audit_log.actor IS 'Who: "token:<name>" for the API, "cli" for the command line.';
COMMENT ON COLUMN audit_log.action IS 'What, e.g. task.cancel, group.pause, worker.drain.';
COMMENT ON COLUMN audit_log.detail IS 'The request (ids, filter) and what it changed (count).';
CREATE INDEX audit_log_at ON audit_log (at);

-- +goose Down
DROP TABLE audit_log;
DROP TABLE api_tokens;
ALTER TABLE worker_groups DROP COLUMN paused;
