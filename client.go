package baton

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/migrate"
	"github.com/baton-scheduler/baton/internal/state"
	"github.com/baton-scheduler/baton/internal/store"
	"github.com/baton-scheduler/baton/internal/submit"
	"github.com/baton-scheduler/baton/internal/taskops"
)

// Client submits, inspects, waits for and cancels tasks on the application's own
// pool. It is safe for concurrent use. Every call runs in a transaction whose
// search_path is baton's schema (set with SET LOCAL semantics, so the pool's
// connections are left as they were); SubmitTx runs in the caller's transaction
// and restores its search_path before returning. Submit, SubmitMany, Get,
// Attempts and List are one round trip each (the search_path and the statement
// are pipelined as one implicit transaction); after a submit, the NOTIFY that
// wakes the group's workers follows in the background, shared by concurrent
// submits.
type Client struct {
	pool   *pgxpool.Pool
	schema string
	cfg    ClientConfig
	waits  *waitHub
	// scoped runs single statements in baton's schema in one round trip;
	// waker coalesces the NOTIFYs of concurrent submits.
	scoped *store.Scoped
	waker  *submit.Waker
}

// ClientConfig configures a Client; zero fields take defaults.
type ClientConfig struct {
	// Schema is baton's Postgres schema (default "baton").
	Schema string
	// WaitPollInterval is how often Wait re-reads a task besides being woken
	// by its notification (a fallback for a lost one). Default 1 s.
	WaitPollInterval time.Duration
	// WorkerTimeout and MasterTimeout judge liveness in Groups (Postgres time);
	// use the masters' values. Defaults MasterWorkerTimeoutDefault and
	// MasterMasterTimeoutDefault.
	WorkerTimeout time.Duration
	MasterTimeout time.Duration
	// Logger is for the client's own warnings; nil means a zap production logger.
	Logger *zap.Logger
}

// WaitPollIntervalDefault is ClientConfig.WaitPollInterval's default.
const WaitPollIntervalDefault = time.Second

// NewClient returns a client on pool (the application's pool; baton's schema
// need not be on its search_path). cfg may be nil. It does not touch the
// database: an unmigrated schema shows as ErrSchemaOutdated on the first call.
func NewClient(pool *pgxpool.Pool, cfg *ClientConfig) (*Client, error) {
	if pool == nil {
		return nil, fmt.Errorf("%w: client: pool is nil", ErrInvalidConfig)
	}
	var c ClientConfig
	if cfg != nil {
		c = *cfg
	}
	if c.Schema == "" {
		c.Schema = SchemaDefault
	}
	if err := migrate.ValidSchema(c.Schema); err != nil {
		return nil, fmt.Errorf("%w: client: %v", ErrInvalidConfig, err)
	}
	if c.WaitPollInterval <= 0 {
		c.WaitPollInterval = WaitPollIntervalDefault
	}
	if c.WorkerTimeout <= 0 {
		c.WorkerTimeout = MasterWorkerTimeoutDefault
	}
	if c.MasterTimeout <= 0 {
		c.MasterTimeout = MasterMasterTimeoutDefault
	}
	if c.Logger == nil {
		c.Logger = defaultLogger()
	}
	return &Client{pool: pool, schema: c.Schema, cfg: c, waits: &waitHub{pool: pool, log: c.Logger},
		scoped: store.NewScoped(pool, c.Schema), waker: submit.NewWaker(db.New(pool))}, nil
}

// inTx runs fn in a transaction of the pool with baton's schema as search_path;
// a deadlock or serialization failure (two writers racing) is retried.
func (c *Client) inTx(ctx context.Context, fn func(q *db.Queries) error) error {
	for try := 0; ; try++ {
		err := pgx.BeginFunc(ctx, c.pool, func(tx pgx.Tx) error {
			q := db.New(tx)
			if err := q.SchemaSetLocalSearchPath(ctx, c.schema); err != nil {
				return err
			}
			return fn(q)
		})
		if err != nil && store.Retryable(err) && try < 3 {
			continue
		}
		return ctxErr(ctx, c.describe(err))
	}
}

