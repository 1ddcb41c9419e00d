package devenv

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"

	"github.com/baton-scheduler/baton/batontest"
	"github.com/baton-scheduler/baton/internal/cli"
)

func TestMain(m *testing.M) { os.Exit(batontest.NoLeaks(m)) }

// baton dev reaches the CLI only through cmd/baton's registration, and refuses
// what it does not understand before starting anything.
func TestCommandFlags(t *testing.T) {
	t.Parallel()
	env := func(string) string { return "" }
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"extra"}, `unexpected argument "extra"`},
		{[]string{"--frob"}, "flag provided but not defined: -frob"},
	}
	for _, tc := range cases {
		var out, errb bytes.Buffer
		if code := cli.BatonMain(context.Background(), append([]string{"dev"}, tc.args...), env, &out, &errb, Command); code != 1 || !strings.Contains(errb.String(), "baton: "+tc.want) {
			t.Errorf("baton dev %q: exit %d, stderr %q; want %q", tc.args, code, errb.String(), tc.want)
		}
	}
	var out, errb bytes.Buffer
	if code := cli.BatonMain(context.Background(), []string{"dev", "extra"}, env, &out, &errb); code != 1 || !strings.Contains(errb.String(), `unknown command "dev"`) {
		t.Errorf("baton dev without the registration: exit %d, stderr %q", code, errb.String())
	}
}
