-- +goose Up
-- Schema v11: schedules, their fire ledger and backfills (docs/schedules.md).
-- Any master may fire a due schedule: the ledger row keyed (schedule,
-- nominal_time), the run it starts and the advance of next_fire_at commit in one
-- transaction, so a fire time is recorded once and runs at most once however
-- many masters race, crash or restart. Backfills and the scheduler share the key.

CREATE TABLE schedules (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name              text NOT NULL UNIQUE,
    workflow_id       bigint NOT NULL REFERENCES workflows (id),
    params            jsonb NOT NULL DEFAULT '{}',
    cron              text,
    interval_ms       bigint,
    zone              text NOT NULL DEFAULT 'UTC',
    start_at          timestamptz,
    end_at            timestamptz,
    anchor_at         timestamptz NOT NULL DEFAULT now(),
    jitter_ms         bigint NOT NULL DEFAULT 0,
    overlap           text NOT NULL DEFAULT 'skip',
    buffer_max        integer NOT NULL DEFAULT 100,
    max_active_runs   integer NOT NULL DEFAULT 0,
    catchup           text NOT NULL DEFAULT 'latest',
    catchup_window_ms bigint NOT NULL DEFAULT 86400000,
    catchup_max       integer NOT NULL DEFAULT 10,
    pause_on_failure  boolean NOT NULL DEFAULT false,
    dst_gap           text NOT NULL DEFAULT 'shift',
    dst_fold          text NOT NULL DEFAULT 'first',
    paused            boolean NOT NULL DEFAULT false,
    paused_reason     text NOT NULL DEFAULT '',
    next_nominal_at   timestamptz,
    next_fire_at      timestamptz,
    buffered          integer NOT NULL DEFAULT 0,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT schedules_name_format CHECK (name ~ '^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$'),
    CONSTRAINT schedules_calendar CHECK ((cron IS NULL) <> (interval_ms IS NULL)),
    CONSTRAINT schedules_interval CHECK (interval_ms IS NULL OR interval_ms >= 1000),
    CONSTRAINT schedules_jitter CHECK (jitter_ms >= 0),
    CONSTRAINT schedules_overlap CHECK (overlap IN ('skip', 'buffer_one', 'buffer_all', 'cancel_other', 'allow')),
    CONSTRAINT schedules_buffer_max CHECK (buffer_max BETWEEN 1 AND 10000),
    CONSTRAINT schedules_max_active CHECK (max_active_runs >= 0),
    CONSTRAINT schedules_catchup CHECK (catchup IN ('none', 'latest', 'all')),
    CONSTRAINT schedules_catchup_window CHECK (catchup_window_ms >= 0),
    CONSTRAINT schedules_catchup_max CHECK (catchup_max >= 1),
    CONSTRAINT schedules_dst_gap CHECK (dst_gap IN ('shift', 'skip')),
    CONSTRAINT schedules_dst_fold CHECK (dst_fold IN ('first', 'both')),
    CONSTRAINT schedules_bounds CHECK (start_at IS NULL OR end_at IS NULL OR start_at <= end_at),
    CONSTRAINT schedules_next CHECK ((next_nominal_at IS NULL) = (next_fire_at IS NULL) AND (next_fire_at IS NULL OR next_fire_at >= next_nominal_at)),
    CONSTRAINT schedules_buffered CHECK (buffered >= 0)
);
COMMENT ON TABLE schedules IS 'A workflow started on a calendar (cron in a zone, or an interval). Fires are recorded in schedule_fires.';
COMMENT ON COLUMN schedules.anchor_at IS 'Interval schedules fire at anchor_at + k * interval (real elapsed time).';
COMMENT ON COLUMN schedules.jitter_ms IS 'Each fire is delayed by a deterministic amount in [0, jitter) of its schedule and nominal time.';
COMMENT ON COLUMN schedules.max_active_runs IS '0: no cap beyond the overlap policy.';
COMMENT ON COLUMN schedules.next_nominal_at IS 'The next nominal fire time not yet in the ledger; NULL: none left (past end_at).';
COMMENT ON COLUMN schedules.next_fire_at IS 'next_nominal_at plus its jitter: when it is due (index schedules_due).';
COMMENT ON COLUMN schedules.buffered IS 'How many of its fires are buffered (outcome buffered), waiting for a run to end.';
CREATE INDEX schedules_due ON schedules (next_fire_at) WHERE next_fire_at IS NOT NULL;
CREATE INDEX schedules_with_buffered ON schedules (id) WHERE buffered > 0;
CREATE INDEX schedules_workflow ON schedules (workflow_id);

CREATE TABLE backfills (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    workflow_id  bigint NOT NULL REFERENCES workflows (id),
    schedule_id  bigint REFERENCES schedules (id) ON DELETE CASCADE,
    params       jsonb NOT NULL DEFAULT '{}',
    cron         text,
    interval_ms  bigint,
    zone         text NOT NULL DEFAULT 'UTC',
    anchor_at    timestamptz NOT NULL,
    dst_gap      text NOT NULL DEFAULT 'shift',
    dst_fold     text NOT NULL DEFAULT 'first',
    from_at      timestamptz NOT NULL,
    to_at        timestamptz NOT NULL,
    parallel     integer NOT NULL DEFAULT 1,
    descending   boolean NOT NULL DEFAULT false,
    reprocess    text NOT NULL DEFAULT 'none',
    state        text NOT NULL DEFAULT 'running',
    cursor_at    timestamptz,
    exhausted    boolean NOT NULL DEFAULT false,
    total        integer NOT NULL,
    started      integer NOT NULL DEFAULT 0,
    skipped      integer NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    CONSTRAINT backfills_calendar CHECK ((cron IS NULL) <> (interval_ms IS NULL)),
    CONSTRAINT backfills_range CHECK (from_at <= to_at),
    CONSTRAINT backfills_parallel CHECK (parallel BETWEEN 1 AND 1000),
    CONSTRAINT backfills_reprocess CHECK (reprocess IN ('none', 'failed', 'all')),
    CONSTRAINT backfills_state CHECK (state IN ('running', 'paused', 'canceled', 'succeeded')),
    CONSTRAINT backfills_finished CHECK ((state IN ('canceled', 'succeeded')) = (finished_at IS NOT NULL))
);
COMMENT ON TABLE backfills IS 'Runs of a workflow for the logical times of a calendar in [from_at, to_at], admitted lazily, at most parallel at once.';
COMMENT ON COLUMN backfills.cursor_at IS 'The last logical time materialized (in the backfill''s order); NULL: none yet.';
COMMENT ON COLUMN backfills.exhausted IS 'Every logical time was materialized; the backfill succeeds when its last run ends.';
CREATE INDEX backfills_active ON backfills (id) WHERE state = 'running';

