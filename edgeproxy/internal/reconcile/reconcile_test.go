package reconcile_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/livegate/livegate/edgeproxy/internal/haproxy/haproxytest"
	"github.com/livegate/livegate/edgeproxy/internal/media"
	"github.com/livegate/livegate/edgeproxy/internal/placement"
	"github.com/livegate/livegate/edgeproxy/internal/portalloc"
	"github.com/livegate/livegate/edgeproxy/internal/reconcile"
	"github.com/livegate/livegate/edgeproxy/internal/routes"
	"github.com/livegate/livegate/pkg/events"
	"github.com/livegate/livegate/pkg/kvstore"
	"github.com/livegate/livegate/pkg/natstest"
	"github.com/livegate/livegate/pkg/poll"
	"github.com/livegate/livegate/pkg/wire"
	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"google.golang.org/protobuf/types/known/timestamppb"
)

type env struct {
	js jetstream.JetStream
	kv *kvstore.Buckets
}

func newEnv(t testing.TB) env {
	t.Helper()
	_, js := natstest.Connect(t, natstest.Embedded(t))
	kv := natstest.Buckets(t, js)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := events.EnsureStream(ctx, js); err != nil {
		t.Fatal(err)
	}
	return env{js: js, kv: kv}
}

type edge struct {
	r      *reconcile.Reconciler
	h      *haproxytest.Instance
	cancel context.CancelFunc
	done   chan struct{}
}

func policy() routes.Policy {
	return routes.Policy{BackendCIDRs: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}, BackendPorts: portalloc.Range{First: 1024, Last: 65535}}
}

func config(id, pool string) reconcile.Config {
	return reconcile.Config{
		EdgeID: id, Pool: pool, PublicHost: id + ".example.test", SignalingPort: 48322, Policy: policy(),
		MaxRoutes: 10000, Resync: time.Hour, Heartbeat: 300 * time.Millisecond, EdgeTTL: 2 * time.Second,
		ClaimDelayStep: 2 * time.Millisecond, MaxClaimDelay: 200 * time.Millisecond, Version: "test",
	}
}

// startEdge runs a reconciler against h until the test ends or stop is called.
func startEdge(t testing.TB, e env, cfg reconcile.Config, h *haproxytest.Instance, plane media.Plane) *edge {
	t.Helper()
	return startEdgeWith(t, e, cfg, h, plane, prometheus.NewRegistry(), nil)
}

// startEdgeWith runs an edge with its metrics in reg and its drain state from drain (nil:
// never draining).
func startEdgeWith(t testing.TB, e env, cfg reconcile.Config, h *haproxytest.Instance, plane media.Plane, reg prometheus.Registerer, drain func() placement.Drain) *edge {
	t.Helper()
	r, err := reconcile.New(cfg, reconcile.Deps{
		JS: e.js, Buckets: e.kv, Driver: h.Driver, Media: plane, Drain: drain,
		Events: events.NewPublisher(e.js, "test/"+cfg.EdgeID), Metrics: reconcile.NewMetrics(reg),
		Log: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel).With().Str("edge", cfg.EdgeID).Logger(),
	}, reconcile.WithMapFile(h.MapFile))
	if err != nil {
		t.Fatal(err)
	}
	h.OnReady(r.Resync)
	ctx, cancel := context.WithCancel(context.Background())
	ed := &edge{r: r, h: h, cancel: cancel, done: make(chan struct{})}
	go func() { defer close(ed.done); _ = r.Run(ctx) }()
	t.Cleanup(ed.stop)
	return ed
}

func (e *edge) stop() { e.cancel(); <-e.done }

func putRoute(t testing.TB, e env, key string, r *livegatev1.Route) {
	t.Helper()
	data, err := wire.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.kv.Routes.Put(context.Background(), key, data); err != nil {
		t.Fatal(err)
	}
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	poll.Until(t, 20*time.Second, 20*time.Millisecond, what, cond)
}

