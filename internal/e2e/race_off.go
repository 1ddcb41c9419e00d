//go:build !race

package e2e

// raceBuild: this test binary was built without -race, and so are the daemons.
const raceBuild = false
