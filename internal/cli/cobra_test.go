package cli

import (
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// walk calls fn for every command of the baton tree but cobra's own (help,
// completion).
func walk(c *cobra.Command, fn func(*cobra.Command)) {
	for _, sub := range c.Commands() {
		if sub.Name() == "help" || sub.Name() == "completion" {
			continue
		}
		fn(sub)
		walk(sub, fn)
	}
}

// Every command has help (Short, Long, Example), --help exits 0 and prints
// its examples, and every read command (list, show, preview) takes --json.
func TestHelpOnEveryCommand(t *testing.T) {
	t.Parallel()
	root := newRootCmd(func(string) string { return "" }, nil, nil, nil)
	root.InitDefaultCompletionCmd()
	n := 0
	walk(root, func(c *cobra.Command) {
		n++
		path := c.CommandPath()
		if c.Short == "" || c.Long == "" || c.Example == "" {
			t.Errorf("%s: Short %q, Long %q, Example %q: each must be set", path, c.Short, c.Long, c.Example)
		}
		if c.HasSubCommands() {
			return
		}
		switch c.Name() {
		case "list", "show", "preview", "status", "version":
			if c.Flags().Lookup("json") == nil {
				t.Errorf("%s: a read command without --json", path)
			}
		}
		if c.Name() != "healthcheck" && c.Flags().Lookup("database-url") == nil {
			t.Errorf("%s: no --database-url", path)
		}
		args := append(strings.Fields(strings.TrimPrefix(path, "baton ")), "--help")
		out, e, code := baton(t, nil, args...)
		if code != 0 || !strings.Contains(out, "Examples:") || !strings.Contains(out, strings.TrimSpace(strings.Split(c.Example, "\n")[0])) || e != "" {
			t.Errorf("baton %s: exit %d, stderr %q, stdout lacks the examples:\n%s", strings.Join(args, " "), code, e, out)
		}
	})
	if n < 40 {
		t.Fatalf("walked %d commands: the tree is not what this test thinks", n)
	}
}

func TestCompletion(t *testing.T) {
	t.Parallel()
	for shell, want := range map[string]string{"bash": "__start_baton", "zsh": "#compdef baton", "fish": "complete -c baton", "powershell": "Register-ArgumentCompleter"} {
		out, e, code := baton(t, nil, "completion", shell)
		if code != 0 || !strings.Contains(out, want) || e != "" {
			t.Errorf("baton completion %s: exit %d, stderr %q, stdout (%d bytes) lacks %q", shell, code, e, len(out), want)
		}
	}
	// The script completes subcommands and flags through `baton __complete`.
	out, _, code := baton(t, nil, "__complete", "task", "l")
	if code != 0 || !strings.HasPrefix(out, "list\t") {
		t.Errorf("__complete task l: %d %q", code, out)
	}
	out, _, code = baton(t, nil, "__complete", "task", "list", "--st")
	if code != 0 || !strings.Contains(out, "--state\t") {
		t.Errorf("__complete task list --st: %d %q", code, out)
	}
}

// A usage error is one "baton: <problem>" line and a pointer at the
// command's --help; no usage dump, nothing on stdout.
func TestUsageErrors(t *testing.T) {
	t.Parallel()
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"task", "list", "--frob"}, "baton: unknown flag: --frob\nRun 'baton task list --help' for usage.\n"},
		{[]string{"tsk"}, `baton: unknown command "tsk" (did you mean "task"?): use `},
		{[]string{"task", "lsit"}, `baton: unknown task subcommand "lsit" (did you mean "list"?): use cancel|list|show|submit` + "\nRun 'baton task --help' for usage.\n"},
		{[]string{"task"}, "baton: task needs a subcommand: cancel|list|show|submit\n"},
		{[]string{"run", "show"}, "baton: missing ID: usage: baton run show ID\nRun 'baton run show --help' for usage.\n"},
		{[]string{"run", "show", "1", "2"}, `baton: unexpected argument "2"`},
		{[]string{"group", "list", "extra"}, `baton: unexpected argument "extra"`},
		{[]string{"task", "list", "--limit"}, "baton: flag needs an argument: --limit\n"},
		{[]string{"task", "list", "--limit", "ten"}, `baton: invalid argument "ten" for "--limit" flag`},
		{[]string{"workflow", "apply"}, "baton: missing -f FILE"},
		{[]string{"run", "rerun", "1"}, "baton: usage: baton run rerun ID (--failed | --from STEP)"},
	}
	for _, tc := range cases {
		out, e, code := baton(t, nil, tc.args...)
		if code != 1 || !strings.HasPrefix(e, tc.want[:strings.Index(tc.want+"\n", "\n")]) || !strings.Contains(e, tc.want) || out != "" {
			t.Errorf("baton %q: exit %d, stdout %q, stderr %q; want exit 1 and %q", tc.args, code, out, e, tc.want)
		}
	}
	// Help is no error: exit 0, on stdout.
	for _, args := range [][]string{nil, {"-h"}, {"--help"}, {"help"}, {"help", "task"}, {"task", "--help"}, {"task", "submit", "-h"}} {
		out, e, code := baton(t, nil, args...)
		if code != 0 || !strings.Contains(out, "Usage:") || e != "" {
			t.Errorf("baton %q: exit %d, stderr %q, stdout %.200q", args, code, e, out)
		}
	}
}
