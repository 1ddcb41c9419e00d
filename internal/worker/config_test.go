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
