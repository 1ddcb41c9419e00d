package cli

import (
	"encoding/json"
	"os/exec"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
)

// rfc3339Second is the model's time format: what jq's fromdateiso8601 takes.
var rfc3339Second = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$`)

// checkModel walks decoded JSON: every key is snake_case, every *_at value a
// second-precision RFC 3339 time or null.
func checkModel(t *testing.T, where string, v any) {
	t.Helper()
	switch x := v.(type) {
	case map[string]any:
		for k, val := range x {
			if k == "payload" {
				continue // the task's own data
			}
			if !regexp.MustCompile(`^[a-z][a-z0-9_]*$`).MatchString(k) {
				t.Errorf("%s: key %q is not snake_case", where, k)
			}
			if strings.HasSuffix(k, "_at") || k == "deadline" {
				if s, ok := val.(string); val != nil && (!ok || !rfc3339Second.MatchString(s)) {
					t.Errorf("%s: %s = %v is not an RFC 3339 time to the second", where, k, val)
				}
			}
			checkModel(t, where+"."+k, val)
		}
	case []any:
		for _, e := range x {
			checkModel(t, where, e)
		}
	}
}

func keys(m map[string]any) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func TestJSONModelAndOperatorCommands(t *testing.T) {
	t.Parallel()
	pool, dsn := srv.NewPool(t)
	env := map[string]string{"BATON_DATABASE_URL": dsn}
	run := func(want int, args ...string) string {
		t.Helper()
		out, e, code := baton(t, env, args...)
		if code != want {
			t.Fatalf("baton %v: exit %d, want %d; stdout %q stderr %q", args, code, want, out, e)
		}
		return out + e
	}
	if out := run(0, "group", "create", "g", "--description", "demo"); out != "group g created\n" {
		t.Fatalf("group create: %q", out)
	}
	if out := run(0, "group", "create", "g"); out != "group g exists\n" {
		t.Fatalf("group create again: %q", out)
	}
	run(1, "group", "create", "bad name")
	run(0, "task", "submit", "--group", "g", "--kind", "mail.send", "--payload", `{"to":"x"}`)
	run(0, "task", "submit", "--group", "g", "--type", "mail.send") // the old spelling still works
	run(0, "task", "submit", "--group", "g", "--shell", "true")

	var list []map[string]any
	if err := json.Unmarshal([]byte(run(0, "task", "list", "--json")), &list); err != nil || len(list) != 3 {
		t.Fatalf("task list --json: %v, %d rows", err, len(list))
	}
	checkModel(t, "task list", list)
	wantKeys := []string{"attempt", "available_at", "dispatched_at", "exit_code", "failover_count", "finished_at", "group", "id",
		"kind", "last_error", "max_retries", "output", "payload", "priority", "retries", "retry_backoff", "started_at", "state",
		"submitted_at", "tags", "timeout_ms", "worker_session_id", "workflow_run_id"}
	if got := keys(list[0]); !slices.Equal(got, wantKeys) {
		t.Fatalf("task keys %v, want %v", got, wantKeys)
	}
	if _, ok := list[0]["id"].(float64); !ok || list[0]["kind"] != "shell" || list[2]["kind"] != "mail.send" || list[0]["group"] != "g" {
		t.Fatalf("task list rows: %v", list)
	}
	var detail map[string]any
	if err := json.Unmarshal([]byte(run(0, "task", "show", "1", "--json")), &detail); err != nil {
		t.Fatal(err)
	}
	if got := keys(detail); !slices.Equal(got, []string{"attempts", "task"}) {
		t.Fatalf("task show keys %v", got)
	}
	checkModel(t, "task show", detail)
	if jq, err := exec.LookPath("jq"); err == nil {
		cmd := exec.Command(jq, "-e", ".[0].submitted_at | fromdateiso8601 > 0")
		cmd.Stdin = strings.NewReader(run(0, "task", "list", "--json"))
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("jq fromdateiso8601 on submitted_at: %v %s", err, out)
		}
	}

	// Cancel: two tasks, one unknown id (exit 1 naming it), then again (already canceled).
	out := run(1, "task", "cancel", "1", "2", "999")
	if !strings.Contains(out, "task 1 canceled\ntask 2 canceled\n") || !strings.Contains(out, "task 999 not found") {
		t.Fatalf("task cancel: %q", out)
	}
	if out := run(0, "task", "cancel", "1"); out != "task 1 already canceled\n" {
		t.Fatalf("cancel again: %q", out)
	}
	run(1, "task", "cancel")
	run(1, "task", "cancel", "x")

	var groups []map[string]any
	if err := json.Unmarshal([]byte(run(0, "group", "list", "--json")), &groups); err != nil || len(groups) != 1 {
		t.Fatalf("group list --json: %v %v", err, groups)
	}
	checkModel(t, "group list", groups)
	if groups[0]["name"] != "g" || groups[0]["waiting_tasks"] != float64(1) || groups[0]["paused"] != false || groups[0]["description"] != "demo" {
		t.Fatalf("group: %v", groups[0])
	}
	if out := run(0, "group", "show", "g"); !strings.HasPrefix(out, "group g  paused false  live workers 0  waiting tasks 1") {
		t.Fatalf("group show: %q", out)
	}
	if out := run(1, "group", "show", "nope"); !strings.Contains(out, `group "nope" not found`) {
		t.Fatalf("group show nope: %q", out)
	}
	for _, args := range [][]string{{"worker", "list", "--json", "--all"}, {"failover", "list", "--json"}} {
		var v []any
		if err := json.Unmarshal([]byte(run(0, args...)), &v); err != nil {
			t.Fatalf("%v: %v", args, err)
		}
	}

	// Tokens: shown once, stored hashed, revocable; each change audited.
	run(1, "token", "create", "--name", "ci", "--scope", "admin")
	tok := strings.SplitN(run(0, "token", "create", "--name", "ci", "--scope", "read"), "\n", 2)[0]
	if !strings.HasPrefix(tok, "baton_") || len(tok) < 40 {
		t.Fatalf("token %q", tok)
	}
	if out := run(0, "token", "list"); strings.Contains(out, tok) || !strings.Contains(out, "ci") {
		t.Fatalf("token list shows the token or misses it: %q", out)
	}
	run(0, "token", "revoke", "1")
	run(1, "token", "revoke", "1")
	var actions string
	if err := pool.QueryRow(t.Context(), `SELECT string_agg(action, ',' ORDER BY id) FROM baton.audit_log`).Scan(&actions); err != nil {
		t.Fatal(err)
	}
	if actions != "group.create,task.cancel,task.cancel,token.create,token.revoke" {
		t.Fatalf("audit log: %s", actions)
	}
	var stored int
	if err := pool.QueryRow(t.Context(), `SELECT count(*) FROM baton.api_tokens WHERE token_sha256 = sha256(convert_to($1, 'UTF8'))`, tok).Scan(&stored); err != nil || stored != 1 {
		t.Fatalf("token not stored as its sha256: %d %v", stored, err)
	}
}
