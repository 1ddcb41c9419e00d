-- +goose Up
-- How a worker session was declared dead, kept on its failover marker: true by
-- crash detection (its liveness lock free, its heartbeat older than
-- --crash-detect-after), false by the heartbeat timeout. NULL for a master's
-- failover, for a session that had stopped (nobody declared it dead) and for
-- markers written before this migration. Until now only the master's log said
-- it. A nullable column without a default: no table rewrite.
ALTER TABLE failover_events ADD COLUMN crash_detected boolean;
COMMENT ON COLUMN failover_events.crash_detected IS 'Worker failovers: true if the session was declared dead by crash detection (liveness lock free), false by the heartbeat timeout; NULL for master failovers, stopped sessions and markers from before schema version 14.';

-- +goose Down
ALTER TABLE failover_events DROP COLUMN crash_detected;
