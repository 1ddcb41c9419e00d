package submit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/baton-scheduler/baton/batontest"
	"github.com/baton-scheduler/baton/internal/store"
)

var srv *batontest.Server

func TestMain(m *testing.M) {
	os.Exit(batontest.MainNoLeaks(m, func(s *batontest.Server) { srv = s }))
}

// submitCase runs one submission against a real database and checks the
// properties every input must keep: a refusal names its problem (ErrInvalid or
// ErrUnknownGroup, one line) and changes no stored row; what Validate accepts for
// an existing group is stored, exactly as given.
func submitCase(t *testing.T, pool *pgxpool.Pool, s Spec) error {
	t.Helper()
	before := batontest.TakeSnapshot(t, pool)
	id, err := Submit(context.Background(), pool, s)
	if err != nil {
		if !errors.Is(err, ErrInvalid) && !errors.Is(err, ErrUnknownGroup) {
			t.Fatalf("Submit(%s) = %v: neither ErrInvalid nor ErrUnknownGroup", describe(s), err)
		}
		if strings.Contains(err.Error(), "\n") {
			t.Fatalf("multi-line error %q", err)
		}
		if diff := before.Diff(batontest.TakeSnapshot(t, pool)); diff != "" {
			t.Fatalf("refused submission %s changed stored rows: %s", describe(s), diff)
		}
		// Validate cannot foresee everything Postgres refuses (a payload that grows
		// past the limit as jsonb text, e.g. 1e100000 printed in full), but such a
		// refusal must still blame the input.
		if s.Validate() == nil && s.Group == batontest.FactoryGroup && !errors.Is(err, ErrInvalid) {
			t.Fatalf("Validate accepted %s but storing it failed: %v", describe(s), err)
		}
		return err
	}
	if verr := s.Validate(); verr != nil {
		t.Fatalf("stored a spec Validate refuses: %v", verr)
	}
	// One task added, nothing else touched (the task row is the queue).
	after := batontest.TakeSnapshot(t, pool)
	if changed := before.Changed(after); !slices.Equal(changed, []string{store.SchemaDefault + ".tasks"}) {
		t.Fatalf("submit changed %v, want only the tasks table: %s", changed, before.Diff(after))
	}
	if n := batontest.Int64(t, pool, "SELECT count(*) FROM tasks WHERE id >= $1", id); n != 1 {
		t.Fatalf("submit stored %d tasks from id %d on, want 1", n, id)
	}
	// Stored as given, queued (the task row is the queue: claimable now, no
	// dispatch row), with the spec's retry backoff or else its group's.
	var base, maxMs *int64
	if s.Backoff != nil {
		base, maxMs = batontest.Ptr(s.Backoff.Base.Milliseconds()), batontest.Ptr(s.Backoff.Max.Milliseconds())
	}
	n := batontest.Int64(t, pool, `SELECT count(*) FROM tasks t JOIN worker_groups g ON g.name = t.group_name
		WHERE t.id = $1 AND t.state = 'queued' AND t.group_name = $2 AND t.kind = $3 AND t.payload = $4::jsonb
		  AND t.priority = $5 AND t.max_retries = $6 AND t.timeout_ms = $7
		  AND t.attempt = 0 AND t.worker_session_id IS NULL AND t.queued_reason = 'submit' AND t.available_at <= now()
		  AND t.retry_base_ms = coalesce($8, g.retry_base_ms) AND t.retry_max_ms = coalesce($9, g.retry_max_ms)
		  AND NOT EXISTS (SELECT 1 FROM dispatch_queue d WHERE d.task_id = t.id)`,
		id, s.Group, s.Kind, string(s.payload()), s.Priority, s.MaxRetries, s.Timeout.Milliseconds(), base, maxMs)
	if n != 1 {
		t.Fatalf("task %d not stored as given: %s", id, describe(s))
	}
	return nil
}

// describe prints a spec with its payload cut short (fuzz inputs can be 1 MiB).
func describe(s Spec) string {
	p := s.Payload
	if len(p) > 80 {
		p = append(p[:80:80], "..."...)
	}
	return fmt.Sprintf("{Group:%q Kind:%q Payload:%q (%d bytes) Priority:%d MaxRetries:%d Timeout:%s}",
		s.Group, s.Kind, p, len(s.Payload), s.Priority, s.MaxRetries, s.Timeout)
}

