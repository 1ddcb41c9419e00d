package worker_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/baton-scheduler/baton/internal/worker"
)

func TestConfigDefaults(t *testing.T) {
	t.Parallel()
	c := worker.Config{DatabaseURL: "postgres://x/y"}.WithDefaults()
	if c.KillGrace != worker.KillGraceDefault || c.Clock == nil || c.SelfFenceAfter != worker.SelfFenceAfterDefault {
		t.Fatalf("defaults: %+v", c)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	c.KillGrace = -time.Second
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "kill grace") {
		t.Fatalf("negative kill grace: %v", err)
	}
}

// The crash fence must fire before a master may declare the worker dead by crash
// detection, and after a heartbeat interval (else it fires between two beats).
func TestConfigCrashFence(t *testing.T) {
	t.Parallel()
	c := worker.Config{DatabaseURL: "postgres://x/y"}.WithDefaults()
	if c.CrashDetectAfter != 1500*time.Millisecond || c.CrashFenceAfter != 1250*time.Millisecond {
		t.Fatalf("crash defaults: %s, %s", c.CrashDetectAfter, c.CrashFenceAfter)
	}
	for _, tc := range []struct {
		detect, fence time.Duration
		want          string
	}{
		{2 * time.Second, 2 * time.Second, "below the crash detection age"},
		{2 * time.Second, 3 * time.Second, "below the crash detection age"},
		{2 * time.Second, time.Second, "above the heartbeat interval"},
		{-2 * time.Second, 0, "negative"},
		{worker.CrashDetectOff, 5 * time.Second, ""},
	} {
		c := worker.Config{DatabaseURL: "postgres://x/y", CrashDetectAfter: tc.detect, CrashFenceAfter: tc.fence}.WithDefaults()
		err := c.Validate()
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("detect %s fence %s: %v, want %q", tc.detect, tc.fence, err, tc.want)
		}
	}
}

// Several groups: Groups replaces Group and Slots; each bad entry is named.
func TestConfigGroups(t *testing.T) {
	t.Parallel()
	ok := worker.Config{DatabaseURL: "postgres://x/y", Groups: []worker.GroupSlots{{Name: "a", Slots: 1}, {Name: "b", Slots: 3}}}.WithDefaults()
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	if ok.Group != "" || ok.Slots != 0 {
		t.Fatalf("defaults filled Group/Slots beside Groups: %q %d", ok.Group, ok.Slots)
	}
	if s := ok.Served(); len(s) != 2 || s[1] != (worker.GroupSlots{Name: "b", Slots: 3}) {
		t.Fatalf("served %v", s)
	}
	if s := (worker.Config{}).WithDefaults().Served(); len(s) != 1 || s[0] != (worker.GroupSlots{Name: worker.GroupDefault, Slots: worker.SlotsDefault}) {
		t.Fatalf("single-group default served %v", s)
	}
	many := make([]worker.GroupSlots, worker.MaxGroups+1)
	for i := range many {
		many[i] = worker.GroupSlots{Name: fmt.Sprintf("g%d", i), Slots: 1}
	}
	for _, tc := range []struct {
		cfg  worker.Config
		want string
	}{
		{worker.Config{Group: "a", Groups: []worker.GroupSlots{{Name: "b", Slots: 1}}}, "both group"},
		{worker.Config{Slots: 2, Groups: []worker.GroupSlots{{Name: "b", Slots: 1}}}, "both group"},
		{worker.Config{Groups: []worker.GroupSlots{{Name: "a", Slots: 1}, {Name: "a", Slots: 2}}}, `group "a" is named twice`},
		{worker.Config{Groups: []worker.GroupSlots{{Name: "a", Slots: 0}}}, `slots 0 of group "a" is outside 1..10000`},
		{worker.Config{Groups: []worker.GroupSlots{{Name: "a", Slots: 10001}}}, `slots 10001 of group "a"`},
		{worker.Config{Groups: []worker.GroupSlots{{Name: "-a", Slots: 1}}}, `group "-a" must be`},
		{worker.Config{Groups: []worker.GroupSlots{{Name: "", Slots: 1}}}, `group "" must be`},
		{worker.Config{Groups: many}, "65 groups is more than 64"},
	} {
		tc.cfg.DatabaseURL = "postgres://x/y"
		err := tc.cfg.WithDefaults().Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.cfg.Groups, err, tc.want)
		}
	}
}
