package cli

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/baton-scheduler/baton/batontest"
)

// The workflow and run commands on the example workflow: apply (twice: the
// second stores nothing), a refused definition, start, show, list, cancel.
func TestWorkflowCLI(t *testing.T) {
	t.Parallel()
	pool, dsn := srv.NewPool(t)
	env := map[string]string{"BATON_DATABASE_URL": dsn}
	example := filepath.Join("..", "..", "examples", "workflows", "nightly-report.yaml")
	if _, e, code := baton(t, env, "workflow", "apply", "-f", example); code != 1 || !strings.Contains(e, `steps[0] (extract-orders).group: unknown worker group "default"`) {
		t.Fatalf("apply before the group exists: %q %d", e, code)
	}
	batontest.NewGroup(t, pool, &batontest.GroupOpts{Name: batontest.Ptr("default")})
	if out, e, code := baton(t, env, "workflow", "apply", "-f", example); code != 0 || out != "workflow nightly-report: stored version 1\n" {
		t.Fatalf("apply: %q %q %d", out, e, code)
	}
	if out, _, code := baton(t, env, "workflow", "apply", "-f", example); code != 0 || out != "workflow nightly-report: unchanged (version 1)\n" {
		t.Fatalf("apply again: %q %d", out, code)
	}
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(bad, []byte("name: bad\nsteps:\n- {name: a, group: default, shell: 'true', depends_on: [b]}\n- {name: b, group: default, shell: 'true', depends_on: [a]}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, e, code := baton(t, env, "workflow", "apply", "-f", bad); code != 1 || !strings.Contains(e, "steps: cycle: a -> b -> a") {
		t.Fatalf("apply a cycle: %q %d", e, code)
	}
	if _, e, code := baton(t, env, "run", "start", "nightly-report", "--param", "nope=1"); code != 1 || !strings.Contains(e, `params.nope: unknown parameter "nope"`) {
		t.Fatalf("start with an unknown parameter: %q %d", e, code)
	}
	out, e, code := baton(t, env, "run", "start", "nightly-report", "--param", "day=2026-12-05", "--json")
	if code != 0 {
		t.Fatalf("start: %q %d", e, code)
	}
	runID := jsonInt(t, out, "run_id")
	if out, _, code := baton(t, env, "run", "show", runID); code != 0 || !strings.Contains(out, "extract-orders   queued") || !strings.Contains(out, "join             pending") {
		t.Fatalf("show: %q %d", out, code)
	}
	if out, _, code := baton(t, env, "run", "list"); code != 0 || !strings.Contains(out, "nightly-report") || !strings.Contains(out, "running") {
		t.Fatalf("list: %q %d", out, code)
	}
	if out, e, code := baton(t, env, "run", "cancel", runID); code != 0 || out != "run "+runID+": canceled\n" {
		t.Fatalf("cancel: %q %q %d", out, e, code)
	}
	if _, e, code := baton(t, env, "run", "pause", runID); code != 1 || !strings.Contains(e, "not running") {
		t.Fatalf("pause of a canceled run: %q %d", e, code)
	}
	if out, _, code := baton(t, env, "run", "show", runID, "--json"); code != 0 || !strings.Contains(out, `"state":"canceled"`) {
		t.Fatalf("show --json: %q %d", out, code)
	}
	// Every --json answer is the apimodel model: snake_case keys, times to the second.
	for _, args := range [][]string{{"workflow", "list", "--json"}, {"run", "list", "--json"}, {"run", "show", runID, "--json"},
		{"workflow", "apply", "--f", example, "--json"}, {"workflow", "apply", "--file=" + example, "--json"}} {
		out, e, code := baton(t, env, args...)
		if code != 0 {
			t.Fatalf("%q: %q %d", args, e, code)
		}
		checkJSON(t, strings.Join(args, " "), out)
	}
	if out, _, _ := baton(t, env, "workflow", "list", "--json"); !strings.Contains(out, `"latest_version":1`) {
		t.Fatalf("workflow list --json: %q", out)
	}
}

// checkJSON decodes out and checks it is the model (checkModel).
func checkJSON(t *testing.T, where, out string) {
	t.Helper()
	var v any
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("%s: not JSON: %v: %q", where, err, out)
	}
	checkModel(t, where, v)
}

func jsonInt(t *testing.T, s, key string) string {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		t.Fatalf("%q: %v", s, err)
	}
	return fmt.Sprint(m[key])
}
