package baton

import (
	"strings"
	"testing"

	"go.uber.org/zap/zapcore"

	"github.com/baton-scheduler/baton/internal/executor"
	"github.com/baton-scheduler/baton/internal/master"
	"github.com/baton-scheduler/baton/internal/store"
	"github.com/baton-scheduler/baton/internal/worker"
)

// The public constants spell the internal defaults for go doc; they must agree.
func TestDefaultsMatchInternal(t *testing.T) {
	t.Parallel()
	pairs := []struct {
		name      string
		pub, intl any
	}{
		{"schema", SchemaDefault, store.SchemaDefault},
		{"kind shell", KindShell, executor.KindShell},
		{"group", WorkerGroupDefault, worker.GroupDefault},
		{"slots", WorkerSlotsDefault, worker.SlotsDefault},
		{"worker heartbeat", WorkerHeartbeatIntervalDefault, worker.HeartbeatIntervalDefault},
		{"self-fence", WorkerSelfFenceAfterDefault, worker.SelfFenceAfterDefault},
		{"poll", WorkerPollIntervalDefault, worker.PollIntervalDefault},
		{"grace", WorkerShutdownGraceDefault, worker.ShutdownGraceDefault},
		{"master heartbeat", MasterHeartbeatIntervalDefault, master.HeartbeatIntervalDefault},
		{"worker timeout", MasterWorkerTimeoutDefault, master.WorkerTimeoutDefault},
		{"master timeout", MasterMasterTimeoutDefault, master.MasterTimeoutDefault},
	}
	for _, p := range pairs {
		if p.pub != p.intl {
			t.Errorf("%s: public %v, internal %v", p.name, p.pub, p.intl)
		}
	}
}

// A nil logger is never silence.
func TestNilLoggerIsNotNop(t *testing.T) {
	t.Parallel()
	wc, err := WorkerConfig{DatabaseURL: "postgres://x@127.0.0.1:1/x"}.internal()
	if err != nil {
		t.Fatal(err)
	}
	if !wc.Logger.Core().Enabled(zapcore.InfoLevel) {
		t.Fatal("default worker logger drops info")
	}
	mc, err := MasterConfig{DatabaseURL: "postgres://x@127.0.0.1:1/x"}.internal()
	if err != nil {
		t.Fatal(err)
	}
	if !mc.Logger.Core().Enabled(zapcore.WarnLevel) {
		t.Fatal("default master logger drops warnings")
	}
	if wc.AllowShell {
		t.Fatal("an embedded worker runs shell tasks by default")
	}
}

func TestWithSchema(t *testing.T) {
	t.Parallel()
	cases := []struct{ dsn, want string }{
		{"postgres://u:p@h:5432/db", "postgres://u:p@h:5432/db?baton_schema=jobs"},
		{"postgres://u@h/db?sslmode=disable&search_path=public", "baton_schema=jobs"},
		{"host=h dbname=db", "host=h dbname=db baton_schema=jobs"},
	}
	for _, tc := range cases {
		got, err := WithSchema(tc.dsn, "jobs")
		if err != nil || !strings.Contains(got, tc.want) {
			t.Errorf("WithSchema(%q) = %q, %v; want it to contain %q", tc.dsn, got, err, tc.want)
			continue
		}
		cfg, err := store.ParseConfig(got)
		if err != nil || store.Schema(cfg) != "jobs" || cfg.ConnConfig.RuntimeParams["baton_schema"] != "" {
			t.Errorf("parsed %q: schema %q, params %v, %v", got, store.Schema(cfg), cfg.ConnConfig.RuntimeParams, err)
		}
	}
	if _, err := WithSchema("postgres://h/db", "Robert'); DROP"); err == nil {
		t.Error("bad schema name accepted")
	}
	cfg, err := store.ParseConfig("postgres://u@h/db?search_path=public")
	if err != nil || store.Schema(cfg) != "baton" {
		t.Errorf("the application's search_path must not move baton: %q, %v", store.Schema(cfg), err)
	}
}
