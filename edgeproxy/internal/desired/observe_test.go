package desired

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/livegate/livegate/edgeproxy/internal/portalloc"
	"github.com/livegate/livegate/edgeproxy/internal/routes"
	"github.com/livegate/livegate/pkg/wire"
	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
	"github.com/rs/zerolog"
	"google.golang.org/protobuf/types/known/durationpb"
)

// equal compares two published endpoints field by field; an unreadable one equals nothing.
func (p *Endpoint) equal(o *Endpoint) bool {
	return p != nil && o != nil && !p.unreadable && !o.unreadable && p.Instance == o.Instance && p.Session == o.Session &&
		p.Edge == o.Edge && p.Host == o.Host && p.IP == o.IP && p.SignalingPort == o.SignalingPort &&
		slices.Equal(p.Ports, o.Ports) && slices.Equal(p.Media, o.Media)
}

func testConfig() Config {
	return Config{EdgeID: "edge-a", Pool: "default", MaxRoutes: 100, Recheck: time.Second, Policy: routes.Policy{
		BackendCIDRs: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}, BackendPorts: portalloc.Range{First: 1024, Last: 65535},
	}}
}

func loopState() *State { return New(testConfig(), noPorts{}, nil, zerolog.Nop()) }

// noPorts is an edge without a media plane.
type noPorts struct{}

func (noPorts) Assign(string, []netip.AddrPort, []uint16) ([]uint16, error) { return nil, nil }
func (noPorts) Release(string)                                              {}
func (noPorts) Capacity() (int, int)                                        { return 0, 0 }

func routeEntry(t *testing.T, key, session, backend string, rev uint64) Entry {
	t.Helper()
	v, err := wire.Marshal(&livegatev1.Route{SessionId: session, SignalingBackend: backend, EdgeId: "edge-a"})
	if err != nil {
		t.Fatal(err)
	}
	return Entry{Key: key, Value: v, Revision: rev}
}

func endpointEntry(t *testing.T, key, edge string, rev uint64) Entry {
	t.Helper()
	v, err := wire.Marshal(&livegatev1.Endpoint{InstanceId: key, EdgeId: edge, PublicUdpPorts: []uint32{10500}})
	if err != nil {
		t.Fatal(err)
	}
	return Entry{Key: key, Value: v, Revision: rev}
}