// single runs fn, which runs one statement, in baton's schema in one round trip
// (store.Scoped): no transaction of its own to begin and commit.
func (c *Client) single(ctx context.Context, fn func(q *db.Queries) error) error {
	return ctxErr(ctx, c.describe(fn(db.New(c.scoped))))
}

// describe turns "relation does not exist" into the error an adopter can act on.
func (c *Client) describe(err error) error {
	if err != nil && store.Code(err) == store.CodeUndefinedTable {
		return fmt.Errorf("%w: schema %q has no baton tables (call baton.Migrate or run `baton migrate up`): %v",
			ErrSchemaOutdated, c.schema, err)
	}
	return err
}

// Submit validates and stores one task; it returns its id. The task is queued
// at once (or scheduled: TaskSpec.RunAt); a worker of its group claims it. A
// task whose unique key (TaskSpec.Unique) is taken returns the holder's id and
// no error: use Insert to learn it was a duplicate.
func (c *Client) Submit(ctx context.Context, spec TaskSpec) (int64, error) {
	r, err := c.Insert(ctx, spec)
	return r.ID, err
}

// SubmitMany validates every spec and stores all of them in one statement (all
// or none). Ids are returned in the order of specs.
func (c *Client) SubmitMany(ctx context.Context, specs []TaskSpec) ([]int64, error) {
	return ids(c.InsertMany(ctx, specs))
}

// SubmitResult is what Insert stored: the task's id, and whether the task was
// a duplicate (its unique key was taken, and ID is the task holding it: nothing
// was inserted).
type SubmitResult struct {
	ID        int64
	Duplicate bool
}

func ids(rs []SubmitResult, err error) ([]int64, error) {
	if err != nil {
		return nil, err
	}
	out := make([]int64, len(rs))
	for i, r := range rs {
		out[i] = r.ID
	}
	return out, nil
}

// Insert is Submit that says whether the task was a duplicate of one holding
// its unique key (TaskSpec.Unique).
func (c *Client) Insert(ctx context.Context, spec TaskSpec) (SubmitResult, error) {
	rs, err := c.InsertMany(ctx, []TaskSpec{spec})
	if err != nil {
		return SubmitResult{}, err
	}
	return rs[0], nil
}

// InsertMany is SubmitMany that says which tasks were duplicates. Specs with
// unique keys are stored one statement each, in one transaction (all or none).
func (c *Client) InsertMany(ctx context.Context, specs []TaskSpec) ([]SubmitResult, error) {
	p, is, err := submitParams(specs)
	if err != nil {
		return nil, err
	}
	var rs []SubmitResult
	if slices.ContainsFunc(specs, func(s TaskSpec) bool { return s.CreateGroup }) || submit.AnyUnique(is) {
		err = c.inTx(ctx, func(q *db.Queries) error {
			rs, err = insertTasks(ctx, q, specs, is, p)
			return err
		})
	} else {
		// One statement, one round trip: an unknown group fails its foreign key.
		q := db.New(c.scoped)
		var ids []int64
		ids, err = submit.Insert(ctx, q, p)
		err = c.describe(insertError(ctx, q, p, err))
		rs = results(ids, nil)
	}
	if err != nil {
		return nil, ctxErr(ctx, err)
	}
	c.waker.Wake(submit.Groups(p)) // after the commit, in the background: see submit.Waker
	return rs, nil
}

func results(ids []int64, dup []bool) []SubmitResult {
	rs := make([]SubmitResult, len(ids))
	for i, id := range ids {
		rs[i].ID = id
		if dup != nil {
			rs[i].Duplicate = dup[i]
		}
	}
	return rs
}

// SubmitTx stores a task in the caller's transaction: it exists, and is
// dispatched, only if that transaction commits; a rollback leaves nothing. The
// transaction's search_path is switched to baton's schema for the inserts and
// restored before SubmitTx returns. On a database error the transaction is
// aborted, as with any failed statement, and must be rolled back. A unique key
// is checked in the transaction: a concurrent submit of the same key waits for
// it to commit or roll back.
func (c *Client) SubmitTx(ctx context.Context, tx pgx.Tx, spec TaskSpec) (int64, error) {
	r, err := c.InsertTx(ctx, tx, spec)
	return r.ID, err
}

