// Package observer watches a livegate deployment the way an orchestrator does: every lifecycle
// event on livegate.v1.events.>, and the routes and endpoints KV buckets.
package observer

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/livegate/livegate/pkg/events"
	"github.com/livegate/livegate/pkg/kvstore"
	"github.com/livegate/livegate/pkg/wire"
	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
)

// Observer records events in arrival order.
type Observer struct {
	nc  *nats.Conn
	js  jetstream.JetStream
	sub *nats.Subscription

	mu      sync.Mutex
	events  []Received
	changed chan struct{}
}

// Received is one event with the subject it came on.
type Received struct {
	Subject string
	Header  nats.Header
	Event   *livegatev1.Event
	At      time.Time
}

// CheckEnvelope reports what is wrong with the subject and CloudEvents headers of r.
func (r Received) CheckEnvelope() error {
	ev := r.Event
	var errs []error
	if want := events.Subject(ev.GetPool(), ev.GetInstanceId(), ev.GetType()); r.Subject != want {
		errs = append(errs, fmt.Errorf("subject %s, want %s", r.Subject, want))
	}
	for h, want := range map[string]string{
		events.HeaderSpecVersion: "1.0",
		events.HeaderType:        events.TypePrefix + events.TypeToken(ev.GetType()),
		events.HeaderID:          ev.GetId(),
		events.HeaderSource:      ev.GetSource(),
		jetstream.MsgIDHeader:    ev.GetId(),
	} {
		if got := r.Header.Get(h); got != want || got == "" {
			errs = append(errs, fmt.Errorf("header %s: %q, want %q", h, got, want))
		}
	}
	return errors.Join(errs...)
}

// Connect connects to url (through opts, e.g. a custom dialer) and subscribes to every event.
func Connect(ctx context.Context, url string, opts ...nats.Option) (*Observer, error) {
	var nc *nats.Conn
	var err error
	// NATS may be starting right now: retry until ctx ends.
	for {
		nc, err = nats.Connect(url, append([]nats.Option{nats.Name("livegate-e2e-observer"), nats.Timeout(2 * time.Second)}, opts...)...)
		if err == nil {
			break
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("observer: connect %s: %w", url, err)
		case <-time.After(200 * time.Millisecond):
		}
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("observer: jetstream: %w", err)
	}
	o := &Observer{nc: nc, js: js, changed: make(chan struct{})}
	o.sub, err = nc.Subscribe(events.SubjectPrefix+".>", o.receive)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("observer: subscribe: %w", err)
	}
	if err := nc.FlushTimeout(5 * time.Second); err != nil {
		nc.Close()
		return nil, fmt.Errorf("observer: flush: %w", err)
	}
	return o, nil
}

func (o *Observer) receive(m *nats.Msg) {
	ev, err := events.Decode(m.Data)
	if err != nil {
		ev = &livegatev1.Event{}
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	o.events = append(o.events, Received{Subject: m.Subject, Header: m.Header, Event: ev, At: time.Now()})
	close(o.changed)
	o.changed = make(chan struct{})
}

// Close disconnects.
func (o *Observer) Close() { o.nc.Close() }

// Events returns a copy of what arrived so far.
func (o *Observer) Events() []Received {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]Received(nil), o.events...)
}

// Mark is a position in the event log: Wait after a mark looks only at what came later.
func (o *Observer) Mark() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.events)
}

// Wait waits for the first event at or after position from that is of type t and comes from
// instance (any instance when empty).
func (o *Observer) Wait(ctx context.Context, from int, instance string, t livegatev1.EventType) (Received, error) {
	for {
		o.mu.Lock()
		for _, r := range o.events[min(from, len(o.events)):] {
			if r.Event.GetType() == t && (instance == "" || r.Event.GetInstanceId() == instance) {
				o.mu.Unlock()
				return r, nil
			}
		}
		changed := o.changed
		o.mu.Unlock()
		select {
		case <-ctx.Done():
			return Received{}, fmt.Errorf("no %s event from %q: %w (seen: %s)", events.TypeToken(t), instance, ctx.Err(), o.Summary(from))
		case <-changed:
		}
	}
}

// Summary lists the event types seen from position from, for failure messages.
func (o *Observer) Summary(from int) string {
	var parts []string
	for _, r := range o.Events()[from:] {
		parts = append(parts, r.Event.GetInstanceId()+"/"+events.TypeToken(r.Event.GetType()))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, " ")
}

// Stored counts the messages the LIVEGATE_EVENTS stream keeps: what an orchestrator replays.
func (o *Observer) Stored(ctx context.Context) (uint64, error) {
	st, err := o.js.Stream(ctx, events.StreamName)
	if err != nil {
		return 0, fmt.Errorf("stream %s: %w", events.StreamName, err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		return 0, fmt.Errorf("stream %s: %w", events.StreamName, err)
	}
	return info.State.Msgs, nil
}

// DistinctIDs counts the distinct event ids received: a retried publish arrives twice but is
// stored once.
func (o *Observer) DistinctIDs() int {
	ids := map[string]bool{}
	for _, r := range o.Events() {
		ids[r.Event.GetId()] = true
	}
	return len(ids)
}

// Endpoint reads instance's key in livegate_endpoints; nil when absent.
func (o *Observer) Endpoint(ctx context.Context, instance string) (*livegatev1.Endpoint, error) {
	return get[livegatev1.Endpoint](ctx, o, kvstore.EndpointsBucket, instance)
}

// Route reads instance's key in livegate_routes; nil when absent.
func (o *Observer) Route(ctx context.Context, instance string) (*livegatev1.Route, error) {
	return get[livegatev1.Route](ctx, o, kvstore.RoutesBucket, instance)
}

// get reads key in bucket as a P; nil when the bucket or the key is absent.
func get[T any, P interface {
	*T
	proto.Message
}](ctx context.Context, o *Observer, bucket, key string) (P, error) {
	kv, err := o.js.KeyValue(ctx, bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("bucket %s: %w", bucket, err)
	}
	e, err := kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("get %s/%s: %w", bucket, key, err)
	}
	v := P(new(T))
	if err := wire.Unmarshal(e.Value(), v); err != nil {
		return nil, fmt.Errorf("decode %s/%s: %w", bucket, key, err)
	}
	return v, nil
}
