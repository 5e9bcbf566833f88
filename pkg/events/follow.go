package events

import (
	"context"
	"fmt"
	"time"

	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
	"github.com/nats-io/nats.go/jetstream"
)

// orphanAfter is how long the server keeps a follower's consumer that nobody reads.
const orphanAfter = 30 * time.Second

// FollowHandler gets what Follow reads.
type FollowHandler struct {
	// Event gets each event, in stream order.
	Event func(subject string, ev *livegatev1.Event)
	// Bad, when set, gets a message on the filter that is not an event.
	Bad func(subject string, err error)
	// Error, when set, hears the consumer's own trouble (missed heartbeats, a reset after a
	// reconnect); the consumer carries on.
	Error func(error)
}

// Follow hands h the last event stored on each subject that filter matches, then every event
// stored after it, until ctx is done. An event published while this client was away is read
// when it is back: an ordered consumer resumes after the last message it delivered, where a
// plain subscription would have lost it, and a publisher that says a thing once (an edge's
// refusal of a route) is not heard again. It returns an error when the consumer cannot be made
// (no stream yet, no connection) or stops on its own: call it again.
func Follow(ctx context.Context, js jetstream.JetStream, filter string, h FollowHandler) error {
	cons, err := js.OrderedConsumer(ctx, StreamName, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{filter},
		DeliverPolicy:  jetstream.DeliverLastPerSubjectPolicy,
		// A consumer left behind by a reset (a reconnect, a restarted server) goes soon: a
		// client allowed only to read its own events may not delete it (deploy/nats).
		InactiveThreshold: orphanAfter,
	})
	if err != nil {
		return fmt.Errorf("follow %s: %w", filter, err)
	}
	opts := []jetstream.PullConsumeOpt{}
	if h.Error != nil {
		opts = append(opts, jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) { h.Error(err) }))
	}
	cc, err := cons.Consume(func(m jetstream.Msg) {
		ev, err := Decode(m.Data())
		if err != nil {
			if h.Bad != nil {
				h.Bad(m.Subject(), err)
			}
			return
		}
		h.Event(m.Subject(), ev)
	}, opts...)
	if err != nil {
		return fmt.Errorf("follow %s: %w", filter, err)
	}
	select {
	case <-ctx.Done():
		cc.Stop()
		return nil
	case <-cc.Closed():
		// Stopped on its own (the connection closed, the consumer could not be made again):
		// the caller follows anew.
		return fmt.Errorf("follow %s: the consumer stopped", filter)
	}
}