// TestTakeParsesOncePerRevisionAndIgnoresEchoes feeds the loop state watch inputs in order and
// checks which of them call for a pass. A value that changes under an unchanged revision (which
// KV never does) shows whether a route was parsed again.
func TestTakeParsesOncePerRevisionAndIgnoresEchoes(t *testing.T) {
	r := loopState()
	at := time.Unix(100, 0)
	routesIn := func(e Entry) Input { return Input{Bucket: RoutesBucket, Entry: e, At: at} }
	steps := []struct {
		name string
		in   Input
		want bool
		// check runs after the step.
		check func(t *testing.T)
	}{
		{name: "routes snapshot", want: true, in: Input{Bucket: RoutesBucket, At: at, Snapshot: map[string]Entry{
			"i1": routeEntry(t, "i1", "s1", "127.0.0.1:30001", 1),
			"i2": routeEntry(t, "i2", "s2", "10.0.0.1:30001", 2),
		}}, check: func(t *testing.T) {
			if len(r.valid) != 1 || len(r.invalid) != 1 || !r.invalid["i2"].mine {
				t.Fatalf("valid %v invalid %v", r.valid, r.invalid)
			}
		}},
		{name: "same revision again", in: routesIn(routeEntry(t, "i1", "s1", "127.0.0.1:39999", 1)), check: func(t *testing.T) {
			if got := r.valid["i1"].Signaling.Port(); got != 30001 {
				t.Fatalf("route parsed again: backend port %d", got)
			}
		}},
		{name: "new revision", want: true, in: routesIn(routeEntry(t, "i1", "s1", "127.0.0.1:30002", 3)), check: func(t *testing.T) {
			if got := r.valid["i1"]; got.Signaling.Port() != 30002 || got.Revision != 3 {
				t.Fatalf("route after update %+v", got)
			}
		}},
		{name: "snapshot after a reconnect keeps parsed routes", want: true, in: Input{Bucket: RoutesBucket, At: at, Snapshot: map[string]Entry{
			"i1": routeEntry(t, "i1", "s1", "127.0.0.1:39999", 3),
		}}, check: func(t *testing.T) {
			if got := r.valid["i1"].Signaling.Port(); got != 30002 || len(r.invalid) != 0 {
				t.Fatalf("after the Snapshot: port %d, invalid %v", got, r.invalid)
			}
		}},
		{name: "endpoints snapshot", want: true, in: Input{Bucket: EndpointsBucket, Snapshot: map[string]Entry{
			"i1": endpointEntry(t, "i1", "edge-a", 7),
		}}},
		{name: "echo of our own endpoint write", in: Input{Bucket: EndpointsBucket, Entry: endpointEntry(t, "i1", "edge-a", 7)}},
		{name: "endpoint rewritten", want: true, in: Input{Bucket: EndpointsBucket, Entry: endpointEntry(t, "i1", "edge-b", 8)}, check: func(t *testing.T) {
			if r.endpoints["i1"].EdgeID != "edge-b" || r.endpoints["i1"].pub == nil {
				t.Fatalf("endpoint %+v", r.endpoints["i1"])
			}
		}},
		{name: "a late, older echo", in: Input{Bucket: EndpointsBucket, Entry: endpointEntry(t, "i1", "edge-a", 6)}, check: func(t *testing.T) {
			if r.endpoints["i1"].EdgeID != "edge-b" {
				t.Fatalf("an older revision overwrote the endpoint: %+v", r.endpoints["i1"])
			}
		}},
		{name: "a late, older delete", in: Input{Bucket: EndpointsBucket, Entry: Entry{Key: "i1", Revision: 5, Deleted: true}}, check: func(t *testing.T) {
			if _, ok := r.endpoints["i1"]; !ok {
				t.Fatal("an older delete removed the endpoint")
			}
		}},
		{name: "delete of an unknown endpoint", in: Input{Bucket: EndpointsBucket, Entry: Entry{Key: "nope", Deleted: true}}},
		{name: "edges snapshot", want: true, in: Input{Bucket: EdgesBucket, Snapshot: map[string]Entry{"edge-a": {Key: "edge-a", Revision: 1}}}},
		{name: "our own heartbeat", in: Input{Bucket: EdgesBucket, Entry: Entry{Key: "edge-a", Revision: 2}}},
		{name: "another edge appears", want: true, in: Input{Bucket: EdgesBucket, Entry: Entry{Key: "edge-b", Revision: 3}}},
		{name: "its heartbeat", in: Input{Bucket: EdgesBucket, Entry: Entry{Key: "edge-b", Revision: 4}}},
		{name: "it expires", want: true, in: Input{Bucket: EdgesBucket, Entry: Entry{Key: "edge-b", Deleted: true}}},
		{name: "route deleted", want: true, in: routesIn(Entry{Key: "i1", Deleted: true}), check: func(t *testing.T) {
			if len(r.valid) != 0 || len(r.seen) != 0 {
				t.Fatalf("valid %v seen %v after the delete", r.valid, r.seen)
			}
		}},
		{name: "delete of an unknown route", in: routesIn(Entry{Key: "i9", Deleted: true})},
	}
	for _, st := range steps {
		if got := r.Observe(st.in); got != st.want {
			t.Fatalf("%s: take = %v, want %v", st.name, got, st.want)
		}
		if st.check != nil {
			st.check(t)
		}
	}
	if !r.Synced() {
		t.Fatalf("synced %v", r.synced)
	}
}

