package worker_test

import (
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