// SubmitManyTx is SubmitMany in the caller's transaction (see SubmitTx).
func (c *Client) SubmitManyTx(ctx context.Context, tx pgx.Tx, specs []TaskSpec) ([]int64, error) {
	return ids(c.InsertManyTx(ctx, tx, specs))
}

// InsertTx is SubmitTx that says whether the task was a duplicate.
func (c *Client) InsertTx(ctx context.Context, tx pgx.Tx, spec TaskSpec) (SubmitResult, error) {
	rs, err := c.InsertManyTx(ctx, tx, []TaskSpec{spec})
	if err != nil {
		return SubmitResult{}, err
	}
	return rs[0], nil
}

// InsertManyTx is SubmitManyTx that says which tasks were duplicates.
func (c *Client) InsertManyTx(ctx context.Context, tx pgx.Tx, specs []TaskSpec) ([]SubmitResult, error) {
	if tx == nil {
		return nil, fmt.Errorf("%w: submit: transaction is nil", ErrInvalidTask)
	}
	p, is, err := submitParams(specs)
	if err != nil {
		return nil, err
	}
	q := db.New(tx)
	prev, err := q.SchemaSearchPath(ctx)
	if err != nil {
		return nil, ctxErr(ctx, fmt.Errorf("submit: read search_path: %w", err))
	}
	if err := q.SchemaSetLocalSearchPath(ctx, c.schema); err != nil {
		return nil, ctxErr(ctx, fmt.Errorf("submit: set search_path: %w", err))
	}
	rs, err := insertTasks(ctx, q, specs, is, p)
	if err != nil {
		// Restore if the transaction is still usable (an unknown group is not a
		// database error); after a failed statement it is aborted anyway.
		_ = q.SchemaSetLocalSearchPath(ctx, prev)
		return nil, ctxErr(ctx, c.describe(err))
	}
	if err := q.SchemaSetLocalSearchPath(ctx, prev); err != nil {
		return nil, ctxErr(ctx, fmt.Errorf("submit: restore search_path: %w", err))
	}
	// In the caller's transaction: delivered when (and only if) it commits.
	if err := q.NotifyQueued(ctx, submit.Groups(p)); err != nil {
		return nil, ctxErr(ctx, fmt.Errorf("submit: notify workers: %w", err))
	}
	return rs, nil
}

// ctxErr makes a failure caused by ctx's end match errors.Is(err,
// context.Canceled or DeadlineExceeded), whatever the driver wrapped it in.
func ctxErr(ctx context.Context, err error) error {
	if err == nil || ctx.Err() == nil || errors.Is(err, ctx.Err()) {
		return err
	}
	return fmt.Errorf("%w: %w", context.Cause(ctx), err)
}

func submitParams(specs []TaskSpec) (db.TaskSubmitManyParams, []submit.Spec, error) {
	is := make([]submit.Spec, len(specs))
	for i, s := range specs {
		is[i] = submit.Spec{Group: s.Group, Kind: s.Kind, Payload: s.Payload, Priority: s.Priority, MaxRetries: s.MaxRetries, Timeout: s.Timeout,
			RunAt: s.RunAt, Delay: s.Delay, Tags: s.Tags}
		if b := s.RetryBackoff; b != nil {
			is[i].Backoff = &submit.Backoff{Base: b.Base, Max: b.Max}
		}
		if u := s.Unique; u != nil {
			is[i].Unique = &submit.Unique{Key: u.Key, Scope: string(u.Scope), Period: u.Period}
		}
	}
	p, err := submit.Params(is)
	return p, is, err
}

