package cli

import (
	"os/exec"
	"regexp"
	"strings"
	"testing"
)

// linksDocker matches the packages the development launcher pulls in: the
// testcontainers modules and the Docker/moby client they use.
var linksDocker = regexp.MustCompile(`(?i)testcontainers|docker|moby`)

// The daemons must not link the development launcher's Docker stack (a smaller
// binary, no Docker client in a production process); `baton` does, for `baton
// dev`, which doubles as the check that the pattern still finds it.
func TestDaemonsDoNotLinkTestcontainers(t *testing.T) {
	t.Parallel()
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("go tool not found: %v", err)
	}
	deps := func(pkgs ...string) []string {
		t.Helper()
		cmd := exec.Command(goTool, append([]string{"list", "-deps"}, pkgs...)...)
		cmd.Dir = "../.."
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("go list -deps %v: %v", pkgs, err)
		}
		var bad []string
		for _, p := range strings.Fields(string(out)) {
			if linksDocker.MatchString(p) {
				bad = append(bad, p)
			}
		}
		return bad
	}
	if bad := deps("./cmd/baton-master", "./cmd/baton-worker"); len(bad) > 0 {
		t.Fatalf("baton-master/baton-worker link %d Docker/testcontainers packages, e.g. %v", len(bad), bad[:min(len(bad), 5)])
	}
	if bad := deps("./cmd/baton"); len(bad) == 0 {
		t.Fatal("baton (with baton dev) links no testcontainers package: the pattern no longer finds the launcher's dependencies")
	}
}
