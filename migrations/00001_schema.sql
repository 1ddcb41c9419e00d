-- +goose Up
-- Schema v1 of baton: every fact of the scheduler is a row here.

CREATE TABLE worker_groups (
    name        text PRIMARY KEY,
    description text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT worker_groups_name_format CHECK (name ~ '^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$')
);
COMMENT ON TABLE worker_groups IS 'Named pools of workers. A task targets one group and only ever runs on a worker of that group.';
COMMENT ON COLUMN worker_groups.name IS 'Group name, e.g. "default"; letters, digits, _ . - (max 63).';

CREATE TABLE worker_sessions (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name              text NOT NULL,
    group_name        text NOT NULL REFERENCES worker_groups (name),
    slots             integer NOT NULL,
    host              text NOT NULL DEFAULT '',
    pid               integer NOT NULL DEFAULT 0,
    version           text NOT NULL DEFAULT '',
    state             text NOT NULL DEFAULT 'alive',
    started_at        timestamptz NOT NULL DEFAULT now(),
    last_heartbeat_at timestamptz NOT NULL DEFAULT now(),
    ended_at          timestamptz,
    CONSTRAINT worker_sessions_state CHECK (state IN ('alive', 'draining', 'dead', 'stopped')),
    CONSTRAINT worker_sessions_slots CHECK (slots BETWEEN 1 AND 10000),
    CONSTRAINT worker_sessions_ended CHECK ((state IN ('dead', 'stopped')) = (ended_at IS NOT NULL))
) WITH (fillfactor = 50); -- room on the page keeps heartbeat updates HOT
COMMENT ON TABLE worker_sessions IS 'One row per worker process incarnation; a restart is a new row. Heartbeat = one UPDATE of last_heartbeat_at.';
COMMENT ON COLUMN worker_sessions.id IS 'Session id: part of the fencing token (task, attempt, session) of every worker write.';
COMMENT ON COLUMN worker_sessions.name IS 'Operator-facing worker name (default host-pid); not unique across incarnations.';
COMMENT ON COLUMN worker_sessions.group_name IS 'The worker group this session serves.';
COMMENT ON COLUMN worker_sessions.slots IS 'How many tasks this session runs at once.';
COMMENT ON COLUMN worker_sessions.state IS 'alive: claims work; draining: finishing, claims nothing; dead: declared dead by a master (failover ran); stopped: exited cleanly.';
COMMENT ON COLUMN worker_sessions.last_heartbeat_at IS 'Postgres now() at the last heartbeat. Liveness is judged against Postgres time only.';
COMMENT ON COLUMN worker_sessions.ended_at IS 'When the session was declared dead or stopped.';
-- Not indexed on last_heartbeat_at on purpose: heartbeats stay HOT updates.
CREATE INDEX worker_sessions_live_by_group ON worker_sessions (group_name) WHERE state IN ('alive', 'draining');

CREATE TABLE master_sessions (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name              text NOT NULL,
    host              text NOT NULL DEFAULT '',
    pid               integer NOT NULL DEFAULT 0,
    version           text NOT NULL DEFAULT '',
    state             text NOT NULL DEFAULT 'alive',
    started_at        timestamptz NOT NULL DEFAULT now(),
    last_heartbeat_at timestamptz NOT NULL DEFAULT now(),
    ended_at          timestamptz,
    CONSTRAINT master_sessions_state CHECK (state IN ('alive', 'dead', 'stopped')),
    CONSTRAINT master_sessions_ended CHECK ((state IN ('dead', 'stopped')) = (ended_at IS NOT NULL))
) WITH (fillfactor = 50);
COMMENT ON TABLE master_sessions IS 'One row per master process incarnation. All masters are active; the rows exist for liveness, audit and (later) ownership of workflow runs.';
COMMENT ON COLUMN master_sessions.state IS 'alive, dead (declared by another master) or stopped (exited cleanly).';
COMMENT ON COLUMN master_sessions.last_heartbeat_at IS 'Postgres now() at the last heartbeat.';
CREATE INDEX master_sessions_live ON master_sessions (id) WHERE state = 'alive';