// insertTasks stores the tasks in a transaction: it creates the groups of specs
// that ask for it and checks the others exist first, so an unknown group fails
// without aborting the caller's transaction (SubmitTx).
func insertTasks(ctx context.Context, q *db.Queries, specs []TaskSpec, is []submit.Spec, p db.TaskSubmitManyParams) ([]SubmitResult, error) {
	seen := map[string]bool{}
	for _, s := range specs {
		if seen[s.Group] {
			continue
		}
		seen[s.Group] = true
		if s.CreateGroup {
			if err := q.GroupEnsure(ctx, s.Group); err != nil {
				return nil, fmt.Errorf("create group %q: %w", s.Group, err)
			}
			continue
		}
		ok, err := q.GroupExists(ctx, s.Group)
		if err != nil {
			return nil, fmt.Errorf("look up group: %w", err)
		}
		if !ok {
			return nil, fmt.Errorf("%w %q: %s", ErrUnknownGroup, s.Group, unknownGroup(s.Group))
		}
	}
	if submit.AnyUnique(is) {
		ids, dup, err := submit.InsertEach(ctx, q, is, p)
		if err != nil {
			return nil, insertError(ctx, q, p, err)
		}
		return results(ids, dup), nil
	}
	ids, err := submit.Insert(ctx, q, p)
	if err != nil {
		return nil, insertError(ctx, q, p, err)
	}
	return results(ids, nil), nil
}

// unknownGroup says what to do about a missing group, from the Client.
func unknownGroup(string) string {
	return "create it (Client.CreateGroup or TaskSpec.CreateGroup) or start a worker of that group first"
}

// insertError turns a failed insert of p into the error a caller can act on.
func insertError(ctx context.Context, q *db.Queries, p db.TaskSubmitManyParams, err error) error {
	if err == nil {
		return nil
	}
	return submit.InsertError(ctx, q, p, err, unknownGroup)
}

// Get returns a task's row, or ErrNotFound.
func (c *Client) Get(ctx context.Context, id int64) (TaskInfo, error) {
	var info TaskInfo
	err := c.single(ctx, func(q *db.Queries) error {
		row, err := q.TaskGet(ctx, id)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("%w: id %d", ErrNotFound, id)
		}
		if err != nil {
			return fmt.Errorf("get task %d: %w", id, err)
		}
		info = taskInfoFromRow(row)
		return nil
	})
	return info, err
}

// Attempts returns a task's attempts, oldest first (none for a task that has
// not run yet), or ErrNotFound.
func (c *Client) Attempts(ctx context.Context, id int64) ([]Attempt, error) {
	var out []Attempt
	err := c.single(ctx, func(q *db.Queries) error {
		rows, err := q.TaskAttemptList(ctx, id)
		if err != nil {
			return fmt.Errorf("list attempts of task %d: %w", id, err)
		}
		if len(rows) == 0 { // a task that never ran, or none at all
			if _, err := q.TaskGet(ctx, id); errors.Is(err, pgx.ErrNoRows) {
				return fmt.Errorf("%w: id %d", ErrNotFound, id)
			} else if err != nil {
				return fmt.Errorf("list attempts of task %d: %w", id, err)
			}
		}
		out = make([]Attempt, 0, len(rows))
		for _, r := range rows {
			out = append(out, attemptFromRow(r))
		}
		return nil
	})
	return out, err
}

// Wait returns the task once it is in a terminal state (succeeded, failed,
// timed_out, canceled), or ctx's error. It is woken by a notification when the
// task ends (Wait marks the task watched, one small write; tasks nobody waits for
// end without one): the client LISTENs on one connection of its pool, held
// while some Wait is in progress (and a second after the last) and shared by
// all of them. It also re-reads the task
// every WaitPollInterval, so a lost notification (the listener reconnecting)
// delays it at most that long.
func (c *Client) Wait(ctx context.Context, id int64) (TaskInfo, error) {
	woken, done := c.waits.add(id)
	defer done()
	// Ask for the notification (tasks nobody waits for are finished without one).
	// Set before the first read: a task that ends after it is announced, one that
	// ended before it is seen ended by the read.
	// The flag is a hint (a Postgres crash that loses it costs one poll interval),
	// so its commit does not wait for the WAL flush: until then it holds the task
	// row, and a claim woken by the submit skips a locked row.
	if err := c.inTx(ctx, func(q *db.Queries) error {
		if err := q.TxSetAsyncCommit(ctx); err != nil {
			return err
		}
		return q.TaskWatch(ctx, id)
	}); err != nil {
		return TaskInfo{}, fmt.Errorf("wait for task %d: %w", id, err)
	}
	timer := time.NewTimer(c.cfg.WaitPollInterval)
	defer timer.Stop()
	for {
		info, err := c.Get(ctx, id)
		if err != nil {
			if ctx.Err() != nil {
				return TaskInfo{}, fmt.Errorf("wait for task %d: %w", id, context.Cause(ctx))
			}
			return TaskInfo{}, err
		}
		if info.State.Terminal() {
			return info, nil
		}
		timer.Reset(c.cfg.WaitPollInterval)
		select {
		case <-ctx.Done():
			return TaskInfo{}, fmt.Errorf("wait for task %d: %w", id, context.Cause(ctx))
		case <-woken:
		case <-timer.C:
		}
	}
}

