package publisher

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/livegate/livegate/agent/internal/metrics"
	"github.com/livegate/livegate/pkg/events"
	"github.com/livegate/livegate/pkg/kvstore"
	"github.com/livegate/livegate/pkg/natstest"
	"github.com/livegate/livegate/pkg/poll"
	"github.com/livegate/livegate/pkg/wire"
	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

func eventually(t *testing.T, what string, ok func() bool) {
	t.Helper()
	poll.Until(t, 15*time.Second, 20*time.Millisecond, what, ok)
}

// TestOutboxRouteAndEndpoint runs the publisher against an embedded NATS server.
func TestOutboxRouteAndEndpoint(t *testing.T) {
	url := natstest.Embedded(t)
	nc, js := natstest.Connect(t, url)
	b := natstest.Buckets(t, js)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	// A key left behind by an earlier run of the same instance.
	if _, err := kvstore.PutTTL(ctx, js, kvstore.RoutesBucket, "i1", []byte(`{"sessionId":"old"}`), time.Hour); err != nil {
		t.Fatal(err)
	}

	endpoints := make(chan *livegatev1.Endpoint, 8)
	refusals := make(chan *livegatev1.Event, 8)
	p, err := New(nc, Config{InstanceID: "i1", Pool: "p1", SignalingBackend: "10.0.0.1:30000", MediaBackends: []string{"10.0.0.1:30001"},
		LeaseTTL: 3 * time.Second, Source: "livegate-agent/i1"}, zerolog.Nop(), metrics.New(),
		func(ep *livegatev1.Endpoint) { endpoints <- ep }, func(ev *livegatev1.Event) { refusals <- ev })
	if err != nil {
		t.Fatal(err)
	}
	// Queued before Run: nothing is lost while nothing is connected yet.
	const n = 40
	for i := range n {
		p.Publish(&livegatev1.Event{Type: livegatev1.EventType_EVENT_TYPE_CLIENT_CONNECTED, SessionId: fmt.Sprint(i), InstanceId: "i1", Pool: "p1"})
	}
	done := make(chan struct{})
	go func() { defer close(done); p.Run(ctx) }()

	eventually(t, "stale route deleted", func() bool {
		_, err := b.Routes.Get(ctx, "i1")
		return errors.Is(err, jetstream.ErrKeyNotFound)
	})
	fctx, fcancel := context.WithTimeout(ctx, 15*time.Second)
	defer fcancel()
	if err := p.Flush(fctx); err != nil {
		t.Fatal(err)
	}
	cons, err := js.OrderedConsumer(ctx, events.StreamName, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	batch, err := cons.Fetch(n, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	i := 0
	for msg := range batch.Messages() {
		ev, err := events.Decode(msg.Data())
		if err != nil || ev.SessionId != fmt.Sprint(i) || ev.Source != "livegate-agent/i1" {
			t.Fatalf("event %d: %v %v", i, ev, err)
		}
		i++
	}
	if i != n {
		t.Fatalf("%d events, want %d", i, n)
	}

	p.SetRoute("s1")
	var route livegatev1.Route
	eventually(t, "route written", func() bool {
		e, err := b.Routes.Get(ctx, "i1")
		return err == nil && wire.Unmarshal(e.Value(), &route) == nil && route.SessionId == "s1"
	})
	if route.SignalingBackend != "10.0.0.1:30000" || route.LeaseTtl.AsDuration() != 3*time.Second || route.Pool != "p1" {
		t.Errorf("route %v", &route)
	}
	if st := p.Status(); !st.Connected || !st.RouteWritten || st.RouteSessionID != "s1" {
		t.Errorf("status %+v", st)
	}

	if got := <-endpoints; got != nil {
		t.Errorf("snapshot endpoint %v, want none", got)
	}
	val, _ := wire.Marshal(&livegatev1.Endpoint{InstanceId: "i1", SessionId: "s1", PublicHost: "edge.example"})
	if _, err := b.Endpoints.Put(ctx, "i1", val); err != nil {
		t.Fatal(err)
	}
	if got := <-endpoints; got == nil || got.PublicHost != "edge.example" {
		t.Errorf("endpoint %v", got)
	}
	if err := b.Endpoints.Delete(ctx, "i1"); err != nil {
		t.Fatal(err)
	}
	if got := <-endpoints; got != nil {
		t.Errorf("endpoint after delete %v", got)
	}

	// An edge's refusal of this route, published under another pool (the edge's own), reaches the
	// agent; a refusal of another instance does not.
	edgeEvents := events.NewPublisher(js, "livegate-edgeproxy/e1")
	for _, ev := range []*livegatev1.Event{
		{Type: livegatev1.EventType_EVENT_TYPE_ROUTE_REFUSED, InstanceId: "i2", Pool: "p1", SessionId: "s9",
			Details: &livegatev1.Event_RouteRefused{RouteRefused: &livegatev1.RouteRefused{EdgeId: "e1", Reason: "other"}}},
		{Type: livegatev1.EventType_EVENT_TYPE_ROUTE_REFUSED, InstanceId: "i1", Pool: "edgepool", SessionId: "s1",
			Details: &livegatev1.Event_RouteRefused{RouteRefused: &livegatev1.RouteRefused{EdgeId: "e1", Reason: "signaling_backend: port outside 30000-32767"}}},
	} {
		if err := edgeEvents.Publish(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	if got := <-refusals; got.InstanceId != "i1" || got.GetRouteRefused().GetReason() != "signaling_backend: port outside 30000-32767" {
		t.Errorf("refusal %v", got)
	}

	p.SetRoute("")
	if err := p.Flush(fctx); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Routes.Get(ctx, "i1"); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Errorf("route after SetRoute(\"\"): %v", err)
	}
	cancel()
	<-done
}

// TestRefusalsAreReadFromTheStream: an edge says a refusal once per change of the route, so the
// agent must get one published before it was following (its start, a reconnect) and one
// published after the server restarted.
func TestRefusalsAreReadFromTheStream(t *testing.T) {
	srv := natstest.External(t)
	nc, js := natstest.Connect(t, srv.URL(), nats.ReconnectWait(100*time.Millisecond), nats.MaxReconnects(-1))
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if err := events.EnsureStream(ctx, js); err != nil {
		t.Fatal(err)
	}
	edge := events.NewPublisher(js, "livegate-edgeproxy/e1")
	refuse := func(reason string) {
		t.Helper()
		if err := edge.Publish(ctx, &livegatev1.Event{Type: livegatev1.EventType_EVENT_TYPE_ROUTE_REFUSED, InstanceId: "i1", Pool: "p1", SessionId: "s1",
			Details: &livegatev1.Event_RouteRefused{RouteRefused: &livegatev1.RouteRefused{EdgeId: "e1", Reason: reason}}}); err != nil {
			t.Fatal(err)
		}
	}
	refuse("before the agent followed")

	refusals := make(chan string, 8)
	p, err := New(nc, Config{InstanceID: "i1", Pool: "p1", SignalingBackend: "10.0.0.1:30000", LeaseTTL: 3 * time.Second, Source: "livegate-agent/i1"},
		zerolog.Nop(), metrics.New(), func(*livegatev1.Endpoint) {}, func(ev *livegatev1.Event) { refusals <- ev.GetRouteRefused().GetReason() })
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); p.Run(ctx) }()
	next := func(want string) {
		t.Helper()
		select {
		case got := <-refusals:
			if got != want {
				t.Errorf("refusal %q, want %q", got, want)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("refusal %q never reached the agent", want)
		}
	}
	next("before the agent followed")

	srv.Stop()
	srv.Start()
	eventually(t, "reconnected", nc.IsConnected)
	refuse("after the server restarted")
	next("after the server restarted")
	cancel()
	<-done
}