CREATE TABLE tasks (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    group_name        text NOT NULL REFERENCES worker_groups (name),
    kind              text NOT NULL,
    payload           jsonb NOT NULL DEFAULT '{}',
    priority          integer NOT NULL DEFAULT 0,
    state             text NOT NULL DEFAULT 'queued',
    attempt           integer NOT NULL DEFAULT 0,
    worker_session_id bigint REFERENCES worker_sessions (id),
    max_retries       integer NOT NULL DEFAULT 0,
    retries           integer NOT NULL DEFAULT 0,
    timeout_ms        bigint NOT NULL DEFAULT 0,
    failover_count    integer NOT NULL DEFAULT 0,
    workflow_run_id   bigint,
    submitted_at      timestamptz NOT NULL DEFAULT now(),
    dispatched_at     timestamptz,
    started_at        timestamptz,
    finished_at       timestamptz,
    exit_code         integer,
    output            text NOT NULL DEFAULT '',
    last_error        text NOT NULL DEFAULT '',
    CONSTRAINT tasks_state CHECK (state IN ('queued', 'dispatched', 'running', 'succeeded', 'failed', 'timed_out', 'canceled')),
    CONSTRAINT tasks_kind CHECK (kind ~ '^[a-zA-Z0-9][a-zA-Z0-9_.:/-]{0,127}$'),
    CONSTRAINT tasks_payload_size CHECK (octet_length(payload::text) <= 1048576),
    CONSTRAINT tasks_priority CHECK (priority BETWEEN -1000 AND 1000),
    CONSTRAINT tasks_attempt CHECK (attempt >= 0),
    CONSTRAINT tasks_retries CHECK (max_retries BETWEEN 0 AND 100 AND retries BETWEEN 0 AND max_retries),
    CONSTRAINT tasks_timeout CHECK (timeout_ms >= 0),
    CONSTRAINT tasks_owner CHECK ((state IN ('dispatched', 'running')) = (worker_session_id IS NOT NULL)),
    CONSTRAINT tasks_finished CHECK ((state IN ('succeeded', 'failed', 'timed_out', 'canceled')) = (finished_at IS NOT NULL))
);
COMMENT ON TABLE tasks IS 'One unit of work and its current state. History per attempt is in task_attempts.';
COMMENT ON COLUMN tasks.kind IS '"shell" for a shell command, otherwise the name of a Go handler registered by the workers of the group.';
COMMENT ON COLUMN tasks.payload IS 'Task input (jsonb, at most 1 MiB). For shell: {"command": ..., "env": {...}, "dir": ...}.';
COMMENT ON COLUMN tasks.priority IS 'Higher runs first (-1000..1000).';
COMMENT ON COLUMN tasks.state IS 'queued -> dispatched -> running -> succeeded | failed | timed_out | canceled; a retry or failover returns it to queued or dispatched.';
COMMENT ON COLUMN tasks.attempt IS 'Fencing epoch, bumped on every dispatch. A worker write must carry (id, attempt, worker_session_id) or it changes nothing.';
COMMENT ON COLUMN tasks.worker_session_id IS 'The session the current attempt is dispatched to / running on; NULL unless dispatched or running.';
COMMENT ON COLUMN tasks.max_retries IS 'How many times a failed or timed-out task is retried (failovers do not count).';
COMMENT ON COLUMN tasks.retries IS 'Retries used so far.';
COMMENT ON COLUMN tasks.timeout_ms IS 'Run time limit of one attempt in milliseconds; 0 = none.';
COMMENT ON COLUMN tasks.failover_count IS 'How many times the task was moved off a dead or stopped worker.';
COMMENT ON COLUMN tasks.workflow_run_id IS 'Reserved: the workflow run the task belongs to.';
COMMENT ON COLUMN tasks.exit_code IS 'Exit code of the last finished attempt of a shell task.';
COMMENT ON COLUMN tasks.output IS 'Captured stdout+stderr (bounded) or a handler result of the last finished attempt.';
COMMENT ON COLUMN tasks.last_error IS 'Error text of the last failed, timed-out or failed-over attempt.';
-- Failover selection and slot accounting: active tasks by session.
CREATE INDEX tasks_active_by_session ON tasks (worker_session_id, state) WHERE state IN ('dispatched', 'running');
-- Timeout sweep.
CREATE INDEX tasks_running_started ON tasks (started_at) WHERE state = 'running' AND timeout_ms > 0;

