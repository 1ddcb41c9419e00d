package submit

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestValidate(t *testing.T) {
	t.Parallel()
	ok := Spec{Group: "g", Kind: "shell", Payload: json.RawMessage(`{"command": "true"}`)}
	cases := []struct {
		name string
		mod  func(*Spec)
		want string // "" = valid
	}{
		{"valid", func(*Spec) {}, ""},
		{"handler_empty_payload", func(s *Spec) { s.Kind, s.Payload = "noop", nil }, ""},
		{"no_group", func(s *Spec) { s.Group = "" }, "group is empty"},
		{"bad_kind", func(s *Spec) { s.Kind = "has space" }, "kind"},
		{"bad_json", func(s *Spec) { s.Kind, s.Payload = "noop", json.RawMessage(`{"a":`) }, "payload is not valid JSON"},
		{"oversized", func(s *Spec) {
			s.Kind, s.Payload = "noop", json.RawMessage(`"`+strings.Repeat("a", MaxPayloadBytes)+`"`)
		}, "payload is 1048578 bytes, the limit is 1048576"},
		{"shell_without_command", func(s *Spec) { s.Payload = json.RawMessage(`{"cmd": "x"}`) }, `non-empty "command"`},
		{"priority", func(s *Spec) { s.Priority = 1001 }, "priority 1001"},
		{"retries", func(s *Spec) { s.MaxRetries = -1 }, "max retries -1"},
		{"timeout", func(s *Spec) { s.Timeout = -time.Second }, "timeout -1s"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := ok
			tc.mod(&s)
			err := s.Validate()
			if tc.want == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate = %v, want ErrInvalid containing %q", err, tc.want)
			}
		})
	}
}

// FuzzValidate: Validate never panics, and whatever it accepts is valid JSON
// within the size limit.
func FuzzValidate(f *testing.F) {
	f.Add("g", "shell", `{"command": "true"}`, 0, 0)
	f.Add("g", "noop", `{"a":`, 5, 3)
	f.Add("", "x y", `[]`, -2000, 200)
	f.Fuzz(func(t *testing.T, group, kind, payload string, priority, retries int) {
		s := Spec{Group: group, Kind: kind, Payload: json.RawMessage(payload), Priority: priority, MaxRetries: retries}
		if s.Validate() == nil {
			if !json.Valid(s.payload()) || len(s.Payload) > MaxPayloadBytes || !kindRE.MatchString(kind) {
				t.Fatalf("accepted invalid spec %+v", s)
			}
		}
	})
}
