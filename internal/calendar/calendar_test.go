package calendar

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func mustNew(t *testing.T, s Spec) *Calendar {
	t.Helper()
	c, err := New(s)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func utc(s string) time.Time {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		panic(err)
	}
	return t.UTC()
}

// fires lists the fire times in [from, to) as "UTC-instant kind".
func fires(c *Calendar, from, to time.Time) []string {
	var out []string
	t := from.Add(-time.Nanosecond)
	for {
		f, ok := c.Next(t)
		if !ok || !f.At.Before(to) {
			return out
		}
		s := f.At.Format(time.RFC3339)
		if f.Kind != "" {
			s += " " + f.Kind
		}
		out = append(out, s)
		t = f.At
	}
}

func TestDaylightSaving(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, zone, cron, gap, fold string
		from, to                    string
		want                        []string
	}{
		// New York, 2026-03-08: 02:00 EST -> 03:00 EDT; 02:30 does not exist.
		{"NewYork/gap/shift", "America/New_York", "30 2 * * *", "", "", "2026-03-07T00:00:00Z", "2026-03-10T00:00:00Z",
			[]string{"2026-03-07T07:30:00Z", "2026-03-08T07:30:00Z dst_gap_shifted", "2026-03-09T06:30:00Z"}},
		{"NewYork/gap/skip", "America/New_York", "30 2 * * *", GapSkip, "", "2026-03-07T00:00:00Z", "2026-03-10T00:00:00Z",
			[]string{"2026-03-07T07:30:00Z", "2026-03-08T07:30:00Z dst_gap", "2026-03-09T06:30:00Z"}},
		// A gap time shifted onto a real fire time merges with it (02:xx -> 03:xx).
		{"NewYork/gap/shift-merges", "America/New_York", "0 2,3 * * *", "", "", "2026-03-08T00:00:00Z", "2026-03-09T00:00:00Z",
			[]string{"2026-03-08T07:00:00Z"}},
		{"NewYork/gap/skip-merges", "America/New_York", "0 2,3 * * *", GapSkip, "", "2026-03-08T00:00:00Z", "2026-03-09T00:00:00Z",
			[]string{"2026-03-08T07:00:00Z"}},
		// New York, 2026-11-01: 02:00 EDT -> 01:00 EST; 01:30 occurs twice.
		{"NewYork/fold/first", "America/New_York", "30 1 * * *", "", "", "2026-10-31T00:00:00Z", "2026-11-03T00:00:00Z",
			[]string{"2026-10-31T05:30:00Z", "2026-11-01T05:30:00Z dst_fold_first", "2026-11-02T06:30:00Z"}},
		{"NewYork/fold/both", "America/New_York", "30 1 * * *", "", FoldBoth, "2026-10-31T00:00:00Z", "2026-11-03T00:00:00Z",
			[]string{"2026-10-31T05:30:00Z", "2026-11-01T05:30:00Z dst_fold_first", "2026-11-01T06:30:00Z dst_fold_second", "2026-11-02T06:30:00Z"}},
		// Every 30 minutes across the fold: the second 01:00 and 01:30 only with both.
		{"NewYork/fold/first/half-hourly", "America/New_York", "*/30 * * * *", "", "", "2026-11-01T04:00:00Z", "2026-11-01T08:00:00Z",
			[]string{"2026-11-01T04:00:00Z", "2026-11-01T04:30:00Z", "2026-11-01T05:00:00Z dst_fold_first", "2026-11-01T05:30:00Z dst_fold_first",
				"2026-11-01T07:00:00Z", "2026-11-01T07:30:00Z"}},
		{"NewYork/fold/both/half-hourly", "America/New_York", "*/30 * * * *", "", FoldBoth, "2026-11-01T04:00:00Z", "2026-11-01T08:00:00Z",
			[]string{"2026-11-01T04:00:00Z", "2026-11-01T04:30:00Z", "2026-11-01T05:00:00Z dst_fold_first", "2026-11-01T05:30:00Z dst_fold_first",
				"2026-11-01T06:00:00Z dst_fold_second", "2026-11-01T06:30:00Z dst_fold_second", "2026-11-01T07:00:00Z", "2026-11-01T07:30:00Z"}},
		// London, 2026-03-29: 01:00 GMT -> 02:00 BST; 01:15 does not exist.
		{"London/gap/shift", "Europe/London", "15 1 * * *", "", "", "2026-03-28T00:00:00Z", "2026-03-31T00:00:00Z",
			[]string{"2026-03-28T01:15:00Z", "2026-03-29T01:15:00Z dst_gap_shifted", "2026-03-30T00:15:00Z"}},
		{"London/gap/skip", "Europe/London", "15 1 * * *", GapSkip, "", "2026-03-28T00:00:00Z", "2026-03-31T00:00:00Z",
			[]string{"2026-03-28T01:15:00Z", "2026-03-29T01:15:00Z dst_gap", "2026-03-30T00:15:00Z"}},
		// London, 2026-10-25: 02:00 BST -> 01:00 GMT; 01:15 occurs twice.
		{"London/fold/first", "Europe/London", "15 1 * * *", "", "", "2026-10-24T00:00:00Z", "2026-10-27T00:00:00Z",
			[]string{"2026-10-24T00:15:00Z", "2026-10-25T00:15:00Z dst_fold_first", "2026-10-26T01:15:00Z"}},
		{"London/fold/both", "Europe/London", "15 1 * * *", "", FoldBoth, "2026-10-24T00:00:00Z", "2026-10-27T00:00:00Z",
			[]string{"2026-10-24T00:15:00Z", "2026-10-25T00:15:00Z dst_fold_first", "2026-10-25T01:15:00Z dst_fold_second", "2026-10-26T01:15:00Z"}},
		// Lord Howe, 2026-10-04: 02:00 +10:30 -> 02:30 +11, a 30-minute gap; 02:15 does not exist.
		{"LordHowe/gap/shift", "Australia/Lord_Howe", "15 2 * * *", "", "", "2026-10-02T00:00:00Z", "2026-10-05T00:00:00Z",
			[]string{"2026-10-02T15:45:00Z", "2026-10-03T15:45:00Z dst_gap_shifted", "2026-10-04T15:15:00Z"}},
		{"LordHowe/gap/skip", "Australia/Lord_Howe", "15 2 * * *", GapSkip, "", "2026-10-02T00:00:00Z", "2026-10-05T00:00:00Z",
			[]string{"2026-10-02T15:45:00Z", "2026-10-03T15:45:00Z dst_gap", "2026-10-04T15:15:00Z"}},
		// Lord Howe, 2026-04-05: 02:00 +11 -> 01:30 +10:30; 01:45 occurs twice, 30 minutes apart.
		{"LordHowe/fold/first", "Australia/Lord_Howe", "45 1 * * *", "", "", "2026-04-03T00:00:00Z", "2026-04-06T00:00:00Z",
			[]string{"2026-04-03T14:45:00Z", "2026-04-04T14:45:00Z dst_fold_first", "2026-04-05T15:15:00Z"}},
		{"LordHowe/fold/both", "Australia/Lord_Howe", "45 1 * * *", "", FoldBoth, "2026-04-03T00:00:00Z", "2026-04-06T00:00:00Z",
			[]string{"2026-04-03T14:45:00Z", "2026-04-04T14:45:00Z dst_fold_first", "2026-04-04T15:15:00Z dst_fold_second", "2026-04-05T15:15:00Z"}},
		// Descriptors.
		{"hourly", "UTC", "@hourly", "", "", "2026-01-01T00:00:00Z", "2026-01-01T03:00:00Z",
			[]string{"2026-01-01T00:00:00Z", "2026-01-01T01:00:00Z", "2026-01-01T02:00:00Z"}},
		{"weekly", "Europe/London", "@weekly", "", "", "2026-06-01T00:00:00Z", "2026-06-15T00:00:00Z",
			[]string{"2026-06-06T23:00:00Z", "2026-06-13T23:00:00Z"}},
		{"monthly", "UTC", "@monthly", "", "", "2026-01-15T00:00:00Z", "2026-04-01T00:00:01Z",
			[]string{"2026-02-01T00:00:00Z", "2026-03-01T00:00:00Z", "2026-04-01T00:00:00Z"}},
		{"yearly", "UTC", "@yearly", "", "", "2026-01-15T00:00:00Z", "2028-01-15T00:00:00Z",
			[]string{"2027-01-01T00:00:00Z", "2028-01-01T00:00:00Z"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := mustNew(t, Spec{Cron: tc.cron, Zone: tc.zone, Gap: tc.gap, Fold: tc.fold})
			got := fires(c, utc(tc.from), utc(tc.to))
			if strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Fatalf("got\n  %s\nwant\n  %s", strings.Join(got, "\n  "), strings.Join(tc.want, "\n  "))
			}
		})
	}
}

