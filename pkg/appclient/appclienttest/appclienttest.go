// Package appclienttest is a stand-in for the agent's app API in tests of apps: it records the
// events apps post and streams the notifications a test sends.
package appclienttest

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/livegate/livegate/pkg/appclient"
)

// Agent is the app API as an app sees it. The zero value answers every event with 204.
type Agent struct {
	// Failures is how many posts fail with 503 before the first is taken.
	Failures int
	// Status, when set, answers every post that does not fail.
	Status int

	mu      sync.Mutex
	calls   int
	got     []string
	sent    []string
	changed chan struct{}
}

// wake tells every waiter something changed; callers hold a.mu.
func (a *Agent) wake() {
	if a.changed != nil {
		close(a.changed)
	}
	a.changed = make(chan struct{})
}

// wait returns a channel closed at the next change.
func (a *Agent) wait() <-chan struct{} {
	if a.changed == nil {
		a.changed = make(chan struct{})
	}
	return a.changed
}

func (a *Agent) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodGet && r.URL.Path == "/v1/app/events" {
		a.stream(w, r)
		return
	}
	event, ok := strings.CutPrefix(r.URL.Path, "/v1/app/events/")
	a.mu.Lock()
	defer a.mu.Unlock()
	a.calls++
	switch {
	case r.Method != http.MethodPost || !ok:
		http.NotFound(w, r)
	case a.calls <= a.Failures:
		w.WriteHeader(http.StatusServiceUnavailable)
	case a.Status != 0:
		w.WriteHeader(a.Status)
	default:
		a.got = append(a.got, event)
		a.wake()
		w.WriteHeader(http.StatusNoContent)
	}
}

// stream sends every notification sent so far, then each new one, as the agent does.
func (a *Agent) stream(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/event-stream")
	w.WriteHeader(http.StatusOK)
	flusher, _ := w.(http.Flusher)
	for next := 0; ; {
		a.mu.Lock()
		pending, changed := a.sent[next:], a.wait()
		next = len(a.sent)
		a.mu.Unlock()
		for _, n := range pending {
			if _, err := fmt.Fprint(w, n); err != nil {
				return
			}
		}
		if flusher != nil {
			flusher.Flush()
		}
		select {
		case <-changed:
		case <-r.Context().Done():
			return
		}
	}
}

// Send streams one notification to every app following the events, now and later.
func (a *Agent) Send(event, data string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.sent = append(a.sent, fmt.Sprintf("id: %d\nevent: %s\ndata: %s\n\n", len(a.sent)+1, event, data))
	a.wake()
}

// Calls is how many events were posted, taken or not.
func (a *Agent) Calls() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.calls
}

// Events are the events taken, in order.
func (a *Agent) Events() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.got...)
}

// WaitFor waits until the events taken are want; the bound is generous, it is a wait, not a
// timing assertion.
func (a *Agent) WaitFor(t testing.TB, want ...string) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		a.mu.Lock()
		got, changed := strings.Join(a.got, ","), a.wait()
		a.mu.Unlock()
		if got == strings.Join(want, ",") {
			return
		}
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("events = %v, want %v", a.Events(), want)
		}
	}
}

// Events reads an agent's event stream r as apps read it (appclient.ReadEvents) onto a channel
// that is closed when r ends.
func Events(r io.Reader) <-chan appclient.Notification {
	ch := make(chan appclient.Notification, 32)
	go func() {
		defer close(ch)
		_ = appclient.ReadEvents(r, func(n appclient.Notification) { ch <- n })
	}()
	return ch
}