// Cancel stops a task that has not finished:
//
//   - queued or dispatched (not yet claimed): it becomes canceled at once and
//     never runs; its dispatch row is deleted.
//   - running: it becomes canceled at once and its attempt is closed as
//     canceled; the worker running it is told (a NOTIFY, and its poll of its
//     running attempts every WorkerConfig.PollInterval as the fallback) and
//     stops the attempt as it stops a timed-out one: a Go handler's ctx is
//     canceled with ErrTaskCanceled as its cause (context.Cause; Task.CheckLease
//     reports it too), a shell task's whole process tree is killed, and the
//     slot is freed once the attempt returns, or KillGrace later if it does
//     not. A result the attempt still reports is refused by fencing (nothing
//     it reports changes the task) and recorded against the canceled attempt.
//
// A canceled task is never retried. Cancel of a finished task returns its row
// and ErrTaskFinished; of an unknown id, ErrNotFound.
func (c *Client) Cancel(ctx context.Context, id int64) (TaskInfo, error) {
	var info TaskInfo
	var finished bool
	err := c.inTx(ctx, func(q *db.Queries) error {
		row, changed, err := taskops.Cancel(ctx, q, id, "canceled by client")
		if errors.Is(err, taskops.ErrNotFound) {
			return fmt.Errorf("%w: id %d", ErrNotFound, id)
		}
		if err != nil {
			return err
		}
		info, finished = taskInfoFromRow(row), !changed
		return nil
	})
	if err != nil {
		return TaskInfo{}, err
	}
	if finished {
		return info, fmt.Errorf("%w: task %d is %s", ErrTaskFinished, id, info.State)
	}
	return info, nil
}

// ListParams filters List; zero fields do not filter.
type ListParams struct {
	State TaskState
	Group string
	Kind  string
	// BeforeID pages: only tasks with a smaller id (pass the last id of the
	// previous page).
	BeforeID int64
	// Limit is the page size: default 100, at most 10000.
	Limit int
	// Tags: only tasks that have all of these tags (TaskSpec.Tags).
	Tags []string
}

// List returns tasks newest first. An unknown State, a negative Limit or
// BeforeID, or a Limit over 10000 is refused with ErrInvalidArgument.
func (c *Client) List(ctx context.Context, p ListParams) ([]TaskInfo, error) {
	switch {
	case p.State != "" && !slices.Contains(state.TaskStates, string(p.State)):
		return nil, fmt.Errorf("%w: list: unknown state %q (one of %s)", ErrInvalidArgument, p.State, strings.Join(state.TaskStates, ", "))
	case p.Limit < 0 || p.Limit > 10000:
		return nil, fmt.Errorf("%w: list: limit %d is outside 0..10000 (0 means 100)", ErrInvalidArgument, p.Limit)
	case p.BeforeID < 0:
		return nil, fmt.Errorf("%w: list: before id %d is negative", ErrInvalidArgument, p.BeforeID)
	}
	limit := p.Limit
	if limit == 0 {
		limit = 100
	}
	arg := db.TaskListPageParams{MaxRows: int32(limit)}
	if p.State != "" {
		s := string(p.State)
		arg.State = &s
	}
	if p.Group != "" {
		arg.GroupName = &p.Group
	}
	if p.Kind != "" {
		arg.Kind = &p.Kind
	}
	if p.BeforeID > 0 {
		arg.BeforeID = &p.BeforeID
	}
	if len(p.Tags) > 0 {
		arg.Tags = p.Tags
	}
	var out []TaskInfo
	err := c.inTx(ctx, func(q *db.Queries) error {
		rows, err := taskops.ListPage(ctx, q, arg)
		if err != nil {
			return fmt.Errorf("list tasks: %w", err)
		}
		out = make([]TaskInfo, 0, len(rows))
		for _, r := range rows {
			out = append(out, taskInfoFromRow(r))
		}
		return nil
	})
	return out, err
}

