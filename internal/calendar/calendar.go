// Package calendar computes the nominal fire times of a schedule: a 5-field
// cron expression (or @hourly, @daily, @weekly, @monthly, @yearly) read in an
// IANA time zone, or a fixed interval counted in real elapsed time.
//
// Cron expressions are matched against local wall time, and the mapping from a
// local wall time to an instant is done here, explicitly, for the two cases
// where it is not one-to-one:
//
//   - a wall time that does not exist (spring forward: 02:30 on the night New
//     York goes from 02:00 EST to 03:00 EDT) — policy GapShift (default) fires
//     it moved forward by the length of the gap (02:30 → 03:30 EDT; in
//     Lord Howe's 30-minute gap 02:15 → 02:45), GapSkip records it as skipped
//     (reason dst_gap) at that same instant;
//   - a wall time that occurs twice (fall back: 01:30 in New York on the night
//     it goes from 01:59:59 EDT back to 01:00 EST) — policy FoldFirst (default)
//     fires only its first occurrence, FoldBoth fires both.
//
// A shifted or skipped gap time that lands on an instant which is itself a fire
// time merges into that fire (an instant fires once). The cron field matching is
// robfig/cron's parser and its field search, run on wall time written as UTC, so
// it never sees a daylight-saving change.
package calendar

import (
	"errors"
	"fmt"
	"hash/fnv"
	"strings"
	"time"

	// Zones come with the binary: a minimal image has no /usr/share/zoneinfo.
	_ "time/tzdata"

	"github.com/robfig/cron/v3"
)

// Daylight-saving policies.
const (
	GapShift  = "shift"
	GapSkip   = "skip"
	FoldFirst = "first"
	FoldBoth  = "both"
)

// Kinds of fire times (Fire.Kind).
const (
	KindNormal     = ""
	KindGapShifted = "dst_gap_shifted"
	KindGapSkipped = "dst_gap"
	KindFoldFirst  = "dst_fold_first"
	KindFoldSecond = "dst_fold_second"
	MinInterval    = time.Second
	offsetReach    = 26 * time.Hour // beyond any UTC offset
)

// Spec is what a schedule's calendar is made of. Exactly one of Cron and
// Interval is set.
type Spec struct {
	Cron     string
	Interval time.Duration
	// Zone is an IANA zone name ("" is UTC). Cron only: an interval counts real
	// elapsed time and has no zone.
	Zone string
	// Anchor is the first instant of an interval schedule (its start, or when it
	// was created).
	Anchor time.Time
	// Start and End bound the fire times (zero: unbounded).
	Start, End time.Time
	Gap, Fold  string // "" takes GapShift and FoldFirst
}

// Calendar answers "what is the next fire time after t".
type Calendar struct {
	spec     Spec
	sched    *cron.SpecSchedule
	loc      *time.Location
	interval time.Duration
}

// Error is a problem with a Spec, naming the field.
type Error struct {
	Field, Msg string
}

func (e *Error) Error() string { return e.Field + ": " + e.Msg }