CREATE TABLE task_attempts (
    task_id           bigint NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    attempt           integer NOT NULL,
    worker_session_id bigint NOT NULL REFERENCES worker_sessions (id),
    reason            text NOT NULL,
    dispatched_at     timestamptz NOT NULL DEFAULT now(),
    started_at        timestamptz,
    finished_at       timestamptz,
    outcome           text,
    exit_code         integer,
    error             text NOT NULL DEFAULT '',
    PRIMARY KEY (task_id, attempt),
    CONSTRAINT task_attempts_attempt CHECK (attempt >= 1),
    CONSTRAINT task_attempts_reason CHECK (reason IN ('submit', 'retry', 'failover')),
    CONSTRAINT task_attempts_outcome CHECK (outcome IN ('succeeded', 'failed', 'timed_out', 'failed_over', 'fenced', 'canceled')),
    CONSTRAINT task_attempts_finished CHECK ((outcome IS NULL) = (finished_at IS NULL))
) WITH (fillfactor = 70); -- start and finish touch no indexed column: keep them HOT
COMMENT ON TABLE task_attempts IS 'History: one row per dispatch of a task. Dashboards read this.';
COMMENT ON COLUMN task_attempts.reason IS 'Why this attempt exists: submit (first dispatch), retry (after a failure or timeout) or failover (previous worker died or stopped).';
COMMENT ON COLUMN task_attempts.outcome IS 'NULL while in flight; succeeded, failed, timed_out, canceled; failed_over when its worker died; fenced when the superseded worker later tried to write a result and was refused.';
COMMENT ON COLUMN task_attempts.error IS 'Error text; for fenced attempts, the result that was refused.';
CREATE INDEX task_attempts_session ON task_attempts (worker_session_id);

CREATE TABLE dispatch_queue (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_id           bigint NOT NULL UNIQUE REFERENCES tasks (id) ON DELETE CASCADE,
    attempt           integer NOT NULL,
    group_name        text NOT NULL REFERENCES worker_groups (name),
    target_session_id bigint REFERENCES worker_sessions (id),
    priority          integer NOT NULL DEFAULT 0,
    available_at      timestamptz NOT NULL DEFAULT now(),
    reason            text NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT dispatch_queue_reason CHECK (reason IN ('submit', 'retry', 'failover')),
    CONSTRAINT dispatch_queue_attempt CHECK (attempt >= 0)
) WITH (autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 1000);
COMMENT ON TABLE dispatch_queue IS 'Hand-off between masters and workers. A row waits (target NULL) until a master picks a worker, and is deleted when that worker claims it, so the table stays small.';
COMMENT ON COLUMN dispatch_queue.attempt IS 'The task attempt this row delivers; a claim must match tasks.attempt.';
COMMENT ON COLUMN dispatch_queue.target_session_id IS 'NULL while waiting for a healthy worker; else the worker session that must claim it.';
COMMENT ON COLUMN dispatch_queue.available_at IS 'Not dispatched before this time (retry backoff).';
COMMENT ON COLUMN dispatch_queue.reason IS 'submit, retry or failover.';
CREATE INDEX dispatch_queue_claim ON dispatch_queue (target_session_id, priority DESC, id) WHERE target_session_id IS NOT NULL;
CREATE INDEX dispatch_queue_waiting ON dispatch_queue (group_name, priority DESC, available_at, id) WHERE target_session_id IS NULL;

