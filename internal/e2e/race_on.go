//go:build race

package e2e

// raceBuild: this test binary was built with -race (as `make test` does), so the
// daemons it starts are built with -race too.
const raceBuild = true
