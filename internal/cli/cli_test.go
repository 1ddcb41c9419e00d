package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/baton-scheduler/baton/batontest"
	"github.com/baton-scheduler/baton/internal/store"
	"github.com/baton-scheduler/baton/migrations"
)

var srv *batontest.Server

func TestMain(m *testing.M) {
	os.Exit(batontest.MainNoLeaks(m, func(s *batontest.Server) { srv = s }))
}

func baton(t *testing.T, env map[string]string, args ...string) (string, string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	code := BatonMain(context.Background(), args, func(k string) string { return env[k] }, &out, &errb)
	return out.String(), errb.String(), code
}

// batonMigrations lists the embedded migration files, in version order.
func batonMigrations(t *testing.T) []string {
	t.Helper()
	names, err := fs.Glob(migrations.FS, "*.sql")
	if err != nil || len(names) == 0 {
		t.Fatalf("embedded migrations: %v, %v", names, err)
	}
	return names
}

func TestCLI(t *testing.T) {
	t.Parallel()
	dsn := srv.NewEmptyDatabase(t)
	env := map[string]string{"BATON_DATABASE_URL": dsn}
	// Version numbers are reserved per change, so the latest is the last
	// file's number, not the count of files.
	names := batonMigrations(t)
	num, _, _ := strings.Cut(names[len(names)-1], "_")
	latestN, err := strconv.Atoi(num)
	if err != nil {
		t.Fatal(err)
	}
	latest := fmt.Sprint(latestN)
	if out, e, code := baton(t, env, "migrate", "up"); code != 0 || !strings.Contains(out, "schema at version "+latest+"\n") {
		t.Fatalf("migrate up: %q %q %d, want version %s", out, e, code, latest)
	}
	if out, _, code := baton(t, env, "migrate", "version"); code != 0 || !strings.HasPrefix(out, latest+" ") {
		t.Fatalf("migrate version: %q, want %s", out, latest)
	}
	if out, _, code := baton(t, env, "migrate", "version", "--json"); code != 0 || out != `{"version":`+latest+`,"latest":`+latest+"}\n" {
		t.Fatalf("migrate version --json: %q, want %s", out, latest)
	}
	mout, _, mcode := baton(t, env, "migrate", "status", "--json")
	var migs []map[string]any
	if err := json.Unmarshal([]byte(mout), &migs); mcode != 0 || err != nil || len(migs) != len(names) || migs[0]["applied"] != true || migs[0]["applied_at"] == nil || migs[0]["file"] != names[0] {
		t.Fatalf("migrate status --json: %d %v %q", mcode, err, mout)
	}
	checkModel(t, "migrate status", migs)
	if _, _, code := baton(t, env, "task", "--help"); code != 0 {
		t.Fatal("task --help failed")
	}
	// Tasks need a group; workers create theirs on registration.
	if _, _, code := baton(t, env, "task", "submit", "--group", "g", "--shell", "true"); code != 1 {
		t.Fatal("submit to an unknown group succeeded")
	}
	_, e, _ := baton(t, env, "task", "submit", "--group", "g", "--shell", "true")
	if !strings.Contains(e, `unknown worker group "g"`) {
		t.Fatalf("unknown group error: %q", e)
	}
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"task", "submit", "--group", "g", "--type", "x", "--payload", "{bad"}, "payload is not valid JSON"},
		{[]string{"task", "submit", "--group", "g", "--type", "x", "--payload", `"` + strings.Repeat("a", 1<<20) + `"`}, "the limit is 1048576"},
		{[]string{"task", "submit", "--group", "g"}, "give --shell CMD or --type T"},
		{[]string{"task", "submit", "--shell", "a", "--type", "b"}, "not both"},
		{[]string{"task", "show", "abc"}, `task id "abc" is not a number`},
		{[]string{"task", "show", "999"}, "task 999 not found"},
		{[]string{"task", "frob"}, `unknown task subcommand "frob"`},
		{[]string{"frob"}, `unknown command "frob"`},
		{[]string{"task", "submit", "--group", "g", "--shell", "echo", "hi"}, `unexpected argument "hi"`},
		{[]string{"task", "list", "--limit", "-1"}, "--limit -1 is outside 1..10000"},
		{[]string{"task", "list", "--state", "bogus"}, `unknown state "bogus"`},
	}
	for _, tc := range cases {
		_, e, code := baton(t, env, tc.args...)
		if code != 1 || !strings.Contains(e, tc.want) {
			t.Errorf("baton %v: code %d stderr %q, want %q", tc.args[:2], code, e, tc.want)
		}
	}
	// With a group, submit prints the id and list/show find it.
	c, err := newPoolFor(dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	batontest.NewGroup(t, c, &batontest.GroupOpts{Name: batontest.Ptr("g")})
	out, e, code := baton(t, env, "task", "submit", "--group", "g", "--shell", "echo hi", "--json", "--priority", "5", "--max-retries", "2", "--timeout", "30s")
	if code != 0 {
		t.Fatalf("submit: %s", e)
	}
	var sub struct{ ID int64 }
	if err := json.Unmarshal([]byte(out), &sub); err != nil || sub.ID == 0 {
		t.Fatalf("submit --json output %q", out)
	}
	out, _, _ = baton(t, env, "task", "list", "--json", "--state", "queued")
	var tasks []map[string]any
	if err := json.Unmarshal([]byte(out), &tasks); err != nil || len(tasks) != 1 || tasks[0]["priority"] != float64(5) || tasks[0]["timeout_ms"] != float64(30000) {
		t.Fatalf("task list --json: %q", out)
	}
	out, _, code = baton(t, env, "task", "show", strconv.FormatInt(sub.ID, 10), "--json")
	if code != 0 || !strings.Contains(out, `"attempts":[]`) {
		t.Fatalf("task show ID --json: %q", out)
	}
	out, _, code = baton(t, env, "task", "show", strconv.FormatInt(sub.ID, 10))
	if code != 0 || !strings.Contains(out, "state queued") || !strings.Contains(out, "echo hi") {
		t.Fatalf("task show: %q", out)
	}
	for _, args := range [][]string{{"worker", "list", "--all"}, {"failover", "list"}, {"task", "list"}, {"migrate", "status"}} {
		if out, e, code := baton(t, env, args...); code != 0 || out == "" {
			t.Errorf("baton %v: %d %q %q", args, code, out, e)
		}
	}
	// A wrong DSN gets a one-line error naming the problem.
	_, e, code = baton(t, map[string]string{"BATON_DATABASE_URL": "postgres://x:y@127.0.0.1:1/db?connect_timeout=2"}, "task", "list")
	if code != 1 || !strings.Contains(e, "unreachable") || strings.Count(e, "\n") != 1 {
		t.Fatalf("unreachable DSN: %q", e)
	}
}