func endpointOf(t testing.TB, e env, key string) *livegatev1.Endpoint {
	t.Helper()
	ent, err := e.kv.Endpoints.Get(context.Background(), key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var ep livegatev1.Endpoint
	if err := wire.Unmarshal(ent.Value(), &ep); err != nil {
		t.Fatal(err)
	}
	return &ep
}

func lastEvent(t *testing.T, e env, pool, instance string, typ livegatev1.EventType) *livegatev1.Event {
	t.Helper()
	s, err := e.js.Stream(context.Background(), events.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	msg, err := s.GetLastMsgForSubject(context.Background(), events.Subject(pool, instance, typ))
	if err != nil {
		return nil
	}
	ev, err := events.Decode(msg.Data)
	if err != nil {
		t.Fatal(err)
	}
	return ev
}

func mapSize(t testing.TB, h *haproxytest.Instance) int {
	t.Helper()
	m, err := h.Driver.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return len(m)
}

func dialStatus(port int, id string) int {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	res, _ := haproxytest.Dial(ctx, port, "/sign_in", id)
	return res.Status
}

func TestRouteProgrammedAndRemoved(t *testing.T) {
	e := newEnv(t)
	h := haproxytest.StartNew(t)
	startEdge(t, e, config("edge-a", "default"), h, media.Off{})
	b := haproxytest.StartBackend(t, "app-1", false)
	putRoute(t, e, "inst-1", &livegatev1.Route{SessionId: "sess-1", InstanceId: "inst-1", SignalingBackend: b.Addr.String(), EdgeId: "edge-a"})

	waitFor(t, "endpoint", func() bool { return endpointOf(t, e, "inst-1") != nil })
	ep := endpointOf(t, e, "inst-1")
	if ep.GetEdgeId() != "edge-a" || ep.GetPublicHost() != "edge-a.example.test" || ep.GetSignalingPort() != 48322 || ep.GetSessionId() != "sess-1" {
		t.Fatalf("endpoint %v", ep)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := haproxytest.Dial(ctx, h.Port, "/sign_in", "sess-1")
	if err != nil {
		t.Fatal(err)
	}
	if res.Message != "app-1 /sign_in" || res.Subprotocol != "x-nv-sessionid.sess-1" {
		t.Fatalf("handshake got %+v", res)
	}
	waitFor(t, "route_programmed event", func() bool {
		ev := lastEvent(t, e, "default", "inst-1", livegatev1.EventType_EVENT_TYPE_ROUTE_PROGRAMMED)
		return ev != nil && ev.GetRouteProgrammed().GetEdgeId() == "edge-a"
	})
	// The map file follows the runtime map off the loop's path.
	waitFor(t, "route in the map file", func() bool {
		mapFile, err := os.ReadFile(h.MapFile)
		return err == nil && strings.Contains(string(mapFile), "sess-1 "+b.Addr.String())
	})

	if err := e.kv.Routes.Delete(context.Background(), "inst-1"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "404 after delete", func() bool { return dialStatus(h.Port, "sess-1") == http.StatusNotFound })
	waitFor(t, "endpoint removed", func() bool { return endpointOf(t, e, "inst-1") == nil })
	waitFor(t, "route_removed event", func() bool {
		return lastEvent(t, e, "default", "inst-1", livegatev1.EventType_EVENT_TYPE_ROUTE_REMOVED) != nil
	})
}

// TestRemovalReasons: each way a served route can go is told apart, in the route_removed event
// and in livegate_edge_routes_removed_total.
func TestRemovalReasons(t *testing.T) {
	e := newEnv(t)
	h := haproxytest.StartNew(t)
	reg := prometheus.NewRegistry()
	startEdgeWith(t, e, config("edge-a", "default"), h, media.Off{}, reg, nil)
	b := haproxytest.StartBackend(t, "app-1", false)
	route := func(key, edge, backend string) *livegatev1.Route {
		return &livegatev1.Route{SessionId: "s-" + key, InstanceId: key, SignalingBackend: backend, EdgeId: edge}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, k := range []string{"deleted", "refused", "reassigned"} {
		putRoute(t, e, k, route(k, "edge-a", b.Addr.String()))
	}
	data, err := wire.Marshal(route("expired", "edge-a", b.Addr.String()))
	if err != nil {
		t.Fatal(err)
	}
	// A lease nobody renews: what an agent killed with SIGKILL leaves.
	if _, err := e.kv.Routes.Create(ctx, "expired", data, jetstream.KeyTTL(time.Second)); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"deleted", "refused", "reassigned"} {
		waitFor(t, k+" programmed", func() bool {
			return lastEvent(t, e, "default", k, livegatev1.EventType_EVENT_TYPE_ROUTE_PROGRAMMED) != nil
		})
	}
	if err := e.kv.Routes.Delete(ctx, "deleted"); err != nil {
		t.Fatal(err)
	}
	putRoute(t, e, "refused", route("refused", "edge-a", "192.0.2.1:31000"))
	putRoute(t, e, "reassigned", route("reassigned", "edge-b", b.Addr.String()))
	want := map[string]string{
		"deleted":    "route deleted",
		"expired":    "route lease expired",
		"refused":    "route refused",
		"reassigned": "route no longer served by this edge",
	}
	for k, reason := range want {
		waitFor(t, k+" removed", func() bool {
			return lastEvent(t, e, "default", k, livegatev1.EventType_EVENT_TYPE_ROUTE_REMOVED) != nil
		})
		if got := lastEvent(t, e, "default", k, livegatev1.EventType_EVENT_TYPE_ROUTE_REMOVED).GetRouteRemoved().GetReason(); got != reason {
			t.Errorf("route %s removed with reason %q, want %q", k, got, reason)
		}
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, f := range families {
		if f.GetName() != "livegate_edge_routes_removed_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			got[m.GetLabel()[0].GetValue()] = m.GetCounter().GetValue()
		}
	}
	for k := range want {
		if got[k] != 1 {
			t.Errorf("livegate_edge_routes_removed_total{reason=%q} = %v, want 1 (all: %v)", k, got[k], got)
		}
	}
}

func TestLeaseRenewalIsNotReported(t *testing.T) {
	e := newEnv(t)
	h := haproxytest.StartNew(t)
	startEdge(t, e, config("edge-a", "default"), h, media.Off{})
	b := haproxytest.StartBackend(t, "app-1", false)
	route := &livegatev1.Route{SessionId: "sess-1", InstanceId: "inst-1", SignalingBackend: b.Addr.String(), EdgeId: "edge-a"}
	putRoute(t, e, "inst-1", route)
	var first *livegatev1.Event
	waitFor(t, "route_programmed", func() bool {
		first = lastEvent(t, e, "default", "inst-1", livegatev1.EventType_EVENT_TYPE_ROUTE_PROGRAMMED)
		return first != nil
	})
	for range 3 {
		route.RenewedAt = timestamppb.Now()
		putRoute(t, e, "inst-1", route)
	}
	// The loop takes changes and publishes events in order: once a later route is reported, the
	// renewals have been through.
	putRoute(t, e, "inst-2", &livegatev1.Route{SessionId: "sess-2", InstanceId: "inst-2", SignalingBackend: b.Addr.String(), EdgeId: "edge-a"})
	waitFor(t, "route_programmed of inst-2", func() bool {
		return lastEvent(t, e, "default", "inst-2", livegatev1.EventType_EVENT_TYPE_ROUTE_PROGRAMMED) != nil
	})
	if ev := lastEvent(t, e, "default", "inst-1", livegatev1.EventType_EVENT_TYPE_ROUTE_PROGRAMMED); ev.GetId() != first.GetId() {
		t.Fatalf("a lease renewal was reported as route_programmed: %v after %v", ev, first)
	}
	route.SessionId = "sess-1b"
	putRoute(t, e, "inst-1", route)
	waitFor(t, "route_programmed of the next session", func() bool {
		return lastEvent(t, e, "default", "inst-1", livegatev1.EventType_EVENT_TYPE_ROUTE_PROGRAMMED).GetSessionId() == "sess-1b"
	})
}

func TestThousandRoutesAddedThenRemoved(t *testing.T) {
	e := newEnv(t)
	h := haproxytest.StartNew(t)
	startEdge(t, e, config("edge-a", "default"), h, media.Off{})
	const n = 1000
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	began := time.Now()
	for i := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			putRoute(t, e, fmt.Sprintf("inst-%04d", i), &livegatev1.Route{
				SessionId: fmt.Sprintf("sess-%04d", i), SignalingBackend: fmt.Sprintf("127.0.%d.%d:%d", i/250, i%250+1, 30000+i), EdgeId: "edge-a",
			})
		})
	}
	wg.Wait()
	waitFor(t, "1000 entries", func() bool { return mapSize(t, h) == n })
	t.Logf("1000 routes put and programmed in %v", time.Since(began))
	began = time.Now()
	for i := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			if err := e.kv.Routes.Delete(context.Background(), fmt.Sprintf("inst-%04d", i)); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	waitFor(t, "empty map", func() bool { return mapSize(t, h) == 0 })
	t.Logf("1000 routes deleted and unprogrammed in %v", time.Since(began))
	waitFor(t, "empty map file", func() bool {
		b, err := os.ReadFile(h.MapFile)
		return err == nil && !strings.Contains(string(b), "sess-")
	})
	waitFor(t, "no endpoints left", func() bool {
		keys, err := e.kv.Endpoints.ListKeys(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		count := 0
		for range keys.Keys() {
			count++
		}
		return count == 0
	})
}

func TestHostileRoutesRefused(t *testing.T) {
	e := newEnv(t)
	h := haproxytest.StartNew(t)
	startEdge(t, e, config("edge-a", "default"), h, media.Off{})
	good := haproxytest.StartBackend(t, "good", false)
	hostile := map[string]*livegatev1.Route{
		"bad-session":  {SessionId: "x\nset map /etc/passwd a b", SignalingBackend: good.Addr.String(), EdgeId: "edge-a"},
		"semicolon":    {SessionId: "a;show info", SignalingBackend: good.Addr.String(), EdgeId: "edge-a"},
		"long-session": {SessionId: strings.Repeat("a", 129), SignalingBackend: good.Addr.String(), EdgeId: "edge-a"},
		"bad-cidr":     {SessionId: "s-cidr", SignalingBackend: "10.9.9.9:30000", EdgeId: "edge-a"},
		"bad-port":     {SessionId: "s-port", SignalingBackend: "127.0.0.1:22", EdgeId: "edge-a"},
		"bad-addr":     {SessionId: "s-addr", SignalingBackend: "127.0.0.1:30000 x", EdgeId: "edge-a"},
		"bad-media":    {SessionId: "s-media", SignalingBackend: good.Addr.String(), MediaBackends: []string{"192.0.2.1:30000"}, EdgeId: "edge-a"},
	}
	for k, r := range hostile {
		putRoute(t, e, k, r)
	}
	putRoute(t, e, "fine", &livegatev1.Route{SessionId: "s-fine", SignalingBackend: good.Addr.String(), EdgeId: "edge-a"})
	wantReason := map[string]string{
		"bad-session": "session_id", "semicolon": "session_id", "long-session": "session_id",
		"bad-cidr": "outside the allowed backend CIDRs", "bad-port": "outside the allowed range",
		"bad-addr": "signaling_backend", "bad-media": "media_backends[0]",
	}
	for k, want := range wantReason {
		waitFor(t, "route_refused of "+k, func() bool {
			ev := lastEvent(t, e, "default", k, livegatev1.EventType_EVENT_TYPE_ROUTE_REFUSED)
			return ev != nil && strings.Contains(ev.GetRouteRefused().GetReason(), want) && ev.GetRouteRefused().GetEdgeId() == "edge-a"
		})
	}
	waitFor(t, "good route", func() bool { return endpointOf(t, e, "fine") != nil })
	m, err := h.Driver.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(m) != 1 || m["s-fine"] != good.Addr.String() {
		t.Fatalf("map holds %v, want only s-fine", m)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if res, err := haproxytest.Dial(ctx, h.Port, "/", "s-fine"); err != nil || res.Message != "good /" {
		t.Fatalf("good route: %v %+v", err, res)
	}
}

func TestHAProxyKilledLosesNoRoute(t *testing.T) {
	e := newEnv(t)
	h := haproxytest.StartNew(t)
	startEdge(t, e, config("edge-a", "default"), h, media.Off{})
	b := haproxytest.StartBackend(t, "app", false)
	for i := range 50 {
		putRoute(t, e, fmt.Sprintf("i%d", i), &livegatev1.Route{SessionId: fmt.Sprintf("s%d", i), SignalingBackend: b.Addr.String(), EdgeId: "edge-a"})
	}
	waitFor(t, "50 entries", func() bool { return mapSize(t, h) == 50 })
	pid := h.Supervisor.Pid()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// Routes added while HAProxy is down are programmed once it is back.
	putRoute(t, e, "late", &livegatev1.Route{SessionId: "s-late", SignalingBackend: b.Addr.String(), EdgeId: "edge-a"})
	h.WaitReady(t)
	waitFor(t, "51 entries after restart", func() bool {
		m, err := h.Driver.List(context.Background())
		return err == nil && len(m) == 51
	})
	for _, id := range []string{"s0", "s49", "s-late"} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		res, err := haproxytest.Dial(ctx, h.Port, "/", id)
		cancel()
		if err != nil || res.Message != "app /" {
			t.Fatalf("%s after haproxy restart: %v %+v", id, err, res)
		}
	}
}

func TestDriftIsRepaired(t *testing.T) {
	e := newEnv(t)
	h := haproxytest.StartNew(t)
	ed := startEdge(t, e, config("edge-a", "default"), h, media.Off{})
	b := haproxytest.StartBackend(t, "app", false)
	putRoute(t, e, "i1", &livegatev1.Route{SessionId: "s1", SignalingBackend: b.Addr.String(), EdgeId: "edge-a"})
	waitFor(t, "s1", func() bool { return mapSize(t, h) == 1 })
	ctx := context.Background()
	if err := h.Driver.Apply(ctx, map[string]string{"rogue": "127.0.0.1:1", "s1": "127.0.0.1:2"}, nil); err != nil {
		t.Fatal(err)
	}
	ed.r.Resync()
	waitFor(t, "repaired map", func() bool {
		m, err := h.Driver.List(ctx)
		return err == nil && len(m) == 1 && m["s1"] == b.Addr.String()
	})
}

// portPlane is a media plane without a kernel: it hands out ports from a counter, honouring the
// preferred ones, and remembers what it was asked.
type portPlane struct {
	mu        sync.Mutex
	next      uint16
	held      map[string][]uint16
	preferred map[string][]uint16
}

func newPortPlane(first uint16) *portPlane {
	return &portPlane{next: first, held: map[string][]uint16{}, preferred: map[string][]uint16{}}
}

func (p *portPlane) Assign(key string, backends []netip.AddrPort, preferred []uint16) ([]uint16, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.preferred[key] = preferred
	if len(preferred) == len(backends) {
		p.held[key] = preferred
		return preferred, nil
	}
	ports := make([]uint16, len(backends))
	for i := range ports {
		ports[i] = p.next
		p.next++
	}
	p.held[key] = ports
	return ports, nil
}

func (p *portPlane) Release(key string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.held, key)
}

