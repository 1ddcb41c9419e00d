package schedule_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/calendar"
	"github.com/baton-scheduler/baton/internal/schedule"
)

// Across each zone's spring-forward and fall-back nights, under each policy,
// the ledger holds exactly what preview listed beforehand: the same instants,
// the gap time shifted or skipped (dst_gap), the repeated time once or twice.
func TestDaylightSavingFires(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		zone, cron, from string
		gap, fold        string
		wantKinds        []string // the daylight-saving kinds that must appear
	}{
		{"America/New_York", "30 2 * * *", "2026-03-07T12:00:00Z", calendar.GapShift, calendar.FoldFirst, []string{"dst_gap_shifted"}},
		// 02:00 and 02:30 shift onto 03:00 and 03:30, which fire anyway: merged.
		{"America/New_York", "*/30 1-3 * * *", "2026-03-07T12:00:00Z", calendar.GapShift, calendar.FoldFirst, nil},
		{"America/New_York", "30 2 * * *", "2026-03-07T12:00:00Z", calendar.GapSkip, calendar.FoldFirst, []string{"dst_gap"}},
		{"America/New_York", "*/30 1 * * *", "2026-10-31T12:00:00Z", calendar.GapShift, calendar.FoldFirst, []string{"dst_fold_first"}},
		{"America/New_York", "*/30 1 * * *", "2026-10-31T12:00:00Z", calendar.GapShift, calendar.FoldBoth, []string{"dst_fold_first", "dst_fold_second"}},
		{"Europe/London", "15 1 * * *", "2026-03-28T12:00:00Z", calendar.GapShift, calendar.FoldFirst, []string{"dst_gap_shifted"}},
		{"Europe/London", "15 1 * * *", "2026-03-28T12:00:00Z", calendar.GapSkip, calendar.FoldFirst, []string{"dst_gap"}},
		{"Europe/London", "15 1 * * *", "2026-10-24T12:00:00Z", calendar.GapShift, calendar.FoldFirst, []string{"dst_fold_first"}},
		{"Europe/London", "15 1 * * *", "2026-10-24T12:00:00Z", calendar.GapShift, calendar.FoldBoth, []string{"dst_fold_first", "dst_fold_second"}},
		{"Australia/Lord_Howe", "15 2 * * *", "2026-10-03T00:00:00Z", calendar.GapShift, calendar.FoldFirst, []string{"dst_gap_shifted"}},
		{"Australia/Lord_Howe", "15 2 * * *", "2026-10-03T00:00:00Z", calendar.GapSkip, calendar.FoldFirst, []string{"dst_gap"}},
		{"Australia/Lord_Howe", "45 1 * * *", "2026-04-04T00:00:00Z", calendar.GapShift, calendar.FoldFirst, []string{"dst_fold_first"}},
		{"Australia/Lord_Howe", "45 1 * * *", "2026-04-04T00:00:00Z", calendar.GapShift, calendar.FoldBoth, []string{"dst_fold_first", "dst_fold_second"}},
	} {
		t.Run(fmt.Sprintf("%s/%s/%s/%s/%s", tc.zone, tc.from[:10], strings.ReplaceAll(tc.cron, " ", "_"), tc.gap, tc.fold), func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			e.now, _ = time.Parse(time.RFC3339, tc.from)
			e.create(schedule.Spec{Name: "s", Cron: tc.cron, Zone: tc.zone, DSTGap: tc.gap, DSTFold: tc.fold, Overlap: schedule.OverlapAllow})
			var preview []schedule.PreviewItem
			e.tx(func(q *db.Queries) error {
				var err error
				preview, err = schedule.Preview(e.ctx, q, "s", 12, &e.now)
				return err
			})
			// Fire at every due time, and once in between each.
			var want []string
			kinds := map[string]bool{}
			for _, p := range preview {
				e.at(p.Due.Add(-time.Second))
				e.at(p.Due)
				w := p.Nominal.UTC().Format(time.RFC3339) + " started " + p.Kind
				if p.Kind == calendar.KindGapSkipped {
					w = p.Nominal.UTC().Format(time.RFC3339) + " skipped/dst_gap " + p.Kind
				}
				want = append(want, w)
				kinds[p.Kind] = true
			}
			for _, k := range tc.wantKinds {
				if !kinds[k] {
					t.Fatalf("preview shows no %s: %+v", k, preview)
				}
			}
			rows, err := e.pool.Query(e.ctx, "SELECT nominal_time, outcome, coalesce(reason, ''), kind FROM schedule_fires ORDER BY nominal_time")
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for rows.Next() {
				var at time.Time
				var outcome, reason, kind string
				if err := rows.Scan(&at, &outcome, &reason, &kind); err != nil {
					t.Fatal(err)
				}
				if reason != "" {
					outcome += "/" + reason
				}
				got = append(got, at.UTC().Format(time.RFC3339)+" "+outcome+" "+kind)
			}
			if strings.Join(got, "\n") != strings.Join(want, "\n") {
				t.Fatalf("ledger:\n  %s\npreview:\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
			}
		})
	}
}