CREATE TABLE schedule_fires (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    schedule_id      bigint REFERENCES schedules (id) ON DELETE CASCADE,
    workflow_id      bigint NOT NULL REFERENCES workflows (id),
    nominal_time     timestamptz NOT NULL,
    source           text NOT NULL DEFAULT 'schedule',
    backfill_id      bigint REFERENCES backfills (id) ON DELETE SET NULL,
    outcome          text NOT NULL,
    reason           text,
    kind             text NOT NULL DEFAULT '',
    run_id           bigint,
    run_state        text,
    run_active       boolean NOT NULL DEFAULT false,
    failure_seen     boolean NOT NULL DEFAULT false,
    recorded_at      timestamptz NOT NULL,
    started_at       timestamptz,
    lag_ms           bigint,
    previous_run_ids bigint[] NOT NULL DEFAULT '{}',
    CONSTRAINT schedule_fires_key UNIQUE (schedule_id, nominal_time),
    CONSTRAINT schedule_fires_source CHECK (source IN ('schedule', 'backfill', 'manual')),
    CONSTRAINT schedule_fires_outcome CHECK (outcome IN ('started', 'skipped', 'buffered')),
    CONSTRAINT schedule_fires_reason CHECK ((outcome = 'skipped') = (reason IS NOT NULL)),
    CONSTRAINT schedule_fires_run CHECK ((outcome = 'started') = (run_id IS NOT NULL))
);
COMMENT ON TABLE schedule_fires IS 'The fire ledger: one row per due nominal time of a schedule (or logical time of a backfill without schedule), started or skipped with a reason.';
COMMENT ON COLUMN schedule_fires.reason IS 'Why it was skipped: overlap, buffer_full, max_active_runs, paused, outside_catchup_window, catchup_none, catchup_superseded, catchup_bound, dst_gap, exists (backfill: already in the ledger), running (backfill: its run is still active).';
COMMENT ON COLUMN schedule_fires.kind IS 'Daylight-saving kind of the nominal time: dst_gap_shifted, dst_gap, dst_fold_first, dst_fold_second, or empty.';
COMMENT ON COLUMN schedule_fires.run_id IS 'The run it started (the latest one, after a backfill reprocessed it). No foreign key: retention prunes runs.';
COMMENT ON COLUMN schedule_fires.run_state IS 'The run''s state, kept by trigger workflow_runs_fire_state.';
COMMENT ON COLUMN schedule_fires.run_active IS 'The run is running or paused (counts toward overlap, max_active_runs and a backfill''s parallel).';
COMMENT ON COLUMN schedule_fires.failure_seen IS 'pause_on_failure has acted on this failed run.';
COMMENT ON COLUMN schedule_fires.lag_ms IS 'started_at - nominal_time: how late the run started.';
CREATE UNIQUE INDEX schedule_fires_unscheduled_key ON schedule_fires (workflow_id, nominal_time) WHERE schedule_id IS NULL;
CREATE INDEX schedule_fires_run ON schedule_fires (run_id) WHERE run_id IS NOT NULL;
CREATE INDEX schedule_fires_active ON schedule_fires (schedule_id) WHERE run_active;
CREATE INDEX schedule_fires_backfill_active ON schedule_fires (backfill_id) WHERE run_active;
CREATE INDEX schedule_fires_backfill ON schedule_fires (backfill_id, nominal_time) WHERE backfill_id IS NOT NULL;
CREATE INDEX schedule_fires_buffered ON schedule_fires (schedule_id, nominal_time) WHERE outcome = 'buffered';
CREATE INDEX schedule_fires_failed ON schedule_fires (schedule_id) WHERE run_state = 'failed' AND NOT failure_seen;

-- The ledger mirrors the state of the runs it started, in the transaction that
-- changes it, so counting active runs is an index probe.
-- +goose StatementBegin
CREATE FUNCTION workflow_runs_fire_state() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE schedule_fires SET run_state = NEW.state, run_active = NEW.state IN ('running', 'paused')
     WHERE run_id = NEW.id;
    RETURN NULL;
END
$$;
-- +goose StatementEnd
CREATE TRIGGER workflow_runs_fire_state AFTER UPDATE OF state ON workflow_runs
    FOR EACH ROW WHEN (NEW.state IS DISTINCT FROM OLD.state)
    EXECUTE FUNCTION workflow_runs_fire_state();

-- +goose Down
DROP TRIGGER workflow_runs_fire_state ON workflow_runs;
DROP FUNCTION workflow_runs_fire_state();
DROP TABLE schedule_fires;
DROP TABLE backfills;
DROP TABLE schedules;
