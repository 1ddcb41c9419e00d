package metrics

import (
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/baton-scheduler/baton/batontest"
)

// The shipped alert rules load and pass their unit tests (promtool, from
// Debian's prometheus package; .ci/run installs it). Under CI a missing
// promtool fails the test.
func TestAlertRules(t *testing.T) {
	t.Parallel()
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		if batontest.InCI() {
			t.Fatal("promtool not found: apt-get install prometheus")
		}
		t.Skip("promtool not found (apt-get install prometheus)")
	}
	for _, args := range [][]string{{"check", "rules", "alerts.yml"}, {"test", "rules", "alerts_test.yml"}} {
		cmd := exec.Command(promtool, args...)
		cmd.Dir = "../../deploy/prometheus"
		cmd.Env = append(os.Environ(), "TZ=UTC")
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "SUCCESS") {
			t.Fatalf("promtool %v: %v\n%s", args, err, out)
		}
	}
}

// Every baton metric the alert rules name is one the collectors export.
func TestAlertRulesUseExportedMetrics(t *testing.T) {
	t.Parallel()
	rules, err := os.ReadFile("../../deploy/prometheus/alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	exported := exportedNames(t)
	used := regexp.MustCompile(`baton_[a-z_]+`).FindAllString(string(rules), -1)
	if len(used) < 5 {
		t.Fatalf("alerts.yml names %d baton metrics", len(used))
	}
	for _, name := range used {
		if !exported[name] {
			t.Errorf("alerts.yml uses %s, which is not exported", name)
		}
	}
}
