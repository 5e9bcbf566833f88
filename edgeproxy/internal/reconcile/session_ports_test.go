package reconcile_test

import (
	"context"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/livegate/livegate/edgeproxy/internal/mediaplane"
	"github.com/livegate/livegate/edgeproxy/internal/mediaplane/mediaplanetest"
	"github.com/livegate/livegate/edgeproxy/internal/portalloc"
	"github.com/livegate/livegate/edgeproxy/internal/reconcile"
	"github.com/livegate/livegate/pkg/events"
	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// recordingCleaner records the ports whose conntrack entries the media plane deleted.
type recordingCleaner struct {
	mu    sync.Mutex
	ports map[uint16]bool
}

func (c *recordingCleaner) DeleteUDP(_ context.Context, _ netip.Addr, ports []uint16) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, p := range ports {
		c.ports[p] = true
	}
	return nil
}

func (c *recordingCleaner) flushed(p uint16) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ports[p]
}

// runLoop runs a reconciler over e's buckets with the rest of d until the test ends.
func runLoop(t *testing.T, e env, cfg reconcile.Config, d reconcile.Deps) {
	t.Helper()
	d.JS, d.Buckets = e.js, e.kv
	r, err := reconcile.New(cfg, d)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = r.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

// TestNewSessionGetsFreshPorts changes the session id of a live route (an agent that stays up
// and becomes ready under a new id), then deletes the route and writes it again under a third
// id (an agent restarted on the same instance): each new session gets public ports no earlier
// session of the instance held, and the previous session's ports are flushed from conntrack
// and left in quarantine, so its client's packets never reach the next user's app.
func TestNewSessionGetsFreshPorts(t *testing.T) {
	e := newEnv(t)
	cfg := config("edge-a", "default")
	cleaner := &recordingCleaner{ports: map[uint16]bool{}}
	plane, err := mediaplane.New(mediaplane.Config{
		PublicIP: netip.MustParseAddr("198.18.1.1"), Ports: portalloc.Range{First: 10500, Last: 10599}, SNAT: true,
		BackendCIDRs: cfg.Policy.BackendCIDRs, BackendPorts: portalloc.Range{First: 1024, Last: 65535}, Quarantine: time.Hour,
	}, append(mediaplanetest.New().Options(), mediaplane.WithConntrack(cleaner))...)
	if err != nil {
		t.Fatal(err)
	}
	runLoop(t, e, cfg, reconcile.Deps{
		Driver: &recordingDriver{m: map[string]string{}}, Media: plane,
		Events: events.NewPublisher(e.js, "test/edge-a"), Metrics: reconcile.NewMetrics(prometheus.NewRegistry()),
		Log: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel),
	})

	route := func(session string) *livegatev1.Route {
		return &livegatev1.Route{SessionId: session, SignalingBackend: "127.0.0.1:30000", MediaBackends: []string{"127.0.0.1:31000"}, EdgeId: "edge-a"}
	}
	portsOf := func(session string) []uint32 {
		t.Helper()
		var ports []uint32
		waitFor(t, "endpoint of "+session, func() bool {
			ep := endpointOf(t, e, "i1")
			ports = ep.GetPublicUdpPorts()
			return ep.GetSessionId() == session && len(ports) == 1
		})
		return ports
	}
	var earlier []uint32
	next := func(session string) {
		t.Helper()
		got := portsOf(session)
		if slices.Contains(earlier, got[0]) {
			t.Fatalf("session %s got port %d, which an earlier session of the instance held (%v)", session, got[0], earlier)
		}
		if len(earlier) > 0 {
			old := uint16(earlier[len(earlier)-1])
			waitFor(t, "conntrack flush of the previous session's port", func() bool { return cleaner.flushed(old) })
		}
		earlier = append(earlier, got[0])
	}

	putRoute(t, e, "i1", route("session-a"))
	next("session-a")
	putRoute(t, e, "i1", route("session-b"))
	next("session-b")
	if err := e.kv.Routes.Delete(context.Background(), "i1"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "endpoint removed", func() bool { return endpointOf(t, e, "i1") == nil })
	putRoute(t, e, "i1", route("session-c"))
	next("session-c")
	if inUse, quarantined, _ := plane.Usage(); inUse != 1 || quarantined != 2 {
		t.Fatalf("ports in use %d, in quarantine %d; want 1 and the 2 of the earlier sessions", inUse, quarantined)
	}
}
