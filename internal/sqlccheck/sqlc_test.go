// Package sqlccheck proves that `sqlc diff` (run by make test) catches generated
// code that no longer matches queries/ and migrations/.
package sqlccheck

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func repoRoot(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

func copyTree(t *testing.T, src, dst string, dirs ...string) {
	t.Helper()
	for _, d := range dirs {
		if err := os.CopyFS(filepath.Join(dst, d), os.DirFS(filepath.Join(src, d))); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(filepath.Join(src, "sqlc.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dst, "sqlc.yaml"), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func sqlcDiff(t *testing.T, root, dir string) (string, error) {
	t.Helper()
	// `go tool -n` builds the pinned sqlc and prints its path, so it can run in a copy.
	find := exec.Command("go", "tool", "-n", "sqlc")
	find.Dir = root
	bin, err := find.Output()
	if err != nil {
		t.Fatalf("locate sqlc tool: %v", err)
	}
	cmd := exec.Command(strings.TrimSpace(string(bin)), "diff")
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func TestGeneratedCodeIsCurrent(t *testing.T) {
	root := repoRoot(t)
	if out, err := sqlcDiff(t, root, root); err != nil {
		t.Fatalf("db/ is stale; run `make generate`:\n%s", out)
	}
}

func TestStaleGeneratedCodeIsCaught(t *testing.T) {
	root := repoRoot(t)
	tmp := t.TempDir()
	copyTree(t, root, tmp, "db", "queries", "migrations")
	q := filepath.Join(tmp, "queries", "worker_groups.sql")
	b, err := os.ReadFile(q)
	if err != nil {
		t.Fatal(err)
	}
	changed := strings.Replace(string(b), "ORDER BY g.name;", "ORDER BY g.name DESC;", 1)
	if changed == string(b) {
		t.Fatal("test fixture no longer matches queries/worker_groups.sql")
	}
	if err := os.WriteFile(q, []byte(changed), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := sqlcDiff(t, root, tmp)
	if err == nil {
		t.Fatalf("sqlc diff accepted a query change without regenerated code:\n%s", out)
	}
	if !strings.Contains(out, "ORDER BY g.name DESC") {
		t.Fatalf("sqlc diff failed without showing the change:\n%s", out)
	}
}
