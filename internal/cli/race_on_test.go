//go:build race

package cli

// raceBuild: the test binary has -race, so the binaries TestMalformedInputs runs
// are built with it too (a race report makes a binary exit 66, failing the test).
const raceBuild = true