// CreateGroup creates a worker group, so tasks can be submitted to it before
// any of its workers has started. It reports whether the group was created
// (false: it existed).
func (c *Client) CreateGroup(ctx context.Context, name, description string) (bool, error) {
	if err := (submit.Spec{Group: name, Kind: "x"}).Validate(); err != nil {
		return false, err
	}
	var n int64
	err := c.inTx(ctx, func(q *db.Queries) error {
		var err error
		n, err = q.GroupCreate(ctx, db.GroupCreateParams{Name: name, Description: description})
		if store.Code(err) == store.CodeCheckViolation {
			return fmt.Errorf("%w: group %q must be 1-63 of letters, digits, _ . - starting with a letter or digit", ErrInvalidTask, name)
		}
		return err
	})
	return n == 1, err
}

// SetGroupRetryBackoff states the retry policy of a group: tasks submitted to it
// from now on without their own TaskSpec.RetryBackoff wait b before each retry
// (tasks already submitted keep theirs). It returns ErrUnknownGroup if the group
// does not exist.
func (c *Client) SetGroupRetryBackoff(ctx context.Context, group string, b RetryBackoff) error {
	if err := (submit.Backoff{Base: b.Base, Max: b.Max}).Validate(); err != nil {
		return err
	}
	return c.inTx(ctx, func(q *db.Queries) error {
		n, err := q.GroupSetRetryBackoff(ctx, db.GroupSetRetryBackoffParams{Name: group, RetryBaseMs: b.Base.Milliseconds(), RetryMaxMs: b.Max.Milliseconds()})
		if err != nil {
			return fmt.Errorf("set retry backoff of group %q: %w", group, err)
		}
		if n == 0 {
			return fmt.Errorf("%w %q", ErrUnknownGroup, group)
		}
		return nil
	})
}

// GroupStatus is a worker group's health.
type GroupStatus struct {
	Name        string
	Description string
	CreatedAt   time.Time
	// LiveWorkers counts sessions that heartbeat within WorkerTimeout.
	LiveWorkers int
	// WaitingTasks counts queued tasks (waiting for a worker, or for a retry's
	// or snooze's time).
	WaitingTasks int
	// LiveMasters counts masters (of the whole installation) that heartbeat
	// within MasterTimeout.
	LiveMasters int
	// NoMaster: the group has workers but no master is alive: its tasks run,
	// but a dead worker's tasks are not failed over and overdue attempts are not
	// swept (run a master: WorkerConfig.Master, NewMaster or baton-master).
	NoMaster bool
}

// Groups reports every group's live workers and waiting tasks, and whether any
// master is alive.
func (c *Client) Groups(ctx context.Context) ([]GroupStatus, error) {
	var out []GroupStatus
	err := c.inTx(ctx, func(q *db.Queries) error {
		masters, err := q.MasterSessionCountLive(ctx, db.MasterSessionCountLiveParams{MasterTimeoutMs: c.cfg.MasterTimeout.Milliseconds()})
		if err != nil {
			return fmt.Errorf("count live masters: %w", err)
		}
		rows, err := q.GroupHealth(ctx, db.GroupHealthParams{WorkerTimeoutMs: c.cfg.WorkerTimeout.Milliseconds()})
		if err != nil {
			return fmt.Errorf("group health: %w", err)
		}
		for _, r := range rows {
			out = append(out, GroupStatus{
				Name: r.Name, Description: r.Description, CreatedAt: r.CreatedAt,
				LiveWorkers: int(r.LiveWorkers), WaitingTasks: int(r.WaitingTasks), LiveMasters: int(masters),
				NoMaster: r.LiveWorkers > 0 && masters == 0,
			})
		}
		return nil
	})
	return out, err
}
