package cli

import (
	"bytes"
	"context"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/baton-scheduler/baton/batontest"
)

// argv turns one fuzz string into command-line arguments: NUL separates them
// (no argument can contain NUL, and the fuzzer may put spaces or anything else
// inside one).
func argv(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, "\x00")
}

// reportsError checks the shape of a failed run: exit code 1 and, on stderr, a
// line "prog: <reason>" whose reason is not empty.
func reportsError(t *testing.T, prog string, code int, stderr string) {
	t.Helper()
	if code != 1 {
		t.Fatalf("exit code %d, want 0 or 1", code)
	}
	for _, line := range strings.Split(stderr, "\n") {
		if reason, ok := strings.CutPrefix(line, prog+": "); ok && strings.TrimSpace(reason) != "" {
			return
		}
	}
	t.Fatalf("failed without a %q line naming the problem; stderr: %.500q", prog+": ", stderr)
}

// FuzzBatonArgs: whatever arguments the baton CLI gets, it does not panic; it
// exits 0 or 1; a failure prints "baton: <reason>"; and, checked on a real
// database, a failed command changes no stored row and only a successful
// `task submit` adds one (task with its dispatch row).
func FuzzBatonArgs(f *testing.F) {
	pool, dsn := srv.NewPool(f)
	batontest.NewGroup(f, pool, nil)
	batontest.NewTask(f, pool, &batontest.TaskOpts{State: batontest.Ptr("running")})
	for _, seed := range [][]string{
		{"task", "submit", "--group", "g", "--shell", "echo hi"},
		{"task", "submit", "--group", "g", "--type", "x", "--payload", "{bad"},
		// Refused by validation although Postgres would store it: the refusal
		// must come before anything is written.
		{"task", "submit", "--group", "g", "--type", "shell", "--payload", `{"command":"true","env":5}`},
		{"task", "submit", "--group", "g", "--type", "shell", "--payload", `{"cmd":"true"}`},
		{"task", "submit", "--group", "nope", "--shell", "true"},
		{"task", "submit", "--group", "g", "--shell", "echo", "hi"},
		{"task", "submit", "--group", "g", "--type", "noop", "--payload", `{"a":"\u0000"}`, "--priority", "5", "--timeout", "-3s"},
		{"task", "submit", "--shell", "a", "--type", "b"},
		{"task", "submit", "--group", "g", "--type", "noop", "--payload", `{}`, "--json", "--max-retries", "101"},
		{"task", "list", "--state", "bogus"},
		{"task", "list", "--limit", "-1", "--json"},
		{"task", "show", "1", "--json"},
		{"task", "show", "abc"},
		{"task", "show", "99999999999999999999"},
		{"task", "frob"},
		{"worker", "list", "--all", "--group", "g"},
		{"failover", "list", "--limit", "0"},
		{"migrate", "version"},
		{"migrate", "status", "--to", "x"},
		{"frob"},
		{"task", "--database-url", "postgres://%zz"},
		{"task", "list", "--database-url", ""},
		{"task", "list", "--no-such-flag"},
		{"-h"},
		// cobra's own commands and parsing: help, completion, suggestions,
		// flags between arguments, --flag=value, the -- terminator.
		{"help", "task", "list"},
		{"completion", "bash"},
		{"__complete", "task", "l"},
		{"task", "lsit"},
		{"task", "show"},
		{"task", "show", "--json", "1", "2"},
		{"task", "list", "--limit=5", "--json=false"},
		{"task", "submit", "--group", "g", "--", "--shell", "true"},
		{"schedule", "preview", "x", "-n"},
	} {
		f.Add(strings.Join(seed, "\x00"))
	}
	env := func(k string) string {
		if k == "BATON_DATABASE_URL" {
			return dsn
		}
		return ""
	}
	f.Fuzz(func(t *testing.T, s string) {
		args := argv(s)
		for _, a := range args {
			// migrate up/down rewrite the schema on purpose; --payload @file reads
			// whatever the host has (/dev/stdin would block): neither is a parser.
			if a == "up" || a == "down" || strings.HasPrefix(a, "@") || strings.Contains(a, "=@") {
				return // changes the schema or reads a host file: not a parser case
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		before := batontest.TakeSnapshot(t, pool)
		tasks := batontest.Int64(t, pool, "SELECT count(*) FROM tasks")
		var out, errb bytes.Buffer
		code := BatonMain(ctx, args, env, &out, &errb)
		after := batontest.TakeSnapshot(t, pool)
		if code != 0 {
			reportsError(t, "baton", code, errb.String())
			if diff := before.Diff(after); diff != "" {
				t.Fatalf("baton %q failed but changed stored rows: %s", args, diff)
			}
			return
		}
		diff := before.Diff(after)
		if diff == "" {
			return // a read, or -h
		}
		submitted := len(args) >= 2 && args[0] == "task" && args[1] == "submit"
		n := batontest.Int64(t, pool, "SELECT count(*) FROM tasks")
		if changed := before.Changed(after); !submitted || n != tasks+1 || !slices.Equal(changed, []string{"baton.tasks"}) {
			t.Fatalf("baton %q succeeded, changed stored rows (%s) and added %d tasks; only task submit may, adding 1 task and changing no other table", args, diff, n-tasks)
		}
	})
}

// FuzzDaemonConfig: flags and environment of baton-master and baton-worker in
// any combination never panic, and never get past configuration unless valid:
// with a context that is already canceled no daemon can start, so every run
// must end in exit code 1 with "baton-master: <reason>" or "baton-worker:
// <reason>", or 0 for -h.
func FuzzDaemonConfig(f *testing.F) {
	type seed struct {
		worker                bool
		args                  []string
		hb, sf, wt, slots, db string
	}
	for _, s := range []seed{
		{false, nil, "", "", "", "", "postgres://x@127.0.0.1:1/x"},
		{true, []string{"--group", "etl", "--slots", "8"}, "", "", "", "", "postgres://x@127.0.0.1:1/x"},
		{true, []string{"--slots", "-1", "--self-fence-after", "6s"}, "1s", "", "", "", ""},
		{true, []string{"--group", "etl", "extra", "--slots", "8"}, "", "", "", "", "postgres://x@127.0.0.1:1/x"},
		{false, []string{"--worker-timeout", "1s"}, "1500000h", "", "soon", "", "postgres://x@127.0.0.1:1/x"},
		{true, nil, "1500000h", "4s", "", "x", "host=/nonexistent"},
		{false, []string{"--no-such-flag"}, "", "", "", "", ""},
		{true, []string{"-h"}, "", "", "", "", ""},
		{false, []string{"--sweep-interval", "0", "--log-level", "loud", "--log-format", "xml"}, "", "", "", "", "postgres://%zz"},
	} {
		f.Add(s.worker, strings.Join(s.args, "\x00"), s.hb, s.sf, s.wt, s.slots, s.db)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	f.Fuzz(func(t *testing.T, worker bool, args, hb, sf, wt, slots, dsn string) {
		vars := map[string]string{"BATON_HEARTBEAT_INTERVAL": hb, "BATON_SELF_FENCE_AFTER": sf,
			"BATON_WORKER_TIMEOUT": wt, "BATON_SLOTS": slots, "BATON_DATABASE_URL": dsn}
		env := func(k string) string { return vars[k] }
		var errb bytes.Buffer
		prog := "baton-master"
		var code int
		if worker {
			prog = "baton-worker"
			code = WorkerMain(ctx, argv(args), env, BuiltinHandlers(), &errb)
		} else {
			code = MasterMain(ctx, argv(args), env, &errb)
		}
		if code == 0 {
			if !strings.Contains(errb.String(), "Usage of "+prog) {
				t.Fatalf("%s %q ran with a canceled context and exited 0 without -h: %.300q", prog, argv(args), errb.String())
			}
			return
		}
		reportsError(t, prog, code, errb.String())
	})
}

// FuzzEnvDuration: a duration from the environment either parses as Go's
// time.ParseDuration does, or gets an error naming the variable and quoting the
// value; envInt likewise for integers.
func FuzzEnvDuration(f *testing.F) {
	for _, s := range []string{"1s", "500ms", "-3s", "1.5h", "soon", "9999999999h", "1e3s", "0", "", "+.5s", "1µs", "3 s"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		env := func(string) string { return v }
		d, err := envDuration(env, "BATON_X", 7*time.Second)
		if v == "" {
			if err != nil || d != 7*time.Second {
				t.Fatalf("empty value: %s, %v; want the default", d, err)
			}
			return
		}
		want, werr := time.ParseDuration(v)
		if (err == nil) != (werr == nil) || (err == nil && d != want) {
			t.Fatalf("envDuration(%q) = %s, %v; time.ParseDuration = %s, %v", v, d, err, want, werr)
		}
		if err != nil && !strings.Contains(err.Error(), "BATON_X="+strconv.Quote(v)) {
			t.Fatalf("error %q does not name BATON_X and the problem", err)
		}
		if _, err := envInt(env, "BATON_N", 4); err != nil && !strings.Contains(err.Error(), "BATON_N=") {
			t.Fatalf("envInt error %q does not name BATON_N", err)
		}
	})
}
