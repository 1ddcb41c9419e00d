package cli

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/baton-scheduler/baton/batontest"
	"github.com/baton-scheduler/baton/internal/completer"
	"github.com/baton-scheduler/baton/internal/worker"
)

// unitFile reads a systemd unit: every key's values in order, by section.key.
func unitFile(t *testing.T, path string) map[string][]string {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]string{}
	section := ""
	sc := bufio.NewScanner(bytes.NewReader(raw))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "["):
			section = strings.Trim(line, "[]")
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok {
				t.Fatalf("%s: bad line %q", path, line)
			}
			out[section+"."+k] = append(out[section+"."+k], v)
		}
	}
	return out
}

func one(t *testing.T, u map[string][]string, key string) string {
	t.Helper()
	if len(u[key]) != 1 {
		t.Fatalf("%s: %q, want one value", key, u[key])
	}
	return u[key][0]
}

// envRead lists the environment variables a daemon reads.
func envRead(run func(Env) int) map[string]bool {
	seen := map[string]bool{}
	run(func(k string) string { seen[k] = true; return "" })
	return seen
}

// The systemd units of deploy/systemd: Type=notify with a watchdog (the
// daemons speak the protocol: TestSystemdNotify), SIGTERM to the main process
// only, a stop timeout longer than the worker's whole drain, only environment
// variables the daemons read; and systemd-analyze verify finds nothing to say.
func TestSystemdUnits(t *testing.T) {
	t.Parallel()
	dir := "../../deploy/systemd"
	master := unitFile(t, filepath.Join(dir, "baton-master.service"))
	wk := unitFile(t, filepath.Join(dir, "baton-worker@.service"))
	reads := map[string]map[string]bool{
		"master": envRead(func(e Env) int { return MasterMain(context.Background(), []string{"--help"}, e, &bytes.Buffer{}) }),
		"worker": envRead(func(e Env) int { return WorkerMain(context.Background(), []string{"--help"}, e, nil, &bytes.Buffer{}) }),
	}
	for name, u := range map[string]map[string][]string{"master": master, "worker": wk} {
		for key, want := range map[string]string{"Service.Type": "notify", "Service.NotifyAccess": "main", "Service.KillMode": "mixed", "Service.Restart": "always"} {
			if got := one(t, u, key); got != want {
				t.Errorf("%s: %s=%s, want %s", name, key, got, want)
			}
		}
		if wd, err := time.ParseDuration(one(t, u, "Service.WatchdogSec")); err != nil || wd < 10*time.Second {
			t.Errorf("%s: WatchdogSec %v %v", name, wd, err)
		}
		if exe := one(t, u, "Service.ExecStart"); exe != "/usr/local/bin/baton-"+name {
			t.Errorf("%s: ExecStart=%s", name, exe)
		}
		for _, e := range u["Service.Environment"] {
			k, _, _ := strings.Cut(e, "=")
			if !reads[name][k] {
				t.Errorf("%s: Environment=%s: baton-%s does not read %s", name, e, name, k)
			}
		}
	}
	// The worker's drain fits in TimeoutStopSec, with room to spare.
	var grace time.Duration
	for _, e := range wk["Service.Environment"] {
		if v, ok := strings.CutPrefix(e, "BATON_SHUTDOWN_GRACE="); ok {
			var err error
			if grace, err = time.ParseDuration(v); err != nil {
				t.Fatal(err)
			}
		}
	}
	stop, err := time.ParseDuration(one(t, wk, "Service.TimeoutStopSec"))
	if err != nil || grace == 0 {
		t.Fatalf("worker: TimeoutStopSec %v (%v), BATON_SHUTDOWN_GRACE %v", stop, err, grace)
	}
	if drain := grace + worker.KillGraceDefault + completer.FinalFlushTimeoutDefault; stop < drain+5*time.Second {
		t.Errorf("worker: TimeoutStopSec=%s does not exceed the drain (%s: grace %s + kill grace %s + final flush %s) by 5 s",
			stop, drain, grace, worker.KillGraceDefault, completer.FinalFlushTimeoutDefault)
	}
	if one(t, wk, "Service.Delegate") != "yes" {
		t.Error("worker: no Delegate=yes: shell tasks get no cgroup of their own")
	}

	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		if batontest.InCI() {
			t.Fatal("systemd-analyze not found (Debian: apt-get install systemd)")
		}
		t.Skip("systemd-analyze not found; the units' settings were checked")
	}
	// verify wants the ExecStart binaries to exist: stand-ins in a temporary
	// directory. It exits 0 on a misspelt setting, so any output fails too.
	tmp := t.TempDir()
	var units []string
	for _, f := range []string{"baton-master.service", "baton-worker@.service"} {
		raw, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		name := strings.Replace(f, "@.", "@etl.", 1)
		if err := os.WriteFile(filepath.Join(tmp, name), bytes.ReplaceAll(raw, []byte("/usr/local/bin/"), []byte(tmp+"/")), 0o644); err != nil {
			t.Fatal(err)
		}
		units = append(units, "./"+name)
	}
	for _, b := range []string{"baton-master", "baton-worker"} {
		if err := os.WriteFile(filepath.Join(tmp, b), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(analyze, append([]string{"verify"}, units...)...)
	cmd.Dir = tmp
	out, err := cmd.CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}
