package baton

import (
	"errors"

	"github.com/baton-scheduler/baton/internal/executor"
	"github.com/baton-scheduler/baton/internal/migrate"
	"github.com/baton-scheduler/baton/internal/submit"
)

// Errors to match with errors.Is. Messages carry the details (which field,
// which group, which version).
var (
	// ErrInvalidTask: a TaskSpec failed validation; nothing was stored.
	ErrInvalidTask = submit.ErrInvalid
	// ErrUnknownGroup: a TaskSpec names a group that does not exist.
	ErrUnknownGroup = submit.ErrUnknownGroup
	// ErrNotFound: no task with that id.
	ErrNotFound = errors.New("task not found")
	// ErrTaskFinished: Cancel of a task already in a terminal state.
	ErrTaskFinished = errors.New("task already finished")
	// ErrTaskCanceled is the cause (context.Cause) of a running handler's ctx
	// when its task is canceled (Client.Cancel), and what Task.CheckLease then
	// wraps: the handler should stop and may return any error.
	ErrTaskCanceled = executor.ErrCanceled
	// ErrAttemptSuperseded is the cause of a running handler's ctx when its
	// attempt no longer owns the task for another reason: a master recorded its
	// timeout or moved the task to another worker.
	ErrAttemptSuperseded = executor.ErrSuperseded
	// ErrSchemaOutdated: baton's schema is missing or older than this build
	// (call Migrate or run `baton migrate up`).
	ErrSchemaOutdated = migrate.ErrDatabaseOlder
	// ErrSchemaNewer: the database was migrated by a newer baton.
	ErrSchemaNewer = migrate.ErrDatabaseNewer
	// ErrLegacyPublicSchema: baton's schema is empty but an install from before
	// baton had its own schema is in public (see docs/architecture.md, "Schema").
	ErrLegacyPublicSchema = migrate.ErrLegacyPublic
	// ErrInvalidConfig wraps every configuration error of NewWorker, NewMaster
	// and NewClient.
	ErrInvalidConfig = errors.New("invalid baton config")
	// ErrInvalidArgument: a call's parameters are out of range (List's state,
	// limit or before id).
	ErrInvalidArgument = errors.New("invalid argument")
)
