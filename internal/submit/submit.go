// Package submit validates and stores new tasks with their dispatch rows.
package submit

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/notify"
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

// ErrInvalid wraps every validation error; ErrUnknownGroup names a missing group.
var (
	ErrInvalid      = errors.New("invalid task")
	ErrUnknownGroup = errors.New("unknown worker group")
)

// Spec describes a task to submit.
type Spec struct {
	Group      string
	Kind       string
	Payload    json.RawMessage
	Priority   int
	MaxRetries int
	Timeout    time.Duration
}

// Validate checks a spec without touching the database.
func (s Spec) Validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, a...))
	}
	switch {
	case s.Group == "":
		return bad("group is empty")
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
	}
	payload := s.payload()
	if !json.Valid(payload) {
		var v any
		err := json.Unmarshal(payload, &v)
		return bad("payload is not valid JSON: %v", err)
	}
	if s.Kind == KindShell {
		var p struct {
			Command string `json:"command"`
		}
		if err := json.Unmarshal(payload, &p); err != nil || p.Command == "" {
			return bad(`shell payload needs a non-empty "command" string`)
		}
	}
	return nil
}

func (s Spec) payload() []byte {
	if len(bytes.TrimSpace(s.Payload)) == 0 {
		return []byte("{}")
	}
	return s.Payload
}

// Submit validates and stores one task; it returns the new task id.
func Submit(ctx context.Context, pool *pgxpool.Pool, s Spec) (int64, error) {
	ids, err := Many(ctx, pool, []Spec{s})
	if err != nil {
		return 0, err
	}
	return ids[0], nil
}

// Many validates every spec, then stores all of them in one transaction (all or
// nothing) with one NOTIFY.
func Many(ctx context.Context, pool *pgxpool.Pool, specs []Spec) ([]int64, error) {
	p := db.TaskSubmitManyParams{}
	groups := map[string]bool{}
	for i, s := range specs {
		if err := s.Validate(); err != nil {
			if len(specs) > 1 {
				return nil, fmt.Errorf("task %d: %w", i, err)
			}
			return nil, err
		}
		groups[s.Group] = true
		p.GroupNames = append(p.GroupNames, s.Group)
		p.Kinds = append(p.Kinds, s.Kind)
		p.Payloads = append(p.Payloads, string(s.payload()))
		p.Priorities = append(p.Priorities, int32(s.Priority))
		p.MaxRetries = append(p.MaxRetries, int32(s.MaxRetries))
		p.TimeoutsMs = append(p.TimeoutsMs, s.Timeout.Milliseconds())
	}
	var ids []int64
	err := store.WithTx(ctx, pool, func(q *db.Queries, tx pgx.Tx) error {
		for g := range groups {
			ok, err := q.GroupExists(ctx, g)
			if err != nil {
				return fmt.Errorf("look up group: %w", err)
			}
			if !ok {
				return fmt.Errorf("%w %q: start a worker with --group %s first, or check the name", ErrUnknownGroup, g, g)
			}
		}
		var err error
		ids, err = q.TaskSubmitMany(ctx, p)
		if err != nil {
			switch store.Constraint(err) {
			case "tasks_group_name_fkey":
				return fmt.Errorf("%w: %v", ErrUnknownGroup, err)
			case "tasks_payload_size":
				return fmt.Errorf("%w: a payload exceeds 1 MiB once stored as jsonb (jsonb adds spaces)", ErrInvalid)
			case "":
			default:
				return fmt.Errorf("%w: rejected by constraint %s", ErrInvalid, store.Constraint(err))
			}
			return fmt.Errorf("store tasks: %w", err)
		}
		_, err = tx.Exec(ctx, "SELECT pg_notify($1, '')", notify.ChannelDispatch)
		return err
	})
	if err != nil {
		return nil, err
	}
	return ids, nil
}
