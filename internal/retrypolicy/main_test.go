package retrypolicy

import (
	"os"
	"testing"

	"github.com/baton-scheduler/baton/batontest"
)

// TestMain checks for leaked goroutines; the package needs no Postgres.
func TestMain(m *testing.M) { os.Exit(batontest.NoLeaks(m)) }
