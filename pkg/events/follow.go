package events

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// orphanAfter is how long the server keeps the consumer of a follower that is gone for good
// (each start and reconnect makes it anew, so nothing relies on it lasting).
const orphanAfter = 10 * time.Minute

// FollowHandler gets what Follow reads.
type FollowHandler struct {
	// Event gets each event, in stream order.
	Event func(subject string, ev *livegatev1.Event)
	// Bad, when set, gets a message on the filter that is not an event.
	Bad func(subject string, err error)
	// Error, when set, hears the consumer's own trouble (missed heartbeats, a reconnect); the
	// consumer carries on.
	Error func(error)
}

// Follower reads the events of one filter through a pull consumer of its own, by name. The name
// is fixed rather than random so that a NATS account can grant a client its own consumer and no
// other (deploy/nats).
type Follower struct {
	js     jetstream.JetStream
	name   string
	filter string
	h      FollowHandler
	// last is the stream sequence of the last message handed over (0: none yet). The consumer
	// may deliver a message again when the server restarted before it stored its position, and
	// a consumer made anew starts after it.
	last atomic.Uint64
}

// NewFollower returns a Follower of filter through the consumer called name.
func NewFollower(js jetstream.JetStream, name, filter string, h FollowHandler) *Follower {
	return &Follower{js: js, name: name, filter: filter, h: h}
}

// Follow hands the handler the last event stored on each subject the filter matches, then every
// event stored after it, until ctx is done; each event once, however often Follow is called.
// The first call makes the consumer anew (a restarted follower, which kept nothing of what it
// read, reads the last events again); later, the consumer is made again to start after the last
// event handed over: at each reconnect (the server counts what it sent into a connection that
// died as delivered, so a consumer kept across it would skip those events) and at each later
// call. So an event published while this client was away is read when it is back, where a
// plain subscription would lose it and a publisher that says a thing once, an edge's refusal of
// a route, would not be heard. It returns an error when the consumer cannot be made (no stream
// yet, no connection, no permission) or was deleted: call it again.
func (f *Follower) Follow(ctx context.Context) error {
	nc := f.js.Conn()
	reconnected := nc.StatusChanged(nats.CONNECTED)
	defer nc.RemoveStatusListener(reconnected)
	for {
		again, err := f.consume(ctx, reconnected)
		if err != nil || !again {
			return err
		}
	}
}

// consume makes the consumer and hands over what it delivers until ctx is done (false), the
// connection came back (true: make it again), or the consumer stops on its own (an error).
func (f *Follower) consume(ctx context.Context, reconnected <-chan nats.Status) (bool, error) {
	if err := f.js.DeleteConsumer(ctx, StreamName, f.name); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return false, fmt.Errorf("follow %s: start consumer %s afresh: %w", f.filter, f.name, err)
	}
	cfg := jetstream.ConsumerConfig{
		Name:              f.name,
		FilterSubject:     f.filter,
		DeliverPolicy:     jetstream.DeliverLastPerSubjectPolicy,
		AckPolicy:         jetstream.AckNonePolicy,
		InactiveThreshold: orphanAfter,
	}
	if last := f.last.Load(); last > 0 {
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, last+1
	}
	cons, err := f.js.CreateConsumer(ctx, StreamName, cfg)
	if err != nil {
		return false, fmt.Errorf("follow %s: create consumer %s: %w", f.filter, f.name, err)
	}
	opts := []jetstream.PullConsumeOpt{}
	if f.h.Error != nil {
		opts = append(opts, jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) { f.h.Error(err) }))
	}
	cc, err := cons.Consume(f.handle, opts...)
	if err != nil {
		return false, fmt.Errorf("follow %s: %w", f.filter, err)
	}
	select {
	case <-ctx.Done():
		stop(cc)
		return false, nil
	case <-reconnected:
		stop(cc)
		return true, nil
	case <-cc.Closed():
		// Stopped on its own (the connection closed, the consumer was deleted): the caller
		// follows anew.
		return false, fmt.Errorf("follow %s: the consumer stopped", f.filter)
	}
}

// stop ends a Consume and waits until its handler has run for the last time, so that no event
// of it is handed over beside those of the next consumer.
func stop(cc jetstream.ConsumeContext) {
	cc.Stop()
	select {
	case <-cc.Closed():
	case <-time.After(5 * time.Second):
	}
}

func (f *Follower) handle(m jetstream.Msg) {
	if md, err := m.Metadata(); err == nil {
		for {
			last := f.last.Load()
			if md.Sequence.Stream <= last {
				return
			}
			if f.last.CompareAndSwap(last, md.Sequence.Stream) {
				break
			}
		}
	}
	ev, err := Decode(m.Data())
	if err != nil {
		if f.h.Bad != nil {
			f.h.Bad(m.Subject(), err)
		}
		return
	}
	f.h.Event(m.Subject(), ev)
}
