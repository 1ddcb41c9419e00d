package cli

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/baton-scheduler/baton/batontest"
	"github.com/baton-scheduler/baton/internal/master"
)

func TestPruneCommand(t *testing.T) {
	t.Parallel()
	pool, dsn := srv.NewPool(t)
	env := map[string]string{"BATON_DATABASE_URL": dsn}
	q := func(sql string) int64 { t.Helper(); return batontest.Int64(t, pool, sql) }
	q("INSERT INTO worker_groups (name) VALUES ('g') RETURNING 1")
	q(`INSERT INTO tasks (group_name, kind, state, finished_at)
		SELECT 'g', 'noop', 'succeeded', now() - interval '40 days' FROM generate_series(1, 7) RETURNING 1`)
	q(`INSERT INTO tasks (group_name, kind, state, finished_at) VALUES ('g', 'noop', 'succeeded', now() - interval '2 days') RETURNING 1`)
	out, e, code := baton(t, env, "prune", "--batch", "3")
	if code != 0 || !strings.HasPrefix(out, "pruned 7 tasks") || !strings.Contains(out, "older than 30d") {
		t.Fatalf("prune: %q %q %d", out, e, code)
	}
	out, e, code = baton(t, env, "prune", "--retention", "1d", "--json")
	if code != 0 || strings.TrimSpace(out) != `{"failover_events":0,"master_sessions":0,"schedule_fires":0,"tasks":1,"worker_sessions":0}` {
		t.Fatalf("prune --retention 1d --json: %q %q %d", out, e, code)
	}
	for _, c := range []struct {
		args []string
		env  string
		want string
	}{
		{[]string{"prune", "--retention", "0"}, "", "keep everything"},
		{[]string{"prune", "--retention", "3x"}, "", "want whole days"},
		{[]string{"prune", "--retention", "1s"}, "", "shorter than a minute"},
		{[]string{"prune", "--batch", "0"}, "", "outside 1..100000"},
		{[]string{"prune", "extra"}, "", `unexpected argument "extra"`},
		{[]string{"prune"}, "-2d", "BATON_RETENTION"},
	} {
		env := map[string]string{"BATON_DATABASE_URL": dsn, "BATON_RETENTION": c.env}
		if _, e, code := baton(t, env, c.args...); code == 0 || !strings.Contains(e, c.want) {
			t.Errorf("%v (BATON_RETENTION=%q): %q %d, want error containing %q", c.args, c.env, e, code, c.want)
		}
	}
	if n := batontest.Int64(t, pool, "SELECT count(*) FROM tasks"); n != 0 {
		t.Fatalf("%d tasks left", n)
	}
}

func TestParseRetention(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]time.Duration{
		"30d": 30 * 24 * time.Hour, "720h": 720 * time.Hour, "0": master.RetentionForever, "0d": master.RetentionForever,
		"0s": master.RetentionForever, " 2d ": 48 * time.Hour,
	} {
		if got, err := parseRetention(in); err != nil || got != want {
			t.Errorf("parseRetention(%q) = %s, %v; want %s", in, got, err, want)
		}
	}
	for _, in := range []string{"", "d", "-1d", "1.5d", "-5h", "99999999d", "abc"} {
		if _, err := parseRetention(in); err == nil {
			t.Errorf("parseRetention(%q) accepted", in)
		}
	}
}

// The master's --max-failovers and --retention reach its config (and their
// environment variables), and bad values are refused before anything starts.
func TestMasterRetentionFlags(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		args []string
		env  map[string]string
		want string
	}{
		{[]string{"--max-failovers", "0"}, nil, "max failovers 0 is outside 1..1000"},
		{nil, map[string]string{"BATON_MAX_FAILOVERS": "x"}, "BATON_MAX_FAILOVERS"},
		{[]string{"--retention", "10s"}, nil, "shorter than a minute"},
		{[]string{"--retention", "soon"}, nil, "want whole days"},
		{nil, map[string]string{"BATON_RETENTION": "-3d"}, "BATON_RETENTION"},
		{nil, map[string]string{"BATON_CRASH_DETECT_AFTER": "soon"}, "BATON_CRASH_DETECT_AFTER"},
		{[]string{"--crash-detect-after", "-1s"}, nil, "crash detection age -1s is negative"},
	} {
		env := map[string]string{"BATON_DATABASE_URL": "postgres://127.0.0.1:1/x"}
		for k, v := range c.env {
			env[k] = v
		}
		var errb strings.Builder
		code := MasterMain(context.Background(), c.args, func(k string) string { return env[k] }, &errb)
		if code == 0 || !strings.Contains(errb.String(), c.want) {
			t.Errorf("%v %v: %q %d, want error containing %q", c.args, c.env, errb.String(), code, c.want)
		}
	}
}

// Retention values come from flags and the environment: any input either parses
// to "keep everything" or a positive duration that prints back to the same value,
// or is refused with an error naming it.
func FuzzParseRetention(f *testing.F) {
	for _, s := range []string{"30d", "720h", "0", "0d", "0s", " 2d ", "", "d", "-1d", "1.5d", "-5h", "99999999d", "abc", "1h30m", "36500d", "9223372036854775807ns"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := parseRetention(s)
		if err != nil {
			if !strings.Contains(err.Error(), "retention") {
				t.Fatalf("error %q does not name the setting", err)
			}
			return
		}
		if d != master.RetentionForever && d <= 0 {
			t.Fatalf("parseRetention(%q) = %s", s, d)
		}
		back, err := parseRetention(formatRetention(d))
		if d == master.RetentionForever {
			back, err = parseRetention("0")
		}
		if err != nil || back != d {
			t.Fatalf("parseRetention(%q) = %s prints as %q which parses to %s, %v", s, d, formatRetention(d), back, err)
		}
	})
}
