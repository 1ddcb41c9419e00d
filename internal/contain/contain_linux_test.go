//go:build linux

package contain

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
)

func TestOpenRejectsUnknownMechanism(t *testing.T) {
	t.Parallel()
	if _, err := Open(Options{Mechanism: "jail"}); err == nil || !strings.Contains(err.Error(), `"jail"`) {
		t.Fatalf("got %v", err)
	}
}

// Open says what it chose and why, and the supervisor hook answers in this binary.
func TestOpenReportsMechanism(t *testing.T) {
	t.Parallel()
	m, err := Open(Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	switch m.Mechanism() {
	case Cgroup:
		if m.Reason() != "" || m.Dir() == "" {
			t.Fatalf("cgroup: reason %q dir %q", m.Reason(), m.Dir())
		}
	case Supervisor:
		if m.Reason() == "" || m.Dir() != "" {
			t.Fatalf("supervisor: reason %q dir %q", m.Reason(), m.Dir())
		}
		t.Logf("cgroups unusable here: %s", m.Reason())
	default:
		t.Fatalf("mechanism %q", m.Mechanism())
	}
}

func TestStaleOwner(t *testing.T) {
	t.Parallel()
	ns, err := pidNamespace()
	if err != nil {
		t.Fatal(err)
	}
	self, err := managerName(1)
	if err != nil {
		t.Fatal(err)
	}
	// A process that has exited: its pid and start time name nobody.
	cmd := exec.Command("/bin/true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	cases := map[string]bool{
		self: false,
		fmt.Sprintf("%d-%d-%d-1", ns, cmd.Process.Pid, 1): true,
		fmt.Sprintf("%d-%d-1-1", ns, os.Getpid()):         true,  // pid reused by someone else
		fmt.Sprintf("%d-%d-1-1", ns+1, 999999999):         false, // another pid namespace: cannot judge
		"probe":         false,
		"not-a-manager": false,
	}
	for name, want := range cases {
		if got := staleOwner(name, ns); got != want {
			t.Errorf("staleOwner(%q) = %v, want %v", name, got, want)
		}
	}
}

func TestUnescapeMount(t *testing.T) {
	t.Parallel()
	if got := unescapeMount(`/sys/fs/my\040cgroup`); got != "/sys/fs/my cgroup" {
		t.Fatalf("got %q", got)
	}
}

// Close kills what runs, and nothing starts afterwards.
func TestCloseKillsAndRefusesStart(t *testing.T) {
	t.Parallel()
	for _, mech := range []Mechanism{Auto, Supervisor} {
		m, err := Open(Options{Mechanism: mech})
		if err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		p, err := m.Start(Command{Args: []string{"/bin/sh", "-c", "echo up; exec sleep 1000"}, Env: []string{"PATH=/usr/bin:/bin"}, Stdout: &out, Stderr: &out})
		if err != nil {
			t.Fatal(err)
		}
		if err := m.Close(); err != nil {
			t.Fatal(err)
		}
		if x := p.Wait(); x.Err == nil {
			t.Fatalf("%s: killed process exited cleanly: %+v", m.Mechanism(), x)
		}
		if _, err := m.Start(Command{Args: []string{"/bin/true"}}); err == nil {
			t.Fatalf("%s: Start after Close succeeded", m.Mechanism())
		}
		if m.Dir() != "" {
			if _, err := os.Stat(m.Dir()); !os.IsNotExist(err) {
				t.Fatalf("cgroup %s not removed: %v", m.Dir(), err)
			}
		}
	}
}

func TestExitStatus(t *testing.T) {
	t.Parallel()
	m, err := Open(Options{Mechanism: Supervisor})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	cases := []struct {
		args []string
		code int
		err  string
	}{
		{[]string{"/bin/sh", "-c", "exit 0"}, 0, ""},
		{[]string{"/bin/sh", "-c", "exit 3"}, 3, "exit status 3"},
		{[]string{"/bin/sh", "-c", "kill -9 $$"}, -1, "signal: killed"},
		{[]string{"/no/such/program"}, -1, "start /no/such/program: no such file"},
	}
	for _, tc := range cases {
		p, err := m.Start(Command{Args: tc.args})
		if err != nil {
			t.Fatal(err)
		}
		x := p.Wait()
		got := ""
		if x.Err != nil {
			got = x.Err.Error()
		}
		if x.Code != tc.code || !strings.Contains(got, tc.err) || (tc.err == "") != (got == "") {
			t.Errorf("%v: got %d %q, want %d %q", tc.args, x.Code, got, tc.code, tc.err)
		}
	}
}