// Every minute through each transition: instants strictly increase, none is
// repeated, and the count is what the policies say.
func TestEveryMinuteAcrossTransitions(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		zone, gap, fold string
		from            string
		want            int
	}{
		{"America/New_York", GapShift, FoldFirst, "2026-03-08T05:00:00Z", 3 * 60},    // 01:00 EST .. 05:00 EDT: 02:xx shifted onto 03:xx (merged)
		{"America/New_York", GapSkip, FoldFirst, "2026-03-08T05:00:00Z", 3 * 60},     // merged too: the instant fires
		{"America/New_York", GapShift, FoldFirst, "2026-11-01T04:00:00Z", 3 * 60},    // 00:00 EDT .. 03:00 EST, second 01:xx left out
		{"America/New_York", GapShift, FoldBoth, "2026-11-01T04:00:00Z", 4 * 60},     // both: every instant of the 4 hours
		{"Australia/Lord_Howe", GapShift, FoldFirst, "2026-10-03T14:00:00Z", 4 * 60}, // 4 hours of real time
		{"Australia/Lord_Howe", GapShift, FoldFirst, "2026-04-04T13:00:00Z", 4*60 - 30},
		{"Australia/Lord_Howe", GapShift, FoldBoth, "2026-04-04T13:00:00Z", 4 * 60},
	} {
		c := mustNew(t, Spec{Cron: "* * * * *", Zone: tc.zone, Gap: tc.gap, Fold: tc.fold})
		from := utc(tc.from)
		got := fires(c, from, from.Add(4*time.Hour))
		seen := map[string]bool{}
		prev := ""
		for _, g := range got {
			at := strings.Fields(g)[0]
			if seen[at] || at <= prev {
				t.Fatalf("%s %s/%s: %s repeated or out of order", tc.zone, tc.gap, tc.fold, at)
			}
			seen[at], prev = true, at
		}
		if tc.zone == "America/New_York" && strings.HasPrefix(tc.from, "2026-03") {
			// 4 hours of real time from 00:00 EST: 01:00..04:59 wall minus the
			// missing hour's instants, which merged: 4*60 instants exist, all fire.
			tc.want = 4 * 60
		}
		if len(got) != tc.want {
			t.Errorf("%s %s/%s from %s: %d fire times, want %d", tc.zone, tc.gap, tc.fold, tc.from, len(got), tc.want)
		}
	}
}

