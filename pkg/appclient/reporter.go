// Package appclient is the app's side of the agent's loopback app API: Reporter posts the app's
// lifecycle events, Follow reads the agent's notification stream.
package appclient

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/rs/zerolog"
)

// Reporter posts the app's events to its agent's loopback app API, one at a time and in order (a
// disconnect must never overtake its connect), retrying while the agent is not up yet.
type Reporter struct {
	base   string
	client *http.Client
	retry  time.Duration
	log    zerolog.Logger
	queue  chan string
	done   chan struct{}
}

// NewReporter posts to http://agentAddr/v1/app/events/<event>; each event is retried for up to
// retry. Run must be running for events to leave.
func NewReporter(agentAddr string, retry time.Duration, log zerolog.Logger) *Reporter {
	return &Reporter{
		base:   "http://" + agentAddr + "/v1/app/events/",
		client: &http.Client{Timeout: 2 * time.Second},
		retry:  retry,
		log:    log,
		queue:  make(chan string, 256),
		done:   make(chan struct{}),
	}
}

// Notify queues an event; when the queue is full the event is dropped with a warning rather than
// blocking a connection handler.
func (r *Reporter) Notify(event string) {
	select {
	case r.queue <- event:
	default:
		r.log.Warn().Str("event", event).Msg("agent event queue full, event dropped")
	}
}

// shutdownGrace is how long an event may still take once the app is shutting down, so the last
// disconnect is reported without holding the exit up for long.
const shutdownGrace = 2 * time.Second

// Run posts queued events until ctx is done, then posts what is still queued; Done is closed when
// it returns.
func (r *Reporter) Run(ctx context.Context) {
	defer close(r.done)
	for {
		select {
		case ev := <-r.queue:
			r.post(ctx, ev)
		case <-ctx.Done():
			for {
				select {
				case ev := <-r.queue:
					r.post(ctx, ev)
				default:
					return
				}
			}
		}
	}
}

// post delivers one event, retrying for up to r.retry; once shutdown is done only shutdownGrace
// remains.
func (r *Reporter) post(shutdown context.Context, event string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(shutdown), r.retry)
	defer cancel()
	stop := context.AfterFunc(shutdown, func() { time.AfterFunc(shutdownGrace, cancel) })
	defer stop()
	backoff := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		err := r.postOnce(ctx, event)
		if err == nil {
			r.log.Info().Str("event", event).Int("attempts", attempt).Msg("reported event to agent")
			return
		}
		var perm permanentError
		if errors.As(err, &perm) {
			r.log.Warn().Str("event", event).Err(perm.error).Msg("agent refused event")
			return
		}
		select {
		case <-ctx.Done():
			r.log.Warn().Str("event", event).Int("attempts", attempt).Err(err).Msg("could not report event to agent")
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, time.Second)
	}
}

// Done is closed once Run has returned.
func (r *Reporter) Done() <-chan struct{} { return r.done }

// permanentError is an answer that a retry would not change.
type permanentError struct{ error }

func (r *Reporter) postOnce(ctx context.Context, event string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.base+event, nil)
	if err != nil {
		return permanentError{fmt.Errorf("build request: %w", err)}
	}
	resp, err := r.client.Do(req)
	if err != nil {
		return err
	}
	_ = resp.Body.Close()
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		return nil
	case resp.StatusCode >= 400 && resp.StatusCode < 500:
		return permanentError{fmt.Errorf("answer %s", resp.Status)}
	default:
		return fmt.Errorf("answer %s", resp.Status)
	}
}
