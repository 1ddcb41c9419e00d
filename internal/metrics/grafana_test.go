package metrics

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"
	"gopkg.in/yaml.v3"

	"github.com/baton-scheduler/baton/batontest"
)

const grafanaDir = "../../deploy/grafana"

// target is one query of a dashboard panel or variable.
type target struct {
	where, datasource, expr, sql string
}

// dashboardTargets reads every dashboard and returns its queries.
func dashboardTargets(t *testing.T) map[string][]target {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(grafanaDir, "dashboards", "*.json"))
	if err != nil || len(files) < 3 {
		t.Fatalf("dashboards: %v %v", files, err)
	}
	type ds struct{ UID string }
	type tgt struct {
		Datasource *ds
		Expr       string
		RawSQL     string `json:"rawSql"`
	}
	type panel struct {
		Title      string
		Datasource *ds
		Targets    []tgt
		Panels     []panel // rows
	}
	type dashboard struct {
		UID        string
		Title      string
		Panels     []panel
		Templating struct {
			List []struct {
				Name       string
				Datasource *ds
				Query      json.RawMessage
			}
		}
	}
	out := map[string][]target{}
	uids := map[string]bool{}
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var d dashboard
		dec := json.NewDecoder(strings.NewReader(string(raw)))
		if err := dec.Decode(&d); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if d.UID == "" || uids[d.UID] || d.Title == "" {
			t.Fatalf("%s: uid %q (unique, non-empty) and title %q", f, d.UID, d.Title)
		}
		uids[d.UID] = true
		name := filepath.Base(f)
		var walk func(ps []panel)
		walk = func(ps []panel) {
			for _, p := range ps {
				walk(p.Panels)
				for _, tg := range p.Targets {
					src := tg.Datasource
					if src == nil {
						src = p.Datasource
					}
					if src == nil {
						t.Errorf("%s: panel %q: a target without a datasource", name, p.Title)
						continue
					}
					out[name] = append(out[name], target{where: name + ": " + p.Title, datasource: src.UID, expr: tg.Expr, sql: tg.RawSQL})
				}
			}
		}
		walk(d.Panels)
		for _, v := range d.Templating.List {
			var q struct{ Query string }
			if err := json.Unmarshal(v.Query, &q); err != nil {
				_ = json.Unmarshal(v.Query, &q.Query) // a plain string
			}
			if v.Datasource != nil && q.Query != "" {
				out[name] = append(out[name], target{where: name + ": variable " + v.Name, datasource: v.Datasource.UID, expr: q.Query})
			}
		}
	}
	return out
}

// exportedNames is every sample name baton's processes expose (histograms with
// their _bucket, _sum and _count).
func exportedNames(t *testing.T) map[string]bool {
	t.Helper()
	reg := NewRegistry("test")
	w, m := NewWorker("g"), NewMaster()
	// Pool and cluster collectors only describe without a database; their
	// descriptions carry the names.
	reg.MustRegister(w, m)
	w.AttemptFinished("succeeded", time.Second)
	m.Failover("worker")
	m.TasksMoved("g", 1, 1, 1)
	names := map[string]bool{}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		n := mf.GetName()
		names[n] = true
		if mf.GetType().String() == "HISTOGRAM" {
			names[n+"_bucket"], names[n+"_sum"], names[n+"_count"] = true, true, true
		}
	}
	ch := make(chan *prometheus.Desc, 64)
	NewCluster(nil, "baton", 0, nil).Describe(ch)
	NewPoolCollector(nil, "x").Describe(ch)
	close(ch)
	descName := regexp.MustCompile(`fqName: "([a-z_]+)"`)
	for d := range ch {
		names[descName.FindStringSubmatch(d.String())[1]] = true
	}
	return names
}

var metricName = regexp.MustCompile(`\b(?:baton|go|process)_[a-zA-Z0-9_]+`)

