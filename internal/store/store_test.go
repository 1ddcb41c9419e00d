package store

import (
	"strings"
	"testing"
)

// FuzzParseConfig: any DSN either parses or gets a one-line error that never
// echoes the password.
func FuzzParseConfig(f *testing.F) {
	f.Add("postgres://u:secretpw@localhost:5432/db")
	f.Add("host=x user=u password=secretpw dbname=d")
	f.Add("postgres://u:secretpw@%zz/db")
	f.Add("")
	f.Add("postgres://u:secretpw@h:99999/db")
	f.Fuzz(func(t *testing.T, dsn string) {
		_, err := ParseConfig(dsn)
		if err == nil {
			return
		}
		msg := err.Error()
		if strings.Contains(msg, "\n") {
			t.Fatalf("multi-line error for %q: %q", dsn, msg)
		}
		if strings.Contains(dsn, "secretpw") && strings.Contains(msg, "secretpw") {
			t.Fatalf("error leaks the password: %q", msg)
		}
	})
}
