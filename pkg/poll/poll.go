// Package poll waits in tests for a condition that something running beside the test
// makes true (a loop reconciling, a server replying, a message arriving): it checks the
// condition again and again and fails the test when the condition is still false at a deadline.
package poll

import (
	"testing"
	"time"
)

// Until checks ok, sleeping every between checks, until it holds, and fails the test, naming
// what, when it still does not hold after within.
func Until(t testing.TB, within, every time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, within)
		}
		time.Sleep(every)
	}
}
