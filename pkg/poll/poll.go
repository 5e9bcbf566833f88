// Package poll waits in tests for a condition that something running beside the test
// makes true (a loop reconciling, a server replying, a message arriving): it checks the
// condition again and again and fails the test when the condition is still false at a deadline.
package poll

import (
	"testing"
	"time"
)

// Until checks ok until it holds, sleeping for the duration every between two checks, and
// fails the test, naming what, when ok still does not hold once the duration within has passed.
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