// TestEchoWaitsForItsWrite checks that the watch's news of a key whose endpoint write is under
// way waits for the write's result: the echo then finds the write recorded and calls for no
// pass, and a later value of the key is not overwritten by the earlier result.
func TestEchoWaitsForItsWrite(t *testing.T) {
	r := loopState()
	r.cfg.PublicHost = "edge-a.example.test"
	w := Served{Route: routes.Route{Key: "i1", SessionID: "s1", Signaling: netip.MustParseAddrPort("127.0.0.1:30000")}}
	pub := r.endpointFor(w, nil)
	var under []WriteResult
	inFlight := func(results ...WriteResult) {
		under = results
		r.writing = map[string]*Endpoint{}
		for _, res := range results {
			r.writing[res.Write.Key] = res.Write.Endpoint
		}
	}
	// observe hands in the results under way first when the core says so, as the executor does.
	observe := func(in Input) bool {
		if r.NeedsWritten(in) {
			r.Written(under)
		}
		return r.Observe(in)
	}
	data, err := wire.Marshal(pub.Proto(time.Unix(1, 0)))
	if err != nil {
		t.Fatal(err)
	}
	put := func(rev uint64) WriteResult {
		return WriteResult{Write: Write{Key: "i1", Op: OpPut, Endpoint: pub}, Result: Applied, Revision: rev}
	}
	inFlight(put(7))
	if observe(Input{Bucket: EndpointsBucket, Entry: Entry{Key: "i1", Value: data, Revision: 7}}) {
		t.Fatal("the echo of a write under way calls for a pass")
	}
	if r.writing != nil || r.endpoints["i1"].Revision != 7 || r.endpoints["i1"].EdgeID != "edge-a" {
		t.Fatalf("after the echo: writing %v, endpoint %+v", r.writing, r.endpoints["i1"])
	}

	inFlight(put(9))
	if !observe(Input{Bucket: EndpointsBucket, Entry: endpointEntry(t, "i1", "edge-b", 10)}) {
		t.Fatal("another edge's later write calls for no pass")
	}
	if got := r.endpoints["i1"]; r.writing != nil || got.Revision != 10 || got.EdgeID != "edge-b" {
		t.Fatalf("a later value was overwritten by an earlier result: %+v", got)
	}

	inFlight(WriteResult{Write: Write{Key: "i1", Op: OpDelete}, Result: Applied})
	if observe(Input{Bucket: EndpointsBucket, Entry: Entry{Key: "i1", Deleted: true, Revision: 11}}) {
		t.Fatal("the echo of a removal under way calls for a pass")
	}
	if _, ok := r.endpoints["i1"]; ok || r.writing != nil {
		t.Fatalf("after the removal: endpoint %+v, writing %v", r.endpoints["i1"], r.writing)
	}

	// A failed write whose batch an echo took in still gets its retry.
	inFlight(put(12), WriteResult{Write: Write{Key: "i2", Op: OpPut, Endpoint: pub}, Result: Failed})
	if observe(Input{Bucket: EndpointsBucket, Entry: Entry{Key: "i1", Value: data, Revision: 12}}) {
		t.Fatal("the echo of a write under way calls for a pass")
	}
	if !r.Retry() || r.Retry() {
		t.Fatal("a write that failed in a batch taken in by an echo is not retried, once")
	}
}

// TestPublishedMatchesWhatIsWritten checks that an endpoint this edge writes, read back from
// KV, compares equal to what it would write again, and that any change makes it differ.
func TestPublishedMatchesWhatIsWritten(t *testing.T) {
	r := loopState()
	r.cfg.PublicHost, r.cfg.PublicIP, r.cfg.SignalingPort = "edge-a.example.test", "198.18.1.1", 48322
	w := Served{Route: routes.Route{
		Key: "i1", SessionID: "s1", Signaling: netip.MustParseAddrPort("127.0.0.1:30000"),
		Media: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:30001"), netip.MustParseAddrPort("127.0.0.1:30002")},
	}, Ports: []uint16{10500, 10501}}
	data, err := wire.Marshal(r.endpointFor(w, nil).Proto(time.Unix(1, 0)))
	if err != nil {
		t.Fatal(err)
	}
	read := decodeEndpoint(Entry{Key: "i1", Value: data, Revision: 5})
	if !read.pub.equal(r.endpointFor(w, nil)) || !r.publishes(read.pub, w) {
		t.Fatalf("endpoint read back %+v differs from %+v", read.pub, r.endpointFor(w, nil))
	}
	moved := w
	moved.Ports = []uint16{10500, 10509}
	otherBackend := w
	otherBackend.Route.Media = []netip.AddrPort{w.Route.Media[0], netip.MustParseAddrPort("127.0.0.1:30009")}
	noMedia := w
	noMedia.Route.Media, noMedia.Ports = nil, nil
	for name, x := range map[string]Served{"port": moved, "backend": otherBackend, "no media": noMedia} {
		if read.pub.equal(r.endpointFor(x, nil)) || r.publishes(read.pub, x) {
			t.Fatalf("%s changed, yet the endpoint compares equal", name)
		}
	}
	if read.pub.IP != "198.18.1.1" {
		t.Errorf("endpoint public ip %q, want the configured 198.18.1.1", read.pub.IP)
	}
	r.cfg.PublicIP = "198.18.1.9"
	if r.publishes(read.pub, w) {
		t.Fatal("the public ip changed, yet the endpoint compares equal")
	}
	r.cfg.PublicIP = "198.18.1.1"
	bad, err := wire.Marshal(&livegatev1.Endpoint{InstanceId: "i1", PublicUdpPorts: []uint32{70000}})
	if err != nil {
		t.Fatal(err)
	}
	if p := decodeEndpoint(Entry{Key: "i1", Value: bad}).pub; p.equal(p) || r.publishes(p, w) {
		t.Fatal("an endpoint with an impossible port compares equal")
	}
}

