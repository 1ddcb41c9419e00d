package invoicing_test

import (
	"testing"

	"go.uber.org/goleak"
)

// Every worker, master and client the tests start is gone when they end.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