func TestInterval(t *testing.T) {
	t.Parallel()
	anchor := utc("2026-03-08T06:10:00Z")
	c := mustNew(t, Spec{Interval: time.Hour, Anchor: anchor, Zone: "America/New_York"})
	got := fires(c, utc("2026-03-08T05:00:00Z"), utc("2026-03-08T09:00:00Z"))
	want := []string{"2026-03-08T06:10:00Z", "2026-03-08T07:10:00Z", "2026-03-08T08:10:00Z"} // real hours across the gap
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("got %v", got)
	}
	e := mustNew(t, Spec{Cron: "@every 90m", Anchor: anchor})
	if f, _ := e.Next(anchor); !f.At.Equal(anchor.Add(90 * time.Minute)) {
		t.Fatalf("@every: %s", f.At)
	}
}

func TestStartEnd(t *testing.T) {
	t.Parallel()
	c := mustNew(t, Spec{Cron: "@daily", Start: utc("2026-01-03T00:00:00Z"), End: utc("2026-01-05T00:00:00Z")})
	got := fires(c, utc("2026-01-01T00:00:00Z"), utc("2026-02-01T00:00:00Z"))
	if strings.Join(got, ",") != "2026-01-03T00:00:00Z,2026-01-04T00:00:00Z,2026-01-05T00:00:00Z" {
		t.Fatalf("got %v", got)
	}
}

