//go:build !race

package integration

// raceEnabled reports that the tests run under the race detector, so the binaries are built
// with it as well.
const raceEnabled = false