func leasedEntry(t *testing.T, key string, rev uint64, lease time.Duration) Entry {
	t.Helper()
	v, err := wire.Marshal(&livegatev1.Route{SessionId: "s-" + key, SignalingBackend: "127.0.0.1:30001", EdgeId: "edge-a", LeaseTtl: durationpb.New(lease)})
	if err != nil {
		t.Fatal(err)
	}
	return Entry{Key: key, Value: v, Revision: rev}
}

// TestLapsedRoutesHeldAfterRewatch: after NATS comes back, a served route whose lease lapsed
// while agents could not renew it stays programmed for two leases, so that its agent can renew
// it; a route deleted outright goes at once, and so does any lapse outside that window.
func TestLapsedRoutesHeldAfterRewatch(t *testing.T) {
	const lease = 4 * time.Second
	t0 := time.Unix(1000, 0)
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	r := loopState()
	routesIn := func(when time.Duration, e Entry) Input {
		return Input{Bucket: RoutesBucket, Entry: e, At: at(when)}
	}
	snapshot := func(when time.Duration, es ...Entry) Input {
		m := map[string]Entry{}
		for _, e := range es {
			m[e.Key] = e
		}
		return Input{Bucket: RoutesBucket, Snapshot: m, At: at(when)}
	}
	purge := func(key string, rev uint64) Entry {
		return Entry{Key: key, Revision: rev, Deleted: true, Purged: true}
	}
	keys := func() []string {
		var out []string
		for _, k := range []string{"i1", "i2", "i3", "i4", "i5"} {
			if _, ok := r.valid[k]; ok {
				out = append(out, k)
			}
		}
		return out
	}

	// Before any re-watch, a lapse removes the route at once (an agent that died).
	r.Observe(snapshot(0, leasedEntry(t, "i1", 1, lease), leasedEntry(t, "i2", 2, lease), leasedEntry(t, "i3", 3, lease),
		leasedEntry(t, "i4", 4, lease), leasedEntry(t, "i5", 5, lease)))
	r.served = map[string]Served{"i1": {}, "i2": {}, "i4": {}, "i5": {}}
	r.Observe(routesIn(time.Second, purge("i5", 6)))
	if r.valid["i5"].Key != "" || !r.expired["i5"] {
		t.Fatalf("i5 lapsed before any re-watch: want it removed as expired, valid %v", keys())
	}
	clear(r.expired)

	// NATS was away; the store expired i1-i4 meanwhile. i3 is not served here.
	r.Observe(snapshot(10 * time.Second))
	if got := keys(); len(got) != 3 || got[0] != "i1" || got[1] != "i2" || got[2] != "i4" {
		t.Fatalf("after the re-watch: valid %v, want i1 i2 i4 held", got)
	}
	steps := []struct {
		name  string
		in    Input
		check func(t *testing.T)
	}{
		{name: "renewal takes the held route over", in: routesIn(11*time.Second, leasedEntry(t, "i2", 7, lease)), check: func(t *testing.T) {
			if _, held := r.held["i2"]; held || r.valid["i2"].Revision != 7 {
				t.Fatalf("i2 after its renewal: held %v, %+v", held, r.valid["i2"])
			}
		}},
		{name: "a delete is not held", in: routesIn(11*time.Second, Entry{Key: "i4", Revision: 8, Deleted: true}), check: func(t *testing.T) {
			if _, ok := r.valid["i4"]; ok || r.expired["i4"] {
				t.Fatalf("i4 deleted: valid %v, expired %v", keys(), r.expired)
			}
		}},
		{name: "a purge of a held route keeps it", in: routesIn(12*time.Second, purge("i1", 9)), check: func(t *testing.T) {
			if _, ok := r.valid["i1"]; !ok {
				t.Fatalf("i1 purged while held: valid %v", keys())
			}
		}},
	}
	for _, s := range steps {
		r.Observe(s.in)
		t.Run(s.name, s.check)
	}

	if next := r.releaseHeld(at(17 * time.Second)); !next.Equal(at(18*time.Second)) || r.valid["i1"].Key == "" {
		t.Fatalf("two leases after the re-watch not over: next %v, valid %v", next, keys())
	}
	if next := r.releaseHeld(at(18 * time.Second)); !next.IsZero() || r.valid["i1"].Key != "" || !r.expired["i1"] {
		t.Fatalf("two leases after the re-watch: next %v, valid %v, expired %v", next, keys(), r.expired)
	}
	// Past the window a lapse is an agent that stopped renewing: removed at once.
	r.Observe(routesIn(20*time.Second, purge("i2", 10)))
	if _, ok := r.valid["i2"]; ok || !r.expired["i2"] {
		t.Fatalf("i2 lapsed after the window: valid %v, expired %v", keys(), r.expired)
	}
}
