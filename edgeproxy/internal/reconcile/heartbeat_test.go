package reconcile_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/livegate/livegate/edgeproxy/internal/haproxy"
	"github.com/livegate/livegate/edgeproxy/internal/media"
	"github.com/livegate/livegate/edgeproxy/internal/reconcile"
	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// gate blocks whoever calls wait once it is armed, until it is released (or ctx ends); entered
// is closed when the first caller blocks.
type gate struct {
	mu      sync.Mutex
	armed   bool
	entered chan struct{}
	release chan struct{}
	once    sync.Once
}

func newGate() *gate { return &gate{entered: make(chan struct{}), release: make(chan struct{})} }

func (g *gate) arm() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.armed = true
}

func (g *gate) open() { g.once.Do(func() { close(g.release) }) }

func (g *gate) wait(ctx context.Context) {
	g.mu.Lock()
	armed := g.armed
	if armed {
		g.armed = false
		close(g.entered)
	}
	g.mu.Unlock()
	if !armed {
		return
	}
	select {
	case <-g.release:
	case <-ctx.Done():
	}
}

// slowDriver is an in-memory HAProxy map whose Apply blocks on its gate: a pass that takes as
// long as the test wants.
type slowDriver struct {
	recordingDriver
	g *gate
}

func (d *slowDriver) Apply(ctx context.Context, set map[string]string, del []string) error {
	d.g.wait(ctx)
	return d.recordingDriver.Apply(ctx, set, del)
}

// lockingPlane is a media plane that, like the kernel one, holds its lock through a batch, so
// Capacity waits for a batch to finish; its Sync blocks on its gate.
type lockingPlane struct {
	*portPlane
	mu sync.Mutex
	g  *gate
}

func (p *lockingPlane) Sync(ctx context.Context, _ map[string][]media.Mapping) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.g.wait(ctx)
	return nil
}

func (p *lockingPlane) Capacity() (int, int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.portPlane.Capacity()
}

// TestHeartbeatOutlivesABlockedLoop blocks the loop longer than the edge TTL, in a pass (the
// HAProxy driver) and behind a media batch (the plane's lock), and requires the heartbeat key
// to be written again and again meanwhile and never to lapse: the pool must not take over the
// routes of an edge that is only busy.
func TestHeartbeatOutlivesABlockedLoop(t *testing.T) {
	for name, mk := range map[string]func(g *gate) (haproxy.Driver, media.Plane){
		"slow pass": func(g *gate) (haproxy.Driver, media.Plane) {
			return &slowDriver{recordingDriver: recordingDriver{m: map[string]string{}}, g: g}, newPortPlane(10500)
		},
		"media batch holding the plane": func(g *gate) (haproxy.Driver, media.Plane) {
			return &recordingDriver{m: map[string]string{}}, &lockingPlane{portPlane: newPortPlane(10500), g: g}
		},
	} {
		t.Run(name, func(t *testing.T) {
			e := newEnv(t)
			cfg := config("edge-hb", "default")
			g := newGate()
			driver, plane := mk(g)
			r, err := reconcile.New(cfg, reconcile.Deps{
				JS: e.js, Buckets: e.kv, Driver: driver, Media: plane, Metrics: reconcile.NewMetrics(prometheus.NewRegistry()),
				Log: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel),
			})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { defer close(done); _ = r.Run(ctx) }()
			t.Cleanup(func() {
				g.open()
				cancel()
				<-done
			})
			waitFor(t, "first pass", func() bool { return r.Healthy() == nil })

			w, err := e.kv.Edges.Watch(ctx, cfg.EdgeID)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = w.Stop() }()
			if ent := nextEntry(t, w); ent.Operation() != jetstream.KeyValuePut {
				t.Fatalf("no heartbeat: %v", ent.Operation())
			}
			g.arm()
			putRoute(t, e, "inst-1", &livegatev1.Route{SessionId: "sess-1", SignalingBackend: "127.0.0.1:40001",
				MediaBackends: []string{"127.0.0.1:31000"}, EdgeId: cfg.EdgeID})
			<-g.entered

			// Enough beats to span more than the TTL while the loop stays blocked: a lapse would
			// show as a delete or purge marker (the bucket has limit markers) before they are in.
			beats := int(cfg.EdgeTTL/cfg.Heartbeat) + 2
			var last uint64
			for n := 0; n < beats; {
				ent := nextEntry(t, w)
				if ent.Operation() != jetstream.KeyValuePut {
					t.Fatalf("heartbeat key lapsed after %d beats with the loop blocked: %v at revision %d", n, ent.Operation(), ent.Revision())
				}
				if ent.Revision() <= last {
					t.Fatalf("heartbeat revision %d after %d", ent.Revision(), last)
				}
				if _, err := e.kv.Edges.Get(ctx, cfg.EdgeID); err != nil {
					t.Fatalf("heartbeat key after %d beats with the loop blocked: %v", n, err)
				}
				last = ent.Revision()
				n++
			}
			g.open()
			waitFor(t, "endpoint once the loop is unblocked", func() bool { return endpointOf(t, e, "inst-1") != nil })
		})
	}
}

// nextEntry is the watch's next entry, skipping the end of its initial values.
func nextEntry(t *testing.T, w jetstream.KeyWatcher) jetstream.KeyValueEntry {
	t.Helper()
	for {
		select {
		case ent := <-w.Updates():
			if ent != nil {
				return ent
			}
		case <-time.After(20 * time.Second):
			t.Fatal("timed out waiting for a heartbeat")
		}
	}
}