// Every Prometheus query of the dashboards names only metrics baton exports, and
// parses (promtool checks them as recording rules); every SQL target names a
// datasource the provisioning file defines.
func TestGrafanaDashboardsPromQL(t *testing.T) {
	t.Parallel()
	exported := exportedNames(t)
	prov, err := os.ReadFile(filepath.Join(grafanaDir, "provisioning", "datasources", "baton.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var dsFile struct {
		Datasources []struct{ UID, Type string }
	}
	if err := yaml.Unmarshal(prov, &dsFile); err != nil {
		t.Fatal(err)
	}
	types := map[string]string{}
	for _, d := range dsFile.Datasources {
		types[d.UID] = d.Type
	}
	var dash struct {
		APIVersion int `yaml:"apiVersion"`
		Providers  []struct{ Type string }
	}
	raw, err := os.ReadFile(filepath.Join(grafanaDir, "provisioning", "dashboards", "baton.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(raw, &dash); err != nil || dash.APIVersion != 1 || len(dash.Providers) != 1 || dash.Providers[0].Type != "file" {
		t.Fatalf("dashboard provider file: %+v %v", dash, err)
	}
	var rules strings.Builder
	rules.WriteString("groups:\n  - name: dashboards\n    rules:\n")
	n := 0
	for _, targets := range dashboardTargets(t) {
		for _, tg := range targets {
			typ, ok := types[tg.datasource]
			if !ok {
				t.Errorf("%s: datasource %q is not provisioned", tg.where, tg.datasource)
				continue
			}
			if typ != "prometheus" {
				continue
			}
			used := metricName.FindAllString(tg.expr, -1)
			if len(used) == 0 {
				t.Errorf("%s: %q names no baton metric", tg.where, tg.expr)
			}
			for _, name := range used {
				if !exported[name] {
					t.Errorf("%s: %s is not a metric baton exports", tg.where, name)
				}
			}
			n++
			expr := grafanaPromVars.Replace(tg.expr)
			if strings.HasPrefix(expr, "label_values(") { // a Grafana variable function, not PromQL
				expr = strings.TrimSuffix(strings.TrimPrefix(expr, "label_values("), ", group)")
			}
			fmt.Fprintf(&rules, "      - record: dashboard:expr_%d\n        expr: %q\n", n, expr)
		}
	}
	if n < 15 {
		t.Fatalf("only %d Prometheus queries found", n)
	}
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		if batontest.InCI() {
			t.Fatal("promtool not found: apt-get install prometheus")
		}
		t.Skip("promtool not found (apt-get install prometheus); the metric names were checked")
	}
	f := filepath.Join(t.TempDir(), "dashboards.yml")
	if err := os.WriteFile(f, []byte(rules.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(promtool, "check", "rules", f).CombinedOutput()
	if err != nil || !strings.Contains(string(out), fmt.Sprintf("%d rules found", n)) {
		t.Fatalf("promtool check rules (dashboard queries): %v\n%s\n%s", err, out, rules.String())
	}
}

// grafanaPromVars replaces Grafana's variables with what they expand to.
var grafanaPromVars = strings.NewReplacer("$__rate_interval", "1m", "$__interval", "1m", "$__range", "1h", "$group", ".*")

// grafanaTimeFilter matches Grafana's $__timeFilter(column) macro.
var grafanaTimeFilter = regexp.MustCompile(`\$__timeFilter\(([a-z_.]+)\)`)

// RoleSQL returns the read-only role recipe with psql's :"var" and :'var'
// substitutions done.
func roleSQL(t *testing.T, vars map[string]string) string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(grafanaDir, "readonly-role.sql"))
	if err != nil {
		t.Fatal(err)
	}
	s := string(raw)
	for k, v := range vars {
		s = strings.ReplaceAll(s, `:"`+k+`"`, pgx.Identifier{v}.Sanitize())
		s = strings.ReplaceAll(s, `:'`+k+`'`, "'"+strings.ReplaceAll(v, "'", "''")+"'")
	}
	if left := regexp.MustCompile(`(?m)^[^-].*:["'][a-z]+["']`).FindString(s); left != "" {
		t.Fatalf("unsubstituted psql variable in %q", left)
	}
	return s
}

// The recipe of deploy/grafana/readonly-role.sql makes a role that can SELECT
// every baton table and view (but api_tokens), including a table created after
// it ran, and can write nothing — not even with default_transaction_read_only
// turned off in its session; every SQL target of the dashboards runs (EXPLAIN)
// as that role.
func TestGrafanaReadOnlyRole(t *testing.T) {
	t.Parallel()
	pool, dsn := srv.NewPool(t)
	ctx := context.Background()
	role := "baton_grafana_t_" + fmt.Sprint(time.Now().UnixNano()%1e9)
	const password = "pw-'quoted\"-1"
	if _, err := pool.Exec(ctx, roleSQL(t, map[string]string{"role": role, "password": password, "schema": "baton"})); err != nil {
		t.Fatalf("readonly-role.sql: %v", err)
	}
	t.Cleanup(func() {
		// Privileges live in this database: drop them here, then the role.
		for _, q := range []string{"DROP OWNED BY " + pgx.Identifier{role}.Sanitize(), "DROP ROLE " + pgx.Identifier{role}.Sanitize()} {
			if _, err := pool.Exec(context.Background(), q); err != nil {
				t.Errorf("%s: %v", q, err)
			}
		}
	})
	// A table a later migration adds: covered by the default privileges.
	if _, err := pool.Exec(ctx, "CREATE TABLE baton.later_migration (id int)"); err != nil {
		t.Fatal(err)
	}
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	cfg.User, cfg.Password = role, password
	delete(cfg.RuntimeParams, "search_path") // the role's own setting must do
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("connect as %s: %v", role, err)
	}
	defer conn.Close(ctx)

	rows, err := pool.Query(ctx, `SELECT c.relname, c.relkind::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = 'baton' AND c.relkind IN ('r', 'v', 'p') ORDER BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	type rel struct{ name, kind string }
	rels, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (rel, error) {
		var x rel
		return x, r.Scan(&x.name, &x.kind)
	})
	if err != nil || len(rels) < 15 {
		t.Fatalf("baton relations: %d, %v", len(rels), err)
	}
	code := func(err error) string {
		if pe, ok := err.(*pgconn.PgError); ok {
			return pe.Code
		}
		return fmt.Sprint(err)
	}
	sawTable := false
	for _, r := range rels {
		q := "SELECT * FROM " + pgx.Identifier{r.name}.Sanitize() + " LIMIT 1"
		_, err := conn.Exec(ctx, q)
		if r.name == "api_tokens" {
			if code(err) != "42501" {
				t.Errorf("%s as %s: %v, want permission denied", q, role, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s as %s: %v", q, role, err)
		}
		if r.kind != "r" {
			continue
		}
		sawTable = true
		var col string
		if err := pool.QueryRow(ctx, "SELECT attname FROM pg_attribute WHERE attrelid = ('baton.' || $1)::regclass AND attnum > 0 AND NOT attisdropped AND attidentity = '' AND attgenerated = '' ORDER BY attnum LIMIT 1", r.name).Scan(&col); err != nil {
			t.Fatal(err)
		}
		for _, w := range []string{
			"INSERT INTO %[1]s DEFAULT VALUES", "UPDATE %[1]s SET %[2]s = %[2]s", "DELETE FROM %[1]s", "TRUNCATE %[1]s",
		} {
			stmt := fmt.Sprintf(w, pgx.Identifier{r.name}.Sanitize(), pgx.Identifier{col}.Sanitize())
			// Read-only by default: refused either way.
			if _, err := conn.Exec(ctx, stmt); err == nil {
				t.Errorf("%s as %s succeeded", stmt, role)
			}
			// The default is only a default; the grants must refuse it too.
			_, err := conn.Exec(ctx, "BEGIN READ WRITE; "+stmt+"; COMMIT")
			if c := code(err); c != "42501" {
				t.Errorf("%s as %s in a read-write transaction: %v, want permission denied (42501)", stmt, role, err)
			}
			_, _ = conn.Exec(ctx, "ROLLBACK")
		}
	}
	if !sawTable {
		t.Fatal("no table checked")
	}
	for _, ddl := range []string{"CREATE TABLE baton.grafana_owned (id int)", "CREATE TABLE public.grafana_owned (id int)", "ALTER TABLE tasks ADD COLUMN x int", "DROP VIEW report_tasks_by_state"} {
		if _, err := conn.Exec(ctx, "BEGIN READ WRITE; "+ddl+"; COMMIT"); err == nil {
			t.Errorf("%s as %s succeeded", ddl, role)
		}
		_, _ = conn.Exec(ctx, "ROLLBACK")
	}

	// Every SQL target of the dashboards, as the role.
	n := 0
	for _, targets := range dashboardTargets(t) {
		for _, tg := range targets {
			if tg.sql == "" {
				continue
			}
			n++
			q := grafanaTimeFilter.ReplaceAllString(tg.sql, "$1 BETWEEN now() - interval '6 hours' AND now()")
			if strings.Contains(q, "$") {
				t.Errorf("%s: unexpanded Grafana macro in %q", tg.where, q)
				continue
			}
			if _, err := conn.Exec(ctx, "EXPLAIN "+q); err != nil {
				t.Errorf("%s: EXPLAIN as %s: %v\n%s", tg.where, role, err, q)
			}
			if _, err := conn.Exec(ctx, q); err != nil {
				t.Errorf("%s: as %s: %v", tg.where, role, err)
			}
		}
	}
	if n < 8 {
		t.Fatalf("only %d SQL targets found", n)
	}
}
