// Package submit validates and stores new tasks (queued task rows).
package submit

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/executor"
	"github.com/baton-scheduler/baton/internal/store"
)

// Limits enforced before anything is stored (the schema enforces them again).
const (
	MaxPayloadBytes = 1 << 20
	MaxPriority     = 1000
	MaxRetries      = 100
	KindShell       = "shell"
)

var kindRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.:/-]{0,127}$`)

// groupRE mirrors the worker_groups_name_format constraint: a name no group can
// have is refused as malformed, not looked up.
var groupRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$`)

// ErrInvalid wraps every validation error; ErrUnknownGroup names a missing group.
var (
	ErrInvalid      = errors.New("invalid task")
	ErrUnknownGroup = errors.New("unknown worker group")
	// ErrUnknownKind: the group declares its kinds and this is not one of them.
	ErrUnknownKind = errors.New("unknown task kind")
)

// Spec describes a task to submit.
type Spec struct {
	Group      string
	Kind       string
	Payload    json.RawMessage
	Priority   int
	MaxRetries int
	Timeout    time.Duration
	// Backoff is the task's retry backoff; nil takes its group's.
	Backoff *Backoff
	// RunAt, when not zero, is the time before which the task is not claimed;
	// Delay (Postgres time: now() + Delay) is used when RunAt is zero. A time in
	// the past runs at once.
	RunAt time.Time
	Delay time.Duration
	// Unique, when set, makes the task unique by key among tasks of its kind
	// within a scope (see InsertEach).
	Unique *Unique
	// Tags label the task (at most MaxTags, each like a kind).
	Tags []string
}

// MaxTags is the most tags a task may have.
const MaxTags = 16

// ValidTag reports whether t can be a tag: 1-128 of letters, digits, _ . : / - = starting with a letter or digit.
func ValidTag(t string) bool { return tagRE.MatchString(t) }

var tagRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.:/=-]{0,127}$`)

// Unique is a task's unique key and the scope it is unique in.
type Unique struct {
	Key   string
	Scope string // ScopeActive (default when empty), ScopePeriod or ScopeForever
	// Period is the length of the periods of ScopePeriod (Postgres time, from
	// the Unix epoch): at most one task per key and period.
	Period time.Duration
}

// Unique scopes (tasks.unique_scope).
const (
	ScopeActive  = "active"
	ScopePeriod  = "period"
	ScopeForever = "forever"
	MaxUniqueKey = 256
)

func (u *Unique) scope() string {
	if u.Scope == "" {
		return ScopeActive
	}
	return u.Scope
}

// Validate checks a unique key and scope.
func (u *Unique) Validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: unique: %s", ErrInvalid, fmt.Sprintf(format, a...))
	}
	switch {
	case u.Key == "" || len(u.Key) > MaxUniqueKey:
		return bad("key must be 1-%d bytes, got %d", MaxUniqueKey, len(u.Key))
	case !utf8.ValidString(u.Key) || strings.ContainsRune(u.Key, 0):
		return bad("key must be UTF-8 without NUL")
	}
	switch u.scope() {
	case ScopeActive, ScopeForever:
		if u.Period != 0 {
			return bad("period is only for scope %q", ScopePeriod)
		}
	case ScopePeriod:
		if u.Period < time.Millisecond || u.Period > MaxDelay {
			return bad("period %s is outside 1ms..%s", u.Period, MaxDelay)
		}
	default:
		return bad("scope %q is not one of %q, %q, %q", u.Scope, ScopeActive, ScopePeriod, ScopeForever)
	}
	return nil
}

// MaxDelay bounds how far in the future a task may be submitted to run.
const MaxDelay = 10 * 365 * 24 * time.Hour

// Backoff is a retry policy: retry n waits Base·2^(n-1), capped at Max, ±20%.
// Postgres computes it when the failure is recorded (TaskFinish).
type Backoff struct {
	Base, Max time.Duration
}

// Backoff limits (the schema's tasks_retry_backoff).
const (
	MaxBackoffBase = 24 * time.Hour
	MaxBackoffMax  = 7 * 24 * time.Hour
)

// Validate checks a backoff.
func (b Backoff) Validate() error {
	switch {
	case b.Base < 0 || b.Base > MaxBackoffBase:
		return fmt.Errorf("%w: retry backoff base %s is outside 0..%s", ErrInvalid, b.Base, MaxBackoffBase)
	case b.Max < b.Base || b.Max > MaxBackoffMax:
		return fmt.Errorf("%w: retry backoff max %s is outside base (%s)..%s", ErrInvalid, b.Max, b.Base, MaxBackoffMax)
	}
	return nil
}

// Validate checks a spec without touching the database.
func (s Spec) Validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, a...))
	}
	switch {
	case s.Group == "":
		return bad("group is empty")
	case !groupRE.MatchString(s.Group):
		return bad("group %q must be 1-63 of letters, digits, _ . - starting with a letter or digit", s.Group)
	case !kindRE.MatchString(s.Kind):
		return bad("kind %q must be 1-128 of letters, digits, _ . : / - starting with a letter or digit", s.Kind)
	case len(s.Payload) > MaxPayloadBytes:
		return bad("payload is %d bytes, the limit is %d (1 MiB)", len(s.Payload), MaxPayloadBytes)
	case s.Priority < -MaxPriority || s.Priority > MaxPriority:
		return bad("priority %d is outside -%d..%d", s.Priority, MaxPriority, MaxPriority)
	case s.MaxRetries < 0 || s.MaxRetries > MaxRetries:
		return bad("max retries %d is outside 0..%d", s.MaxRetries, MaxRetries)
	case s.Timeout < 0:
		return bad("timeout %s is negative", s.Timeout)
	case s.Delay < 0 || s.Delay > MaxDelay:
		return bad("delay %s is outside 0..%s", s.Delay, MaxDelay)
	case !s.RunAt.IsZero() && s.Delay != 0:
		return bad("run at and delay are both set; give one")
	case !s.RunAt.IsZero() && (s.RunAt.Year() < 1970 || time.Until(s.RunAt) > MaxDelay):
		return bad("run at %s is outside 1970..now+%s", s.RunAt.Format(time.RFC3339), MaxDelay)
	}
	if s.Backoff != nil {
		if err := s.Backoff.Validate(); err != nil {
			return err
		}
	}
	if s.Unique != nil {
		if err := s.Unique.Validate(); err != nil {
			return err
		}
	}
	if len(s.Tags) > MaxTags {
		return bad("%d tags, the limit is %d", len(s.Tags), MaxTags)
	}
	for _, t := range s.Tags {
		if !ValidTag(t) {
			return bad("tag %q must be 1-128 of letters, digits, _ . : / - = starting with a letter or digit", t)
		}
	}
	payload := s.payload()
	if !json.Valid(payload) {
		var v any
		err := json.Unmarshal(payload, &v)
		return bad("payload is not valid JSON: %v", err)
	}
	// Valid JSON that Postgres' jsonb still refuses: caught here, with a reason,
	// rather than as a failed INSERT.
	if !utf8.Valid(payload) {
		return bad("payload is not valid UTF-8")
	}
	if hasNUL(payload) {
		return bad(`payload contains the character \u0000, which Postgres cannot store in jsonb`)
	}
	if n, ok := numberOutOfRange(payload); ok {
		return bad("payload number %.40s is beyond the range Postgres can store (at most %d digits before and %d after the decimal point)",
			n, maxNumericIntDigits, maxNumericFracDigits)
	}
	if s.Kind == KindShell {
		// The executor's own payload type: what it would refuse at run time is
		// refused here, before anything is stored.
		var p executor.ShellPayload
		if err := json.Unmarshal(payload, &p); err != nil {
			return bad("shell payload: %v", err)
		}
		if p.Command == "" {
			return bad(`shell payload needs a non-empty "command" string`)
		}
	}
	return nil
}

// hasNUL reports whether a valid JSON document has a string (value or key)
// containing U+0000, which jsonb cannot store.
func hasNUL(payload []byte) bool {
	if !bytes.Contains(payload, []byte(`\u0000`)) {
		return false // the only way to write U+0000 in valid JSON
	}
	dec := json.NewDecoder(bytes.NewReader(payload))
	for {
		tok, err := dec.Token()
		if err != nil {
			return false
		}
		if s, ok := tok.(string); ok && strings.ContainsRune(s, 0) {
			return true
		}
	}
}

// Postgres' numeric, which jsonb stores numbers in, holds at most this many
// decimal digits before and after the decimal point.
const (
	maxNumericIntDigits  = 131072
	maxNumericFracDigits = 16383
)

// numberOutOfRange returns the first number of a valid JSON document that
// Postgres' numeric cannot hold ("value overflows numeric format"), if any.
func numberOutOfRange(payload []byte) (string, bool) {
	if !bytes.ContainsAny(payload, "eE") && len(payload) <= maxNumericFracDigits {
		return "", false // no exponent and too short to need the digits checked
	}
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.UseNumber()
	for {
		tok, err := dec.Token()
		if err != nil {
			return "", false
		}
		if n, ok := tok.(json.Number); ok && !numericFits(string(n)) {
			return string(n), true
		}
	}
}

// numericFits reports whether a JSON number fits Postgres' numeric: its digits
// before the decimal point (after applying the exponent, leading zeros dropped)
// and after it (the display scale, trailing zeros kept) are within the limits.
func numericFits(n string) bool {
	n = strings.TrimPrefix(n, "-")
	mant, exp := n, 0
	if i := strings.IndexAny(n, "eE"); i >= 0 {
		mant = n[:i]
		e, err := strconv.Atoi(strings.TrimPrefix(n[i+1:], "+"))
		if err != nil || e > 1<<30 || e < -(1<<30) {
			return false
		}
		exp = e
	}
	intPart, frac, _ := strings.Cut(mant, ".")
	intPart = strings.TrimLeft(intPart, "0")
	intDigits := len(intPart) + exp // may be negative: 0.00x
	scale := len(frac) - exp
	if intPart == "" && strings.Trim(frac, "0") == "" {
		intDigits = 0 // zero has no integer digits, whatever its exponent
	} else if intPart == "" {
		intDigits = exp - (len(frac) - len(strings.TrimLeft(frac, "0")))
	}
	return intDigits <= maxNumericIntDigits && max(scale, 0) <= maxNumericFracDigits
}

// ShellPayload is the payload of a shell task running command: what
// `baton task submit --shell` stores. A command that could not be stored or run
// as given (empty, not UTF-8, containing NUL) is refused.
func ShellPayload(command string) (json.RawMessage, error) {
	bad := func(msg string) error { return fmt.Errorf("%w: shell command %s", ErrInvalid, msg) }
	switch {
	case command == "":
		return nil, bad("is empty")
	case !utf8.ValidString(command):
		return nil, bad("is not valid UTF-8")
	case strings.ContainsRune(command, 0):
		return nil, bad("contains a NUL byte")
	}
	return json.Marshal(executor.ShellPayload{Command: command})
}

func (s Spec) payload() []byte {
	if len(bytes.TrimSpace(s.Payload)) == 0 {
		return []byte("{}")
	}
	return s.Payload
}

// Params validates every spec and lays them out as the columns TaskSubmitMany
// unnests (a backoff of -1 takes the group's).
func Params(specs []Spec) (db.TaskSubmitManyParams, error) {
	var p db.TaskSubmitManyParams
	if len(specs) == 0 {
		return p, fmt.Errorf("%w: no tasks to submit", ErrInvalid)
	}
	for i, s := range specs {
		if err := s.Validate(); err != nil {
			if len(specs) > 1 {
				return p, fmt.Errorf("task %d: %w", i, err)
			}
			return p, err
		}
		base, maxDelay := int64(-1), int64(-1)
		if s.Backoff != nil {
			base, maxDelay = s.Backoff.Base.Milliseconds(), s.Backoff.Max.Milliseconds()
		}
		p.GroupNames = append(p.GroupNames, s.Group)
		p.Kinds = append(p.Kinds, s.Kind)
		p.Payloads = append(p.Payloads, string(s.payload()))
		p.Priorities = append(p.Priorities, int32(s.Priority))
		p.MaxRetries = append(p.MaxRetries, int32(s.MaxRetries))
		p.TimeoutsMs = append(p.TimeoutsMs, s.Timeout.Milliseconds())
		p.RetryBasesMs = append(p.RetryBasesMs, base)
		p.RetryMaxesMs = append(p.RetryMaxesMs, maxDelay)
		var runAt int64
		if !s.RunAt.IsZero() {
			runAt = max(s.RunAt.UnixMicro(), 1) // 0 means "not set"
		}
		p.RunAtsUs = append(p.RunAtsUs, runAt)
		p.DelaysMs = append(p.DelaysMs, s.Delay.Milliseconds())
		tags, _ := json.Marshal(s.Tags) // strings: cannot fail
		if s.Tags == nil {
			tags = []byte("[]")
		}
		p.TagsJson = append(p.TagsJson, string(tags))
	}
	return p, nil
}

// Submit validates and stores one task; it returns the new task id.
func Submit(ctx context.Context, pool *pgxpool.Pool, s Spec) (int64, error) {
	ids, err := Many(ctx, pool, []Spec{s})
	if err != nil {
		return 0, err
	}
	return ids[0], nil
}

// Many validates every spec, then stores all of them in one statement (all or
// nothing; one round trip) with one NOTIFY per group.
func Many(ctx context.Context, pool *pgxpool.Pool, specs []Spec) ([]int64, error) {
	p, err := Params(specs)
	if err != nil {
		return nil, err
	}
	q := db.New(pool)
	ids, err := Insert(ctx, q, p)
	if err != nil {
		return nil, InsertError(ctx, q, p, err, func(g string) string {
			return fmt.Sprintf("start a worker with --group %s first, or check the name", g)
		})
	}
	Wake(ctx, q, Groups(p))
	return ids, nil
}

// InsertError turns a failed Insert of p into the error a caller can act on:
// ErrUnknownGroup naming the missing group (looked up on the error path only)
// with todo(group) saying what to do, or ErrInvalid for a value the schema
// refuses; any other error is returned wrapped.
func InsertError(ctx context.Context, q *db.Queries, p db.TaskSubmitManyParams, err error, todo func(group string) string) error {
	switch store.Constraint(err) {
	case "tasks_group_name_fkey":
		for _, g := range Groups(p) {
			if ok, gerr := q.GroupExists(ctx, g); gerr == nil && !ok {
				return fmt.Errorf("%w %q: %s", ErrUnknownGroup, g, todo(g))
			}
		}
		return fmt.Errorf("%w: %v", ErrUnknownGroup, err)
	case "tasks_payload_size":
		return fmt.Errorf("%w: a payload exceeds 1 MiB once stored as jsonb (jsonb adds spaces)", ErrInvalid)
	case "tasks_kind_declared":
		return fmt.Errorf("%w: %s", ErrUnknownKind, store.Message(err))
	case "tasks_payload_type":
		return fmt.Errorf("%w: %s", ErrInvalid, store.Message(err))
	case "":
	default:
		return fmt.Errorf("%w: rejected by constraint %s", ErrInvalid, store.Constraint(err))
	}
	// SQLSTATE class 22 (data exception): Postgres refuses a value, e.g. a
	// number beyond jsonb's numeric range. The data is at fault, not the server.
	if msg, ok := store.DataException(err); ok {
		return fmt.Errorf("%w: a payload was refused by Postgres: %s", ErrInvalid, msg)
	}
	return fmt.Errorf("store tasks: %w", err)
}

// Wake tells the groups' workers that tasks were queued (NOTIFY baton_claim
// "g:<group>"), after the submit committed and as a statement of its own. Postgres
// commits notifying transactions one at a time, holding a cluster-wide lock
// through the commit; a NOTIFY-only statement has nothing to flush, so it holds
// that lock briefly, and the submits themselves keep sharing WAL flushes (group
// commit). Best effort: the tasks are stored, and a worker that misses the wake-up
// claims them on its poll.
func Wake(ctx context.Context, q *db.Queries, groups []string) {
	_ = q.NotifyQueued(ctx, groups)
}

// Groups lists the distinct groups of submit parameters, sorted.
func Groups(p db.TaskSubmitManyParams) []string {
	return slices.Compact(slices.Sorted(slices.Values(p.GroupNames)))
}

// Insert stores validated specs (Params) with one statement: TaskSubmitOne for a
// single task, TaskSubmitMany for a batch.
func Insert(ctx context.Context, q *db.Queries, p db.TaskSubmitManyParams) ([]int64, error) {
	if len(p.GroupNames) != 1 {
		return q.TaskSubmitMany(ctx, p)
	}
	id, err := q.TaskSubmitOne(ctx, db.TaskSubmitOneParams{
		GroupName: p.GroupNames[0], Kind: p.Kinds[0], Payload: p.Payloads[0], Priority: p.Priorities[0],
		MaxRetries: p.MaxRetries[0], TimeoutMs: p.TimeoutsMs[0], RetryBaseMs: p.RetryBasesMs[0], RetryMaxMs: p.RetryMaxesMs[0],
		RunAtUs: p.RunAtsUs[0], DelayMs: p.DelaysMs[0], TagsJson: p.TagsJson[0],
	})
	if err != nil {
		return nil, err
	}
	return []int64{id}, nil
}

// AnyUnique reports whether a spec has a unique key (InsertEach stores them).
func AnyUnique(specs []Spec) bool {
	return slices.ContainsFunc(specs, func(s Spec) bool { return s.Unique != nil })
}

// InsertEach stores validated specs (p = Params(specs)) one statement each, in
// order, in q's transaction: what a batch with unique keys needs. A spec whose
// unique key is taken in its scope is not inserted: its id is the holder's and
// its dup flag is set. The unique indexes decide, in the inserting transaction:
// an insert of a key another transaction is inserting waits for it to commit or
// roll back, so concurrent submits of one key from any number of processes
// store one task. If the holder ends (or its period passes) between the refused
// insert and the look-up, the insert is tried again.
func InsertEach(ctx context.Context, q *db.Queries, specs []Spec, p db.TaskSubmitManyParams) (ids []int64, dup []bool, err error) {
	ids, dup = make([]int64, len(specs)), make([]bool, len(specs))
	for i, s := range specs {
		one := db.TaskSubmitOneParams{
			GroupName: p.GroupNames[i], Kind: p.Kinds[i], Payload: p.Payloads[i], Priority: p.Priorities[i],
			MaxRetries: p.MaxRetries[i], TimeoutMs: p.TimeoutsMs[i], RetryBaseMs: p.RetryBasesMs[i], RetryMaxMs: p.RetryMaxesMs[i],
			RunAtUs: p.RunAtsUs[i], DelayMs: p.DelaysMs[i], TagsJson: p.TagsJson[i],
		}
		if s.Unique != nil {
			one.UniqueKey, one.UniqueScope, one.UniquePeriodMs = s.Unique.Key, s.Unique.scope(), s.Unique.Period.Milliseconds()
		}
		for try := 0; ; try++ {
			id, err := q.TaskSubmitOne(ctx, one)
			if err == nil {
				ids[i] = id
				break
			}
			if !errors.Is(err, pgx.ErrNoRows) || s.Unique == nil {
				return nil, nil, err
			}
			holder, err := q.TaskFindUnique(ctx, db.TaskFindUniqueParams{Kind: one.Kind, UniqueKey: one.UniqueKey,
				UniqueScope: one.UniqueScope, UniquePeriodMs: one.UniquePeriodMs})
			if err != nil {
				return nil, nil, err
			}
			if len(holder) == 1 {
				ids[i], dup[i] = holder[0], true
				break
			}
			if try == 10 {
				return nil, nil, fmt.Errorf("unique key %q of kind %q: taken, but its holder keeps changing", one.UniqueKey, one.Kind)
			}
		}
	}
	return ids, dup, nil
}
