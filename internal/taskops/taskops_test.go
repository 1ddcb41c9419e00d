package taskops_test

import (
	"context"
	"fmt"
	"os"
	"reflect"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/baton-scheduler/baton/batontest"
	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/taskops"
)

var srv *batontest.Server

func TestMain(m *testing.M) {
	os.Exit(batontest.MainNoLeaks(m, func(s *batontest.Server) { srv = s }))
}

// listRows fills a database with tasks in every state over several groups: two
// large ones, a small one and an empty one; three priorities among the queued
// tasks; two kinds; tags or none; every group's states interleaved in id order,
// and one group's queued tasks all older than its finished ones (the order a
// stalled group leaves behind).
func listRows(t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	ctx := context.Background()
	for _, sql := range []string{
		`INSERT INTO worker_groups (name) VALUES ('ga'), ('gb'), ('gsmall'), ('gempty')`,
		`INSERT INTO worker_sessions (name, group_name, slots, host, pid)
		 SELECT 'w-' || g, g, 100, 'host', 1 FROM unnest(ARRAY['ga', 'gb', 'gsmall']) g`,
		`INSERT INTO tasks (group_name, kind, state, priority, available_at, worker_session_id, attempt, finished_at, tags)
		 SELECT g, CASE WHEN i % 3 = 0 THEN 'k1' ELSE 'k2' END, s,
		        CASE i % 5 WHEN 0 THEN 3 WHEN 1 THEN -5 ELSE 0 END,
		        CASE WHEN s = 'scheduled' THEN now() + interval '1 hour' ELSE now() END,
		        CASE WHEN s IN ('dispatched', 'running') THEN (SELECT id FROM worker_sessions w WHERE w.group_name = g) END,
		        CASE WHEN s IN ('scheduled', 'queued') THEN 0 ELSE 1 END,
		        CASE WHEN s IN ('succeeded', 'failed', 'timed_out', 'canceled') THEN now() END,
		        CASE i % 4 WHEN 0 THEN '{x}'::text[] WHEN 1 THEN '{x,y}' ELSE '{}' END
		 FROM (SELECT i, g,
		              CASE WHEN g = 'gb' AND i < 600 THEN 'queued'
		                   WHEN g = 'gb' THEN (ARRAY['succeeded', 'failed', 'canceled'])[1 + i % 3]
		                   ELSE (ARRAY['scheduled', 'queued', 'dispatched', 'running', 'succeeded', 'failed', 'timed_out', 'canceled',
		                               'succeeded', 'queued', 'succeeded'])[1 + (i * 7) % 11] END AS s
		       FROM generate_series(1, 1200) i,
		            LATERAL (SELECT CASE WHEN i % 97 = 0 THEN 'gsmall' WHEN i % 2 = 0 THEN 'ga' ELSE 'gb' END AS g) gg) x`,
		`ANALYZE tasks`,
	} {
		if _, err := pool.Exec(ctx, sql); err != nil {
			t.Fatalf("fill: %v\n%s", err, sql)
		}
	}
}

// TestListPageByGroupSameAsGeneric: for every filter combination with a group,
// paged to the end with the cursor, TaskListPageByGroup returns exactly the rows
// of the generic TaskListPage, in the same order.
func TestListPageByGroupSameAsGeneric(t *testing.T) {
	t.Parallel()
	pool, _ := srv.NewPool(t)
	listRows(t, pool)
	ctx := context.Background()
	states := []*string{nil}
	for _, s := range []string{"scheduled", "queued", "dispatched", "running", "succeeded", "failed", "timed_out", "canceled"} {
		states = append(states, batontest.Ptr(s))
	}
	str := func(p *string) string {
		if p == nil {
			return "-"
		}
		return *p
	}
	cases, rows := 0, 0
	for _, group := range []string{"ga", "gb", "gsmall", "gempty", "nosuchgroup"} {
		for _, state := range states {
			for _, kind := range []*string{nil, batontest.Ptr("k1")} {
				for _, tags := range [][]string{nil, {"x"}, {"x", "y"}} {
					for _, limit := range []int32{1, 7, 50} {
						if limit == 1 && group != "gsmall" {
							continue // a page of one through hundreds of rows adds nothing but time
						}
						name := fmt.Sprintf("group=%s,state=%s,kind=%s,tags=%v,limit=%d", group, str(state), str(kind), tags, limit)
						arg := db.TaskListPageParams{State: state, GroupName: &group, Kind: kind, Tags: tags, MaxRows: limit}
						rows += comparePages(t, ctx, pool, name, arg)
						cases++
					}
				}
			}
		}
	}
	if rows == 0 {
		t.Fatal("no rows compared")
	}
	t.Logf("%d filter combinations, %d rows compared", cases, rows)
}

// comparePages pages through arg with both statements, each page in its own
// transaction after TxListPlanning (as taskops.ListPage runs them), and returns
// how many rows matched.
func comparePages(t *testing.T, ctx context.Context, pool *pgxpool.Pool, name string, arg db.TaskListPageParams) int {
	t.Helper()
	n := 0
	for page := 0; ; page++ {
		var generic, byGroup []db.Task
		err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			q := db.New(tx)
			if err := q.TxListPlanning(ctx); err != nil {
				return err
			}
			var err error
			if generic, err = q.TaskListPage(ctx, arg); err != nil {
				return fmt.Errorf("generic: %w", err)
			}
			if byGroup, err = taskops.ListPage(ctx, q, arg); err != nil {
				return fmt.Errorf("by group: %w", err)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("%s page %d: %v", name, page, err)
		}
		if !reflect.DeepEqual(ids(generic), ids(byGroup)) {
			t.Fatalf("%s page %d (before_id %v):\ngeneric  %v\nby group %v", name, page, arg.BeforeID, ids(generic), ids(byGroup))
		}
		if !reflect.DeepEqual(generic, byGroup) {
			t.Fatalf("%s page %d: same ids, different rows", name, page)
		}
		n += len(generic)
		if len(generic) < int(arg.MaxRows) {
			return n
		}
		arg.BeforeID = &generic[len(generic)-1].ID
	}
}

func ids(rows []db.Task) []int64 {
	out := make([]int64, len(rows))
	for i, r := range rows {
		out[i] = r.ID
	}
	return out
}
