package baton

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"time"

	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/submit"
)

// ErrUnknownKind: the task's group declares its kinds (WorkerConfig.DeclareKinds
// or Client.DeclareKinds) and the task's kind is not one of them. The submit
// fails at once; nothing is stored.
var ErrUnknownKind = submit.ErrUnknownKind

// Validator is implemented by typed payloads that check themselves: HandlerFor
// and TaskSpecFor call Validate after decoding and before encoding.
type Validator interface{ Validate() error }

// HandlerFor makes a Handler of a function taking the payload decoded into T.
// A payload that is null, of another JSON shape than T's (an array for a
// struct, a string for a number), or that T's Validate refuses, fails the
// attempt for good (Permanent, wrapping ErrInvalidTask): retrying cannot fix it.
// Unknown fields are ignored, so older workers accept newer payloads.
func HandlerFor[T any](fn func(ctx context.Context, task Task, payload T) (string, error)) Handler {
	return func(ctx context.Context, task Task) (string, error) {
		var p T
		if err := decodePayload(task.Payload, &p); err != nil {
			return "", Permanent(fmt.Errorf("task %d of kind %s: %w", task.ID, task.Kind, err))
		}
		return fn(ctx, task, p)
	}
}

// AddHandler registers fn for kind in cfg.Handlers (see HandlerFor) and records
// T's JSON type, which the worker declares for kind when cfg.DeclareKinds is
// set: then a submit of a payload of another type (null, [1,2] for a struct)
// fails at submit with ErrInvalidTask.
func AddHandler[T any](cfg *WorkerConfig, kind string, fn func(ctx context.Context, task Task, payload T) (string, error)) {
	if cfg.Handlers == nil {
		cfg.Handlers = map[string]Handler{}
	}
	cfg.Handlers[kind] = HandlerFor(fn)
	if cfg.payloadTypes == nil {
		cfg.payloadTypes = map[string]string{}
	}
	cfg.payloadTypes[kind] = jsonType(reflect.TypeFor[T]())
}

// TaskSpecFor returns a TaskSpec of kind in group with payload encoded as JSON,
// refusing (ErrInvalidTask) a payload that encodes to null or that its
// Validate refuses. Set the other TaskSpec fields on the result.
func TaskSpecFor[T any](group, kind string, payload T) (TaskSpec, error) {
	b, err := json.Marshal(payload)
	if err != nil {
		return TaskSpec{}, fmt.Errorf("%w: payload of kind %s: %w", ErrInvalidTask, kind, err)
	}
	if bytes.Equal(b, []byte("null")) {
		return TaskSpec{}, fmt.Errorf("%w: payload of kind %s is null", ErrInvalidTask, kind)
	}
	if v, ok := any(payload).(Validator); ok {
		if err := v.Validate(); err != nil {
			return TaskSpec{}, fmt.Errorf("%w: payload of kind %s: %w", ErrInvalidTask, kind, err)
		}
	}
	return TaskSpec{Group: group, Kind: kind, Payload: b}, nil
}

func decodePayload[T any](raw json.RawMessage, p *T) error {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return fmt.Errorf("%w: payload is null, want %s", ErrInvalidTask, reflect.TypeFor[T]())
	}
	if want := jsonType(reflect.TypeFor[T]()); want != "" && want != jsonTypeOf(raw) {
		return fmt.Errorf("%w: payload is a JSON %s, want a JSON %s (%s)", ErrInvalidTask, jsonTypeOf(raw), want, reflect.TypeFor[T]())
	}
	if err := json.Unmarshal(raw, p); err != nil {
		return fmt.Errorf("%w: payload does not decode into %s: %w", ErrInvalidTask, reflect.TypeFor[T](), err)
	}
	if v, ok := any(*p).(Validator); ok {
		if err := v.Validate(); err != nil {
			return fmt.Errorf("%w: %w", ErrInvalidTask, err)
		}
	}
	return nil
}

// jsonType is the JSON type (jsonb_typeof) values of t encode to, or "" when
// it is not fixed (an interface, a type with its own JSON encoding).
func jsonType(t reflect.Type) string {
	if t.Implements(reflect.TypeFor[json.Marshaler]()) || reflect.PointerTo(t).Implements(reflect.TypeFor[json.Unmarshaler]()) {
		return ""
	}
	if t == reflect.TypeFor[time.Time]() {
		return "string"
	}
	switch t.Kind() {
	case reflect.Pointer:
		return jsonType(t.Elem())
	case reflect.Struct, reflect.Map:
		return "object"
	case reflect.Slice, reflect.Array:
		if t.Elem().Kind() == reflect.Uint8 && t.Kind() == reflect.Slice {
			return "string" // []byte is base64
		}
		return "array"
	case reflect.String:
		return "string"
	case reflect.Bool:
		return "boolean"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64, reflect.Uint, reflect.Uint8,
		reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Float32, reflect.Float64:
		return "number"
	}
	return ""
}

// jsonTypeOf is the JSON type of a valid JSON document.
func jsonTypeOf(raw []byte) string {
	switch raw[0] {
	case '{':
		return "object"
	case '[':
		return "array"
	case '"':
		return "string"
	case 't', 'f':
		return "boolean"
	case 'n':
		return "null"
	}
	return "number"
}

// DeclareKinds declares kinds that group runs (creating the group if needed):
// once a group has declared kinds, a submit of any other kind fails at once
// with ErrUnknownKind instead of failing on a worker after its retries.
// Declarations are only added (old and new workers of a rolling deploy both
// declare theirs); a worker with WorkerConfig.DeclareKinds declares its
// handlers' kinds itself. A payload type (see AddHandler) already declared
// for a kind is kept.
func (c *Client) DeclareKinds(ctx context.Context, group string, kinds ...string) error {
	for _, k := range kinds {
		if err := (submit.Spec{Group: group, Kind: k}).Validate(); err != nil {
			return err
		}
	}
	return c.inTx(ctx, func(q *db.Queries) error {
		if err := q.GroupEnsure(ctx, group); err != nil {
			return fmt.Errorf("declare kinds: create group %q: %w", group, err)
		}
		have, err := q.GroupKinds(ctx, group)
		if err != nil {
			return fmt.Errorf("declare kinds of group %q: %w", group, err)
		}
		known := map[string]string{}
		for _, h := range have {
			known[h.Kind] = deref(h.PayloadType)
		}
		types := make([]string, len(kinds))
		for i, k := range kinds {
			types[i] = known[k]
		}
		if err := q.GroupDeclareKinds(ctx, db.GroupDeclareKindsParams{GroupName: group, Kinds: kinds, PayloadTypes: types}); err != nil {
			return fmt.Errorf("declare kinds of group %q: %w", group, err)
		}
		return nil
	})
}
