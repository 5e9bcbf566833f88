package poll_test

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/livegate/livegate/pkg/poll"
)

func TestUntilWaitsForTheCondition(t *testing.T) {
	var calls atomic.Int32
	poll.Until(t, 5*time.Second, time.Millisecond, "third call", func() bool { return calls.Add(1) == 3 })
	if n := calls.Load(); n != 3 {
		t.Fatalf("condition checked %d times, want 3", n)
	}
}

// failRecorder records Fatalf instead of stopping the test, so the failure can be looked at.
type failRecorder struct {
	testing.TB
	msg string
}

func (f *failRecorder) Fatalf(format string, args ...any) { f.msg = fmt.Sprintf(format, args...) }

func TestUntilFailsAtTheDeadline(t *testing.T) {
	f := &failRecorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		poll.Until(f, 20*time.Millisecond, time.Millisecond, "never", func() bool { return f.msg != "" })
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Until did not give up at its deadline")
	}
	if f.msg != "never: not within 20ms" {
		t.Fatalf("failure %q, want \"never: not within 20ms\"", f.msg)
	}
}