CREATE TABLE failover_events (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind             text NOT NULL,
    session_id       bigint NOT NULL,
    group_name       text,
    detected_by      bigint REFERENCES master_sessions (id),
    deadline         timestamptz NOT NULL,
    started_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    tasks_reassigned integer NOT NULL DEFAULT 0,
    tasks_queued     integer NOT NULL DEFAULT 0,
    passes           integer NOT NULL DEFAULT 0,
    CONSTRAINT failover_events_kind CHECK (kind IN ('worker', 'master')),
    CONSTRAINT failover_events_once UNIQUE (kind, session_id),
    CONSTRAINT failover_events_counts CHECK (tasks_reassigned >= 0 AND tasks_queued >= 0)
);
COMMENT ON TABLE failover_events IS 'Failover marker and audit trail: one row per dead (or stopped) session, ever.';
COMMENT ON COLUMN failover_events.kind IS 'worker or master.';
COMMENT ON COLUMN failover_events.session_id IS 'The dead session (worker_sessions.id or master_sessions.id by kind).';
COMMENT ON COLUMN failover_events.detected_by IS 'The master session that ran the failover.';
COMMENT ON COLUMN failover_events.deadline IS 'Postgres time the session was declared dead; tasks dispatched after it are not touched.';
COMMENT ON COLUMN failover_events.finished_at IS 'Set when no task of the session is left to move.';
COMMENT ON COLUMN failover_events.tasks_reassigned IS 'Tasks moved straight to a healthy worker of the same group.';
COMMENT ON COLUMN failover_events.tasks_queued IS 'Tasks put back in the queue (no healthy worker with a free slot at that moment).';
COMMENT ON COLUMN failover_events.passes IS 'Transactions it took (rows locked by a concurrent completion are left to the next pass).';

-- Reporting views: stable names for SQL dashboards (docs/reporting.md).
CREATE VIEW report_tasks_by_state AS
SELECT group_name, state, count(*) AS tasks
FROM tasks
GROUP BY group_name, state;
COMMENT ON VIEW report_tasks_by_state IS 'Task count per group and state.';

CREATE VIEW report_attempt_durations AS
SELECT a.task_id, a.attempt, t.group_name, t.kind, a.worker_session_id, a.reason, a.outcome,
       a.dispatched_at, a.started_at, a.finished_at,
       a.started_at - a.dispatched_at AS wait_time,
       a.finished_at - a.started_at AS run_time
FROM task_attempts a
JOIN tasks t ON t.id = a.task_id;
COMMENT ON VIEW report_attempt_durations IS 'Per attempt: time from dispatch to start (wait_time) and from start to finish (run_time).';

CREATE VIEW report_worker_health AS
SELECT s.id AS session_id, s.name, s.group_name, s.state, s.slots, s.host, s.pid,
       s.started_at, s.last_heartbeat_at,
       now() - s.last_heartbeat_at AS heartbeat_age,
       (SELECT count(*) FROM tasks t WHERE t.worker_session_id = s.id AND t.state IN ('dispatched', 'running')) AS active_tasks
FROM worker_sessions s
WHERE s.state IN ('alive', 'draining') OR s.ended_at > now() - interval '1 day';
COMMENT ON VIEW report_worker_health IS 'Live sessions and those ended in the last day, with heartbeat age (Postgres time) and active task count.';

CREATE VIEW report_failover_history AS
SELECT f.id, f.kind, f.session_id, f.group_name, f.detected_by, f.deadline, f.started_at, f.finished_at,
       f.finished_at - f.deadline AS duration, f.tasks_reassigned, f.tasks_queued, f.passes
FROM failover_events f;
COMMENT ON VIEW report_failover_history IS 'Every failover with how long it took and how many tasks it moved.';

-- +goose Down
DROP VIEW report_failover_history;
DROP VIEW report_worker_health;
DROP VIEW report_attempt_durations;
DROP VIEW report_tasks_by_state;
DROP TABLE failover_events;
DROP TABLE dispatch_queue;
DROP TABLE task_attempts;
DROP TABLE tasks;
DROP TABLE master_sessions;
DROP TABLE worker_sessions;
DROP TABLE worker_groups;
