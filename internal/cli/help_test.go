package cli

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// --help prints flag defaults: the database URL from the environment, with its
// password, must not be one of them.
func TestHelpShowsNoPassword(t *testing.T) {
	t.Parallel()
	const secret = "s3cret-pw"
	env := func(k string) string {
		if k == "BATON_DATABASE_URL" {
			return "postgres://app:" + secret + "@db.example:5432/app"
		}
		return ""
	}
	runs := map[string]func(*bytes.Buffer) int{
		"baton-worker": func(b *bytes.Buffer) int { return WorkerMain(context.Background(), []string{"--help"}, env, nil, b) },
		"baton-master": func(b *bytes.Buffer) int { return MasterMain(context.Background(), []string{"--help"}, env, b) },
		"baton migrate up": func(b *bytes.Buffer) int {
			return BatonMain(context.Background(), []string{"migrate", "up", "--help"}, env, b, b)
		},
		"baton task list": func(b *bytes.Buffer) int {
			return BatonMain(context.Background(), []string{"task", "list", "--help"}, env, b, b)
		},
	}
	for name, run := range runs {
		t.Run(strings.ReplaceAll(name, " ", "_"), func(t *testing.T) {
			var out bytes.Buffer
			if code := run(&out); code != 0 {
				t.Fatalf("exit %d: %s", code, out.String())
			}
			if !strings.Contains(out.String(), "database-url") {
				t.Fatalf("help lacks --database-url:\n%s", out.String())
			}
			if strings.Contains(out.String(), secret) || strings.Contains(out.String(), "db.example") {
				t.Fatalf("help shows the database URL:\n%s", out.String())
			}
		})
	}
}