func (p *portPlane) Sync(context.Context, map[string][]media.Mapping) error { return nil }

func (p *portPlane) Settle(context.Context) error { return nil }

func (p *portPlane) Capacity() (int, int) { return 100, 100 - len(p.held) }

func TestRestartedEdgeKeepsPortsAndConnections(t *testing.T) {
	e := newEnv(t)
	h := haproxytest.StartNew(t)
	first := startEdge(t, e, config("edge-a", "default"), h, newPortPlane(10500))
	b := haproxytest.StartBackend(t, "app", false)
	putRoute(t, e, "i1", &livegatev1.Route{
		SessionId: "s1", SignalingBackend: b.Addr.String(), MediaBackends: []string{"127.0.0.1:31000", "127.0.0.1:31001"}, EdgeId: "edge-a",
	})
	waitFor(t, "endpoint", func() bool { return endpointOf(t, e, "i1") != nil })
	before := endpointOf(t, e, "i1").GetPublicUdpPorts()
	if len(before) != 2 {
		t.Fatalf("ports %v", before)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, _, err := haproxytest.Open(ctx, h.Port, "/", []string{"x-nv-sessionid.s1"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.CloseNow()

	first.stop()
	// A new process starts with a fresh allocator; it must take the ports back from KV.
	plane := newPortPlane(15000)
	startEdge(t, e, config("edge-a", "default"), h, plane)
	waitFor(t, "second edge synced", func() bool {
		plane.mu.Lock()
		defer plane.mu.Unlock()
		return len(plane.held["i1/s1"]) == 2
	})
	plane.mu.Lock()
	got := plane.preferred["i1/s1"]
	plane.mu.Unlock()
	if len(got) != 2 || uint32(got[0]) != before[0] || uint32(got[1]) != before[1] {
		t.Fatalf("preferred ports %v, want %v", got, before)
	}
	after := endpointOf(t, e, "i1").GetPublicUdpPorts()
	if len(after) != 2 || after[0] != before[0] || after[1] != before[1] {
		t.Fatalf("ports after restart %v, before %v", after, before)
	}
	// The websocket opened before the restart still carries messages.
	if err := conn.Write(ctx, websocket.MessageText, []byte("still here")); err != nil {
		t.Fatal(err)
	}
	if _, msg, err := conn.Read(ctx); err != nil || string(msg) != "still here" {
		t.Fatalf("echo after restart: %q %v", msg, err)
	}
	if mapSize(t, h) != 1 {
		t.Fatal("route lost across the edge restart")
	}
}

func TestPoolClaimsAndFailover(t *testing.T) {
	e := newEnv(t)
	h1, h2 := haproxytest.StartNew(t), haproxytest.StartNew(t)
	e1 := startEdge(t, e, config("edge-1", "pool-a"), h1, media.Off{})
	startEdge(t, e, config("edge-2", "pool-a"), h2, media.Off{})
	b := haproxytest.StartBackend(t, "app", false)
	const n = 40
	for i := range n {
		putRoute(t, e, fmt.Sprintf("p%02d", i), &livegatev1.Route{SessionId: fmt.Sprintf("ps%02d", i), SignalingBackend: b.Addr.String(), Pool: "pool-a"})
	}
	// Another pool's route is left alone.
	putRoute(t, e, "other", &livegatev1.Route{SessionId: "other", SignalingBackend: b.Addr.String(), Pool: "pool-b"})
	// Each route has one endpoint, and is in the map of exactly the edge that endpoint names.
	var onEdge1 int
	waitFor(t, "every pool route served by exactly one edge", func() bool {
		m1, err1 := h1.Driver.List(context.Background())
		m2, err2 := h2.Driver.List(context.Background())
		if err1 != nil || err2 != nil || len(m1)+len(m2) != n {
			return false
		}
		for i := range n {
			ep := endpointOf(t, e, fmt.Sprintf("p%02d", i))
			if ep == nil {
				return false
			}
			_, onH1 := m1[fmt.Sprintf("ps%02d", i)]
			_, onH2 := m2[fmt.Sprintf("ps%02d", i)]
			if onH1 != (ep.GetEdgeId() == "edge-1") || onH2 != (ep.GetEdgeId() == "edge-2") {
				return false
			}
		}
		onEdge1 = len(m1)
		return true
	})
	if endpointOf(t, e, "other") != nil {
		t.Fatal("a route of another pool was claimed")
	}
	t.Logf("edge-1 took %d routes, edge-2 %d", onEdge1, n-onEdge1)

	// edge-1 dies: once its heartbeat expires, edge-2 takes everything.
	e1.stop()
	waitFor(t, "edge-2 serves all", func() bool {
		for i := range n {
			if ep := endpointOf(t, e, fmt.Sprintf("p%02d", i)); ep.GetEdgeId() != "edge-2" {
				return false
			}
		}
		return mapSize(t, h2) == n
	})
}
