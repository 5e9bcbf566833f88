package reconcile

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// writerHarness drives a fileWriter with a clock and timers the test moves by hand.
type writerHarness struct {
	w      *fileWriter
	mu     sync.Mutex
	now    time.Time
	timers []chan time.Time
	writes chan map[string]string
	fail   bool
	errs   int
}

func newWriterHarness() *writerHarness {
	h := &writerHarness{now: time.Unix(1000, 0), writes: make(chan map[string]string, 16)}
	h.w = newFileWriter(func(m map[string]string) error {
		h.mu.Lock()
		fail := h.fail
		h.mu.Unlock()
		h.writes <- m
		if fail {
			return errors.New("disk full")
		}
		return nil
	}, time.Second, func(error) { h.mu.Lock(); h.errs++; h.mu.Unlock() })
	h.w.now = func() time.Time { h.mu.Lock(); defer h.mu.Unlock(); return h.now }
	h.w.after = func(time.Duration) <-chan time.Time {
		h.mu.Lock()
		defer h.mu.Unlock()
		c := make(chan time.Time, 1)
		h.timers = append(h.timers, c)
		return c
	}
	return h
}

func (h *writerHarness) start() (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); h.w.Run(ctx) }()
	return func() { cancel(); <-done }
}

func (h *writerHarness) next(t *testing.T) map[string]string {
	t.Helper()
	select {
	case m := <-h.writes:
		return m
	case <-time.After(10 * time.Second):
		t.Fatal("no write")
		return nil
	}
}

// fireWhenArmed waits for the writer to arm its n-th timer and fires it.
func (h *writerHarness) fireWhenArmed(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		h.mu.Lock()
		if len(h.timers) >= n {
			c := h.timers[n-1]
			h.mu.Unlock()
			c <- time.Time{}
			return
		}
		h.mu.Unlock()
		if time.Now().After(deadline) {
			t.Fatalf("timer %d never armed", n)
		}
		time.Sleep(time.Millisecond)
	}
}

func (h *writerHarness) advance(d time.Duration) {
	h.mu.Lock()
	h.now = h.now.Add(d)
	h.mu.Unlock()
}

func snap(v string) map[string]string { return map[string]string{"s": v} }

func TestFileWriterCoalescesABurst(t *testing.T) {
	h := newWriterHarness()
	stop := h.start()
	defer stop()
	h.w.Offer(snap("1"))
	if got := h.next(t); got["s"] != "1" {
		t.Fatalf("first write %v, want it at once", got)
	}
	// Within the period: the burst waits for the timer and only its last snapshot is written.
	for _, v := range []string{"2", "3", "4"} {
		h.w.Offer(snap(v))
	}
	h.fireWhenArmed(t, 1)
	got := h.next(t)
	for got["s"] != "4" {
		// The timer may have fired before the writer took the last snapshot; the clock stands
		// still, so that one waits for a timer of its own.
		h.mu.Lock()
		n := len(h.timers)
		h.mu.Unlock()
		h.fireWhenArmed(t, n+1)
		got = h.next(t)
	}
	// A period later a snapshot is written at once again.
	h.advance(2 * time.Second)
	h.w.Offer(snap("5"))
	if got := h.next(t); got["s"] != "5" {
		t.Fatalf("write after a quiet period = %v, want 5", got)
	}
}

func TestFileWriterRetriesAFailedWrite(t *testing.T) {
	h := newWriterHarness()
	h.fail = true
	stop := h.start()
	defer stop()
	h.w.Offer(snap("1"))
	h.next(t)
	h.mu.Lock()
	h.fail = false
	h.mu.Unlock()
	h.fireWhenArmed(t, 1)
	if got := h.next(t); got["s"] != "1" {
		t.Fatalf("retry wrote %v, want 1", got)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.errs != 1 {
		t.Fatalf("errors reported %d, want 1", h.errs)
	}
}

func TestFileWriterWritesThePendingSnapshotOnStop(t *testing.T) {
	h := newWriterHarness()
	stop := h.start()
	h.w.Offer(snap("1"))
	h.next(t)
	// Inside the period the next snapshot waits for a timer that never fires; stopping
	// writes it.
	h.w.Offer(snap("2"))
	stop()
	if got := h.next(t); got["s"] != "2" {
		t.Fatalf("write on stop = %v, want 2", got)
	}
	select {
	case m := <-h.writes:
		t.Fatalf("extra write %v", m)
	default:
	}
}
