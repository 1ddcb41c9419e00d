package metrics

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// docs/operations.md lists every metric baton exports, and names no other.
func TestMetricsDocumented(t *testing.T) {
	t.Parallel()
	raw, err := os.ReadFile("../../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(raw)
	start, end := strings.Index(doc, "\n## Metrics\n"), strings.Index(doc, "\n## Alerts\n")
	if start < 0 || end < start {
		t.Fatal("docs/operations.md has no Metrics section before Alerts")
	}
	section := doc[start:end]
	exported := exportedNames(t)
	for name := range exported {
		base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(name, "_bucket"), "_sum"), "_count")
		if !strings.HasPrefix(name, "baton_") || (base != name && exported[base]) {
			continue // a histogram's series are documented by its name
		}
		if strings.HasPrefix(name, "baton_db_pool_") {
			if !strings.Contains(section, "`baton_db_pool_*`") {
				t.Errorf("docs/operations.md does not document %s (baton_db_pool_*)", name)
			}
			continue
		}
		if !strings.Contains(section, "`"+base+"`") {
			t.Errorf("docs/operations.md does not document %s", base)
		}
	}
	for _, name := range regexp.MustCompile("`(baton_[a-z_]+)`").FindAllStringSubmatch(section, -1) {
		if n := name[1]; !exported[n] && !exported[n+"_bucket"] {
			t.Errorf("docs/operations.md documents %s, which baton does not export", n)
		}
	}
}
