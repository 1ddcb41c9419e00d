package batontest

import (
	"flag"
	"fmt"
	"os"
	"testing"

	"go.uber.org/goleak"
)

// MainNoLeaks is Main with a goroutine-leak check (go.uber.org/goleak): after the
// tests have run and the server is shut down, a goroutine that was not already
// running when the tests started fails the package, with its stack. Use it as the
// whole body of TestMain:
//
//	func TestMain(m *testing.M) {
//		os.Exit(batontest.MainNoLeaks(m, func(s *batontest.Server) { srv = s }))
//	}
//
// Goroutines the server harness itself starts (testcontainers' reaper and Docker
// client) are running before the tests and are ignored; opts add more exceptions.
func MainNoLeaks(m *testing.M, set func(*Server), opts ...goleak.Option) int {
	var before goleak.Option
	code := Main(m, func(s *Server) {
		set(s)
		before = goleak.IgnoreCurrent()
	})
	return checkLeaks(code, append([]goleak.Option{before}, opts...))
}

// NoLeaks is the goroutine-leak check for a package whose tests need no Postgres:
//
//	func TestMain(m *testing.M) { os.Exit(batontest.NoLeaks(m)) }
func NoLeaks(m *testing.M, opts ...goleak.Option) int {
	before := goleak.IgnoreCurrent()
	return checkLeaks(m.Run(), append([]goleak.Option{before}, opts...))
}

// leakDefaults are goroutines that outlive a test by design: idle HTTP
// connections of the Docker client used to stop a testcontainers server.
var leakDefaults = []goleak.Option{
	goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
	goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
}

func checkLeaks(code int, opts []goleak.Option) int {
	if code != 0 {
		return code // the failure is already reported; leaks after it are noise
	}
	if err := goleak.Find(append(opts, leakDefaults...)...); err != nil {
		fmt.Fprintf(os.Stderr, "batontest: goroutines leaked by the tests (goleak):\n%v\n", err)
		return 1
	}
	return 0
}

// BenchmarksRequested reports whether this test binary was asked to run
// benchmarks (-test.bench). A package whose only database users are benchmarks
// starts its Postgres only then:
//
//	flag.Parse()
//	if !batontest.BenchmarksRequested() { os.Exit(batontest.NoLeaks(m)) }
func BenchmarksRequested() bool {
	if !flag.Parsed() {
		flag.Parse()
	}
	f := flag.Lookup("test.bench")
	return f != nil && f.Value.String() != ""
}
