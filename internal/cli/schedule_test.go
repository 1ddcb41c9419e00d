package cli

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/baton-scheduler/baton/batontest"
)

func TestScheduleCLI(t *testing.T) {
	t.Parallel()
	pool, dsn := srv.NewPool(t)
	env := map[string]string{"BATON_DATABASE_URL": dsn}
	batontest.NewGroup(t, pool, &batontest.GroupOpts{Name: batontest.Ptr("default")})
	example := filepath.Join("..", "..", "examples", "workflows", "nightly-report.yaml")
	if _, e, code := baton(t, env, "workflow", "apply", "-f", example); code != 0 {
		t.Fatalf("apply: %q", e)
	}
	must := func(args ...string) string {
		t.Helper()
		out, e, code := baton(t, env, args...)
		if code != 0 {
			t.Fatalf("%q: %q %d", args, e, code)
		}
		return out
	}
	out := must("schedule", "create", "nightly", "--workflow", "nightly-report", "--cron", "30 2 * * *", "--zone", "America/New_York",
		"--param", "day=2027-03-14", "--start", "2027-03-12", "--end", "2027-03-18")
	if !strings.Contains(out, "calendar 30 2 * * * in America/New_York  dst gap shift, fold first") {
		t.Fatalf("create: %q", out)
	}
	// The spring-forward night shows in preview: 02:30 does not exist on 8 March.
	out = must("schedule", "preview", "nightly", "-n", "5")
	for _, want := range []string{"2027-03-13 02:30:00 EST -05:00 Sat", "2027-03-14 03:30:00 EDT -04:00 Sun  2027-03-14 07:30:00Z  daylight saving: 02:30 does not exist",
		"2027-03-15 02:30:00 EDT -04:00 Mon  2027-03-15 06:30:00Z"} {
		if !strings.Contains(out, want) {
			t.Fatalf("preview lacks %q:\n%s", want, out)
		}
	}
	out = must("schedule", "update", "nightly", "--dst-gap", "skip", "--overlap", "buffer_one")
	if !strings.Contains(out, "dst gap skip") || !strings.Contains(out, "overlap buffer_one") {
		t.Fatalf("update: %q", out)
	}
	if out = must("schedule", "preview", "nightly", "-n", "4"); !strings.Contains(out, "skipped (dst_gap)") {
		t.Fatalf("preview after update:\n%s", out)
	}
	if out = must("schedule", "list"); !strings.Contains(out, "nightly") || !strings.Contains(out, "America/New_York") {
		t.Fatalf("list: %q", out)
	}
	must("schedule", "pause", "nightly", "--reason", "maintenance")
	if out = must("schedule", "show", "nightly"); !strings.Contains(out, "paused: maintenance") {
		t.Fatalf("show paused: %q", out)
	}
	must("schedule", "resume", "nightly")
	if out = must("schedule", "show", "nightly", "--json"); !strings.Contains(out, `"paused":false`) {
		t.Fatalf("show --json: %q", out)
	}
	// A manual run of a logical time, through the ledger's key: the same time
	// again is refused while it runs.
	out = must("schedule", "trigger", "nightly", "--at", "2027-03-13T07:30:00Z", "--json")
	if !strings.Contains(out, `"nominal_time":"2027-03-13T07:30:00Z"`) || !strings.Contains(out, `"run_id":`) {
		t.Fatalf("trigger: %q", out)
	}
	if _, e, code := baton(t, env, "schedule", "trigger", "nightly", "--at", "2027-03-13T07:30:00Z"); code != 1 || !strings.Contains(e, "is running") {
		t.Fatalf("second trigger of a running time: exit %d, %q", code, e)
	}
	// Backfill: the dry run stores nothing; the real one is shown with its progress.
	out = must("backfill", "create", "nightly-report", "--schedule", "nightly", "--from", "2026-02-01", "--to", "2026-02-10", "--parallel", "3", "--dry-run")
	if !strings.Contains(out, "dry run: 9 logical times, 9 would run, 0 would be skipped; nothing stored") {
		t.Fatalf("dry run: %q", out)
	}
	if n := batontest.Int64(t, pool, "SELECT count(*) FROM backfills"); n != 0 {
		t.Fatal("dry run stored a backfill")
	}
	out = must("backfill", "create", "nightly-report", "--schedule", "nightly", "--from", "2026-02-01", "--to", "2026-02-10", "--parallel", "3", "--json")
	id := jsonInt(t, out, "id")
	if out = must("backfill", "show", id); !strings.Contains(out, "9 logical times: 0 started") || !strings.Contains(out, "parallel 3") {
		t.Fatalf("backfill show: %q", out)
	}
	if out = must("backfill", "pause", id); !strings.Contains(out, "paused") {
		t.Fatalf("backfill pause: %q", out)
	}
	must("backfill", "resume", id)
	if out = must("backfill", "cancel", id); !strings.Contains(out, "canceled") {
		t.Fatalf("backfill cancel: %q", out)
	}
	if _, e, code := baton(t, env, "backfill", "resume", id); code != 1 || !strings.Contains(e, "is canceled") {
		t.Fatalf("resume canceled: %q %d", e, code)
	}
	// A ledger row (a skipped fire) for show --json to print.
	batontest.Int64(t, pool, `INSERT INTO schedule_fires (schedule_id, workflow_id, nominal_time, outcome, reason, recorded_at)
		SELECT s.id, s.workflow_id, '2027-03-13T07:30:00.123Z', 'skipped', 'overlap', now() FROM schedules s WHERE s.name = 'nightly' RETURNING 1`)
	for _, args := range [][]string{{"schedule", "list", "--json"}, {"schedule", "show", "nightly", "--json"}, {"schedule", "preview", "nightly", "--n", "3", "--json"},
		{"backfill", "list", "--json"}, {"backfill", "show", id, "--json"},
		{"backfill", "create", "nightly-report", "--schedule", "nightly", "--from", "2026-02-01", "--to", "2026-02-03", "--dry-run", "--json"}} {
		checkJSON(t, strings.Join(args, " "), must(args...))
	}
	if out = must("schedule", "show", "nightly", "--json"); !strings.Contains(out, `"fires":[{"id":`) || !strings.Contains(out, `"nominal":"2027-03-13T07:30:00Z","source":"schedule","backfill_id":null,"outcome":"skipped","reason":"overlap"`) || !strings.Contains(out, `"schedule":{"id":`) {
		t.Fatalf("schedule show --json: %q", out)
	}
	must("schedule", "delete", "nightly")
	if _, e, code := baton(t, env, "schedule", "show", "nightly"); code != 1 || !strings.Contains(e, "not found: schedule nightly") {
		t.Fatalf("show deleted: %q %d", e, code)
	}
}