var parser = cron.NewParser(cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// New validates s and returns its calendar.
func New(s Spec) (*Calendar, error) {
	c := &Calendar{spec: s, loc: time.UTC}
	if s.Gap == "" {
		c.spec.Gap = GapShift
	}
	if s.Fold == "" {
		c.spec.Fold = FoldFirst
	}
	var errs []error
	if c.spec.Gap != GapShift && c.spec.Gap != GapSkip {
		errs = append(errs, &Error{"dst_gap", fmt.Sprintf("unknown policy %q (shift or skip)", s.Gap)})
	}
	if c.spec.Fold != FoldFirst && c.spec.Fold != FoldBoth {
		errs = append(errs, &Error{"dst_fold", fmt.Sprintf("unknown policy %q (first or both)", s.Fold)})
	}
	if s.Zone != "" {
		loc, err := LoadZone(s.Zone)
		if err != nil {
			errs = append(errs, err)
		} else {
			c.loc = loc
		}
	}
	expr := strings.TrimSpace(s.Cron)
	switch {
	case expr != "" && s.Interval != 0:
		errs = append(errs, &Error{"cron", "give a cron expression or an interval, not both"})
	case expr == "" && s.Interval == 0:
		errs = append(errs, &Error{"cron", "give a cron expression or an interval"})
	case strings.HasPrefix(expr, "@every"):
		d, err := time.ParseDuration(strings.TrimSpace(strings.TrimPrefix(expr, "@every")))
		if err != nil {
			errs = append(errs, &Error{"cron", fmt.Sprintf("invalid @every duration in %q: %v", expr, err)})
		} else {
			c.interval = d
		}
	case expr != "":
		if strings.HasPrefix(expr, "TZ=") || strings.HasPrefix(expr, "CRON_TZ=") {
			errs = append(errs, &Error{"cron", fmt.Sprintf("invalid cron expression %q: give the zone separately (--zone)", expr)})
			break
		}
		sch, err := parser.Parse(expr)
		if err != nil {
			errs = append(errs, &Error{"cron", fmt.Sprintf("invalid cron expression %q (5 fields: minute hour day-of-month month day-of-week, or @hourly, @daily, @weekly, @monthly, @yearly, @every DURATION): %v", expr, err)})
			break
		}
		spec, ok := sch.(*cron.SpecSchedule)
		if !ok {
			errs = append(errs, &Error{"cron", fmt.Sprintf("invalid cron expression %q", expr)})
			break
		}
		spec.Location = time.UTC
		c.sched = spec
	default:
		c.interval = s.Interval
	}
	if c.sched == nil && c.interval != 0 && c.interval < MinInterval {
		errs = append(errs, &Error{"interval", fmt.Sprintf("interval %s is shorter than %s", c.interval, MinInterval)})
	}
	if !s.Start.IsZero() && !s.End.IsZero() && s.End.Before(s.Start) {
		errs = append(errs, &Error{"end", fmt.Sprintf("end %s is before start %s", s.End.Format(time.RFC3339), s.Start.Format(time.RFC3339))})
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if c.sched == nil && c.spec.Anchor.IsZero() {
		c.spec.Anchor = s.Start
	}
	return c, nil
}

// LoadZone loads an IANA zone, with an error that names it.
func LoadZone(name string) (*time.Location, error) {
	if name == "" || strings.EqualFold(name, "local") {
		return nil, &Error{"zone", fmt.Sprintf("unknown time zone %q (give an IANA name such as Europe/London or UTC)", name)}
	}
	loc, err := time.LoadLocation(name)
	if err != nil {
		return nil, &Error{"zone", fmt.Sprintf("unknown time zone %q (give an IANA name such as Europe/London or UTC)", name)}
	}
	return loc, nil
}

// Location is the calendar's zone.
func (c *Calendar) Location() *time.Location { return c.loc }

// IsInterval reports whether the calendar is a fixed interval.
func (c *Calendar) IsInterval() bool { return c.sched == nil }

// Fire is one nominal fire time.
type Fire struct {
	At   time.Time // the instant (UTC)
	Kind string    // KindNormal or a daylight-saving kind
	// Wall is the local wall time the cron expression matched (for a shifted or
	// skipped gap time, the wall time that does not exist).
	Wall time.Time
}

// Skip reports whether the fire time is recorded as skipped by the calendar
// itself (a gap time under GapSkip).
func (f Fire) Skip() bool { return f.Kind == KindGapSkipped }

// Next returns the first fire time strictly after t, or false if there is none
// (past End, or a cron expression that never matches within five years).
func (c *Calendar) Next(t time.Time) (Fire, bool) {
	if !c.spec.Start.IsZero() && t.Before(c.spec.Start) {
		t = c.spec.Start.Add(-time.Nanosecond)
	}
	var f Fire
	var ok bool
	if c.sched == nil {
		f, ok = c.nextInterval(t)
	} else {
		f, ok = c.nextCron(t)
	}
	if !ok || (!c.spec.End.IsZero() && f.At.After(c.spec.End)) {
		return Fire{}, false
	}
	return f, true
}

func (c *Calendar) nextInterval(t time.Time) (Fire, bool) {
	a := c.spec.Anchor
	if t.Before(a) {
		return Fire{At: a.UTC(), Wall: a.UTC()}, true
	}
	k := t.Sub(a)/c.interval + 1
	at := a.Add(k * c.interval).UTC()
	return Fire{At: at, Wall: at}, true
}

// wall writes the local wall time of instant t in loc as a UTC time.
func wall(t time.Time, loc *time.Location) time.Time {
	l := t.In(loc)
	return time.Date(l.Year(), l.Month(), l.Day(), l.Hour(), l.Minute(), l.Second(), l.Nanosecond(), time.UTC)
}

// resolve maps wall time w (written as UTC) to its fire times in loc.
func (c *Calendar) resolve(w time.Time) []Fire {
	var offs []int
	for _, probe := range []time.Time{w.Add(-offsetReach), w, w.Add(offsetReach)} {
		_, off := probe.In(c.loc).Zone()
		dup := false
		for _, o := range offs {
			dup = dup || o == off
		}
		if !dup {
			offs = append(offs, off)
		}
	}
	var valid []time.Time
	for _, off := range offs {
		i := w.Add(-time.Duration(off) * time.Second)
		if wall(i, c.loc).Equal(w) {
			dup := false
			for _, v := range valid {
				dup = dup || v.Equal(i)
			}
			if !dup {
				valid = append(valid, i)
			}
		}
	}
	switch len(valid) {
	case 0:
		// A gap: take the offset before the change, which moves the wall time
		// forward by the gap's length.
		_, before := w.Add(-offsetReach).In(c.loc).Zone()
		at := w.Add(-time.Duration(before) * time.Second).UTC()
		if c.spec.Gap == GapSkip {
			return []Fire{{At: at, Kind: KindGapSkipped, Wall: w}}
		}
		return []Fire{{At: at, Kind: KindGapShifted, Wall: w}}
	case 1:
		return []Fire{{At: valid[0].UTC(), Wall: w}}
	default:
		if valid[1].Before(valid[0]) {
			valid[0], valid[1] = valid[1], valid[0]
		}
		if c.spec.Fold == FoldFirst {
			return []Fire{{At: valid[0].UTC(), Kind: KindFoldFirst, Wall: w}}
		}
		return []Fire{{At: valid[0].UTC(), Kind: KindFoldFirst, Wall: w}, {At: valid[1].UTC(), Kind: KindFoldSecond, Wall: w}}
	}
}

func (c *Calendar) nextCron(t time.Time) (Fire, bool) {
	// Wall time w has its instants in [w - max offset, w - min offset] (offsets
	// near w): start at the first wall time that can have one after t, stop
	// once no later wall time can beat the best found.
	lo, _ := c.offsetRange(t)
	w := t.UTC().Add(time.Duration(lo)*time.Second - time.Nanosecond)
	var best Fire
	found := false
	for {
		w = c.sched.Next(w)
		if w.IsZero() {
			break
		}
		if found {
			if _, hi := c.offsetRange(w); w.Add(-time.Duration(hi) * time.Second).After(best.At) {
				break
			}
		}
		for _, f := range c.resolve(w) {
			if !f.At.After(t) {
				continue
			}
			if !found || f.At.Before(best.At) || (f.At.Equal(best.At) && best.Kind != KindNormal && f.Kind == KindNormal) {
				best, found = f, true
			}
		}
	}
	return best, found
}

// offsetRange is the smallest and largest UTC offset (seconds) in effect within
// a day of t.
func (c *Calendar) offsetRange(t time.Time) (lo, hi int) {
	for i, probe := range []time.Time{t.Add(-offsetReach), t, t.Add(offsetReach)} {
		_, off := probe.In(c.loc).Zone()
		if i == 0 || off < lo {
			lo = off
		}
		if i == 0 || off > hi {
			hi = off
		}
	}
	return lo, hi
}

// Upcoming returns up to n fire times after t.
func (c *Calendar) Upcoming(t time.Time, n int) []Fire {
	var out []Fire
	for len(out) < n {
		f, ok := c.Next(t)
		if !ok {
			break
		}
		out = append(out, f)
		t = f.At
	}
	return out
}

// Jitter is the deterministic delay of a fire time in [0, max): every master
// computes the same one, so the due instant does not depend on who fires.
func Jitter(scheduleID int64, nominal time.Time, max time.Duration) time.Duration {
	if max <= 0 {
		return 0
	}
	h := fnv.New64a()
	fmt.Fprintf(h, "%d/%d", scheduleID, nominal.UnixNano())
	return time.Duration(h.Sum64() % uint64(max))
}