func TestBadSpecs(t *testing.T) {
	t.Parallel()
	for name, tc := range map[string]struct {
		spec  Spec
		field string
		msg   string
	}{
		"six fields":   {Spec{Cron: "0 0 * * * *"}, "cron", "invalid cron expression"},
		"bad minute":   {Spec{Cron: "61 * * * *"}, "cron", "invalid cron expression"},
		"garbage":      {Spec{Cron: "every day"}, "cron", "invalid cron expression"},
		"tz prefix":    {Spec{Cron: "CRON_TZ=UTC 0 * * * *"}, "cron", "give the zone separately"},
		"bad every":    {Spec{Cron: "@every soon"}, "cron", "invalid @every duration"},
		"unknown zone": {Spec{Cron: "@daily", Zone: "Mars/Olympus"}, "zone", `unknown time zone "Mars/Olympus"`},
		"neither":      {Spec{}, "cron", "give a cron expression or an interval"},
		"both":         {Spec{Cron: "@daily", Interval: time.Hour}, "cron", "not both"},
		"tiny":         {Spec{Interval: time.Millisecond}, "interval", "shorter than"},
		"end<start":    {Spec{Cron: "@daily", Start: utc("2026-01-02T00:00:00Z"), End: utc("2026-01-01T00:00:00Z")}, "end", "before start"},
		"gap policy":   {Spec{Cron: "@daily", Gap: "later"}, "dst_gap", "unknown policy"},
		"fold policy":  {Spec{Cron: "@daily", Fold: "last"}, "dst_fold", "unknown policy"},
	} {
		_, err := New(tc.spec)
		var e *Error
		if err == nil || !errors.As(err, &e) || e.Field != tc.field || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%s: %v (want field %s, %q)", name, err, tc.field, tc.msg)
		}
	}
}

func TestJitter(t *testing.T) {
	t.Parallel()
	at := utc("2026-01-01T00:00:00Z")
	seen := map[time.Duration]bool{}
	for i := range 1000 {
		j := Jitter(int64(i), at, 30*time.Second)
		if j < 0 || j >= 30*time.Second {
			t.Fatalf("jitter %s out of [0, 30s)", j)
		}
		if j != Jitter(int64(i), at, 30*time.Second) {
			t.Fatal("jitter not deterministic")
		}
		seen[j/time.Second] = true
	}
	if len(seen) < 25 {
		t.Fatalf("jitter spread over %d seconds of 30", len(seen))
	}
	if Jitter(1, at, 0) != 0 {
		t.Fatal("no jitter configured")
	}
}

func FuzzNext(f *testing.F) {
	for _, s := range []string{"* * * * *", "30 2 * * *", "*/7 1-3 * * 0", "@weekly", "0 0 31 2 *"} {
		f.Add(s, int64(1772935200), "America/New_York")
	}
	f.Fuzz(func(t *testing.T, expr string, unix int64, zone string) {
		c, err := New(Spec{Cron: expr, Zone: zone, Fold: FoldBoth, Anchor: time.Unix(0, 0)})
		if err != nil {
			return
		}
		at := time.Unix(unix%(1<<33), 0)
		prev := at
		for range 5 {
			fire, ok := c.Next(prev)
			if !ok {
				return
			}
			if !fire.At.After(prev) {
				t.Fatalf("%q in %s: Next(%s) = %s, not after", expr, zone, prev, fire.At)
			}
			prev = fire.At
		}
	})
}
