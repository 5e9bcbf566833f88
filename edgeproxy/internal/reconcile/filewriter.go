package reconcile

import (
	"context"
	"time"
)

// fileWriter writes the latest of a stream of snapshots off the caller's path: a snapshot
// offered less than one period after the previous write waits for the period to end, and a newer one
// replaces it meanwhile, so a burst of changes costs one write per period whatever its size.
// A failed write is tried again a period later, and the pending snapshot is written when Run's
// context ends.
type fileWriter struct {
	write   func(map[string]string) error
	every   time.Duration
	onError func(error)
	now     func() time.Time
	after   func(time.Duration) <-chan time.Time
	in      chan map[string]string
}

func newFileWriter(write func(map[string]string) error, every time.Duration, onError func(error)) *fileWriter {
	return &fileWriter{write: write, every: every, onError: onError, now: time.Now, after: time.After, in: make(chan map[string]string, 1)}
}

// Offer hands over a snapshot the caller no longer changes. Only one goroutine may call it.
func (w *fileWriter) Offer(m map[string]string) {
	select {
	case w.in <- m:
	default:
		// Run has not taken the previous one yet: replace it. Run only ever takes from in, so
		// the send after the drain cannot block.
		select {
		case <-w.in:
		default:
		}
		w.in <- m
	}
}

// Run writes offered snapshots until ctx ends, then writes the one still pending.
func (w *fileWriter) Run(ctx context.Context) {
	var (
		pending map[string]string
		has     bool
		last    time.Time
		timer   <-chan time.Time
	)
	flush := func() {
		if err := w.write(pending); err != nil {
			w.onError(err)
			timer = w.after(w.every)
		} else {
			has = false
		}
		last = w.now()
	}
	for {
		select {
		case <-ctx.Done():
			select {
			case pending, has = <-w.in:
			default:
			}
			if has {
				if err := w.write(pending); err != nil {
					w.onError(err)
				}
			}
			return
		case pending = <-w.in:
			has = true
			if timer != nil {
				continue
			}
			if wait := last.Add(w.every).Sub(w.now()); wait > 0 && !last.IsZero() {
				timer = w.after(wait)
				continue
			}
			flush()
		case <-timer:
			timer = nil
			if has {
				flush()
			}
		}
	}
}