// Malformed submissions are refused with an error naming the problem and store
// nothing; one case per kind of malformed input (docs/malformed-inputs.md).
func TestSubmitRefusalStoresNothing(t *testing.T) {
	t.Parallel()
	pool, _ := srv.NewPool(t)
	batontest.NewGroup(t, pool, nil)
	batontest.NewTask(t, pool, nil) // something stored that must stay as it is
	ok := Spec{Group: batontest.FactoryGroup, Kind: "noop"}
	cases := []struct {
		name string
		mod  func(*Spec)
		want string
	}{
		{"unknown_group", func(s *Spec) { s.Group = "nope" }, `unknown worker group "nope"`},
		{"invalid_json", func(s *Spec) { s.Payload = json.RawMessage(`{"a":`) }, "payload is not valid JSON"},
		{"oversized", func(s *Spec) { s.Payload = json.RawMessage(`"` + strings.Repeat("a", MaxPayloadBytes) + `"`) }, "the limit is 1048576"},
		{"jsonb_grows_past_limit", func(s *Spec) {
			// Under the limit as sent, over it as jsonb text (a space after every comma).
			s.Payload = json.RawMessage("[" + strings.Repeat("1,", MaxPayloadBytes/2-2) + "1]")
		}, "exceeds 1 MiB once stored"},
		{"nul_character", func(s *Spec) { s.Payload = json.RawMessage(`{"a":"x\u0000y"}`) }, `\u0000`},
		{"not_utf8", func(s *Spec) { s.Payload = json.RawMessage("{\"a\":\"\xff\"}") }, "not valid UTF-8"},
		{"numeric_overflow", func(s *Spec) { s.Payload = json.RawMessage(`{"n":1e1000000}`) }, "beyond the range Postgres can store"},
		{"shell_env_not_object", func(s *Spec) { s.Kind, s.Payload = KindShell, json.RawMessage(`{"command":"true","env":5}`) }, "shell payload"},
		{"shell_no_command", func(s *Spec) { s.Kind, s.Payload = KindShell, json.RawMessage(`{"cmd":"true"}`) }, `non-empty "command"`},
		{"bad_kind", func(s *Spec) { s.Kind = "a b" }, `kind "a b"`},
		{"priority", func(s *Spec) { s.Priority = 5000 }, "priority 5000"},
		{"negative_timeout", func(s *Spec) { s.Timeout = -time.Second }, "timeout -1s is negative"},
		{"backoff_max_below_base", func(s *Spec) { s.Backoff = &Backoff{Base: time.Second, Max: time.Millisecond} }, "retry backoff max 1ms"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := ok
			tc.mod(&s)
			err := submitCase(t, pool, s)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Submit = %v, want an error containing %q", err, tc.want)
			}
		})
	}
	// A retry backoff given with the spec is stored with it (else the group's).
	if err := submitCase(t, pool, Spec{Group: batontest.FactoryGroup, Kind: "noop", Backoff: &Backoff{Base: 0, Max: time.Minute}}); err != nil {
		t.Fatal(err)
	}
	// A batch with one bad spec, last, stores none of them: one Validate refuses,
	// and ones only Postgres can refuse (the good specs before it reach the
	// database in the same statement).
	grows := json.RawMessage("[" + strings.Repeat("1,", MaxPayloadBytes/2-2) + "1]")
	for _, bad := range []Spec{
		{Group: "g", Kind: "noop", Payload: json.RawMessage(`{"n":1e1000000}`)},
		{Group: "nope", Kind: "noop"},
		{Group: "g", Kind: "noop", Payload: grows},
	} {
		before := batontest.TakeSnapshot(t, pool)
		if _, err := Many(context.Background(), pool, []Spec{ok, ok, bad}); err == nil {
			t.Fatalf("batch with a bad spec (%s) stored", describe(bad))
		}
		if diff := before.Diff(batontest.TakeSnapshot(t, pool)); diff != "" {
			t.Fatalf("refused batch (bad spec %s) changed stored rows: %s", describe(bad), diff)
		}
	}
}

// FuzzSubmit: any spec is either stored exactly as given or refused with an
// error naming the problem, leaving every stored row unchanged (checked on a real
// database); whatever Validate accepts for an existing group is storable.
func FuzzSubmit(f *testing.F) {
	pool, _ := srv.NewPool(f)
	batontest.NewGroup(f, pool, nil)
	f.Add("g", "noop", `{}`, 0, 0, int64(0))
	f.Add("g", "shell", `{"command":"echo hi","env":{"A":"b"}}`, 5, 3, int64(1000))
	f.Add("g", "shell", `{"command":"true","env":5}`, 0, 0, int64(0))
	f.Add("g", "noop", `{"a":"\u0000"}`, 0, 0, int64(0))
	f.Add("g", "noop", `[1e999999]`, 0, 0, int64(0))
	f.Add("g", "noop", "\"\xff\"", 0, 0, int64(0))
	f.Add("nope", "noop", `{}`, 0, 0, int64(0))
	f.Add("g", "x y", `{}`, 2000, -1, int64(-5))
	f.Fuzz(func(t *testing.T, group, kind, payload string, priority, retries int, timeoutMs int64) {
		s := Spec{Group: group, Kind: kind, Payload: json.RawMessage(payload), Priority: priority, MaxRetries: retries,
			Timeout: time.Duration(timeoutMs) * time.Millisecond}
		submitCase(t, pool, s) //nolint:errcheck // the properties are checked inside
	})
}

// FuzzShellPayload: a shell command (what `baton task submit --shell` takes) is
// either refused with ErrInvalid, storing nothing, or stored and read back
// byte for byte — the worker runs exactly the command that was given.
func FuzzShellPayload(f *testing.F) {
	pool, _ := srv.NewPool(f)
	batontest.NewGroup(f, pool, nil)
	for _, c := range []string{"echo hi", "", "a\x00b", "printf '\xff'", `echo "$HOME" \ 'x'`, "é ☃ \u2028"} {
		f.Add(c)
	}
	f.Fuzz(func(t *testing.T, command string) {
		p, err := ShellPayload(command)
		if err != nil {
			if !errors.Is(err, ErrInvalid) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("ShellPayload(%q) = %v", command, err)
			}
			return
		}
		if submitCase(t, pool, Spec{Group: batontest.FactoryGroup, Kind: KindShell, Payload: p}) != nil {
			t.Fatalf("shell command %q refused after ShellPayload accepted it", command)
		}
		var stored string
		if err := pool.QueryRow(context.Background(), "SELECT payload->>'command' FROM tasks ORDER BY id DESC LIMIT 1").Scan(&stored); err != nil {
			t.Fatal(err)
		}
		if stored != command {
			t.Fatalf("stored command %q, submitted %q", stored, command)
		}
	})
}