func TestDaemonFlagErrors(t *testing.T) {
	t.Parallel()
	var errb bytes.Buffer
	env := func(k string) string {
		if k == "BATON_WORKER_TIMEOUT" {
			return "soon"
		}
		return ""
	}
	if code := MasterMain(context.Background(), nil, env, &errb); code != 1 || !strings.Contains(errb.String(), `BATON_WORKER_TIMEOUT="soon"`) {
		t.Fatalf("bad env duration: %d %q", code, errb.String())
	}
	errb.Reset()
	if code := WorkerMain(context.Background(), []string{"--slots", "0", "--database-url", srv.NewDatabase(t)}, func(string) string { return "" }, nil, &errb); code != 1 || !strings.Contains(errb.String(), "slots 0 is outside") {
		t.Fatalf("bad slots: %d %q", code, errb.String())
	}
	errb.Reset()
	if code := WorkerMain(context.Background(), []string{"--group", "no spaces", "--database-url", "postgres://x@127.0.0.1:1/x"}, func(string) string { return "" }, nil, &errb); code != 1 || !strings.Contains(errb.String(), `group "no spaces" must be`) {
		t.Fatalf("bad group: %d %q", code, errb.String())
	}
	errb.Reset()
	if code := WorkerMain(context.Background(), nil, func(string) string { return "" }, nil, &errb); code != 1 || !strings.Contains(errb.String(), "database URL is empty") {
		t.Fatalf("no DSN: %d %q", code, errb.String())
	}
}

func newPoolFor(dsn string) (*pgxpool.Pool, error) { return store.Open(context.Background(), dsn, 2) }
