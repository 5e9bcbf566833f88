package desired

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/livegate/livegate/edgeproxy/internal/placement"
	"github.com/livegate/livegate/edgeproxy/internal/portalloc"
	"github.com/livegate/livegate/edgeproxy/internal/routes"
	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
)

var mediaPorts = portalloc.Range{First: 10500, Last: 10509}

// TestPlanServesWhatIsAddressedHere: one edge, a table of route values; what the plan maps, what
// it refuses and what it claims.
func TestPlanServesWhatIsAddressedHere(t *testing.T) {
	tests := []struct {
		name    string
		route   *livegatev1.Route
		raw     []byte
		mapped  bool
		claimed bool
		refused string
	}{
		{name: "this edge", route: edgeRoute("edge-a", "s1"), mapped: true},
		{name: "another edge", route: edgeRoute("edge-b", "s1")},
		{name: "this pool", route: poolRoute("s1"), mapped: true, claimed: true},
		{name: "another pool", route: &livegatev1.Route{SessionId: "s1", SignalingBackend: "127.0.0.1:30000", Pool: "other"}},
		{name: "media backends", route: edgeRoute("edge-a", "s1", "127.0.0.1:31000", "127.0.0.1:31001"), mapped: true},
		{name: "backend outside the CIDRs", route: edgeRoute("edge-a", "s1", "10.0.0.1:31000"), refused: "media_backends[0]: address 10.0.0.1 is outside"},
		{name: "signaling port outside the range", route: &livegatev1.Route{SessionId: "s1", SignalingBackend: "127.0.0.1:80", EdgeId: "edge-a"}, refused: "signaling_backend: port 80 is outside the allowed range 1024-65535"},
		{name: "bad session id", route: edgeRoute("edge-a", "s 1"), refused: "session_id:"},
		{name: "no edge, no pool", route: &livegatev1.Route{SessionId: "s1", SignalingBackend: "127.0.0.1:30000"}, refused: "edge_id and pool"},
		{name: "invalid, for another edge", route: &livegatev1.Route{SessionId: "s 1", SignalingBackend: "127.0.0.1:30000", EdgeId: "edge-b"}},
		{name: "not a route value", raw: []byte("not json"), refused: "value:"},
		{name: "too many media backends", route: edgeRoute("edge-a", "s1", "127.0.0.1:31000", "127.0.0.1:31001", "127.0.0.1:31002", "127.0.0.1:31003", "127.0.0.1:31004"), refused: "more than the 4 a route may name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			now := time.Unix(1000, 0)
			kv := newStore()
			a := newEdge(t, kv, edgeConfig("edge-a"), mediaPorts, nil, &now)
			value := tt.raw
			if value == nil {
				value = encode(t, tt.route)
			}
			kv.set(RoutesBucket, "i1", value)
			r := a.pass(now)
			if _, ok := r.plan.Map["s1"]; ok != tt.mapped {
				t.Fatalf("map %v, want s1 mapped %v", r.plan.Map, tt.mapped)
			}
			if got := len(r.plan.Claims) == 1; got != tt.claimed {
				t.Fatalf("claims %v, want a claim %v", r.plan.Claims, tt.claimed)
			}
			refused := r.events(Refused)
			if tt.refused == "" && len(refused) > 0 || tt.refused != "" && !strings.Contains(refused["i1"].Reason, tt.refused) {
				t.Fatalf("refusals %v, want %q", refused, tt.refused)
			}
			if tt.mapped != (endpointIn(t, kv, "i1") != nil) {
				t.Fatalf("endpoint %v, want one %v", endpointIn(t, kv, "i1"), tt.mapped)
			}
			if got := len(r.plan.Media["i1"]); tt.mapped && got != len(tt.route.GetMediaBackends()) {
				t.Fatalf("media mappings %v for %d backends", r.plan.Media, len(tt.route.GetMediaBackends()))
			}
		})
	}
}

// TestClaimsExactlyOnceBetweenTwoEdges: two edges of a pool plan the same pool routes at the same
// instant, then write their claims in turn; each route is won by exactly one, the loser drops the
// lost routes from its map and ports, and neither writes the other's endpoints.
func TestClaimsExactlyOnceBetweenTwoEdges(t *testing.T) {
	now := time.Unix(1000, 0)
	kv := newStore()
	kv.set(EdgesBucket, "edge-a", nil)
	kv.set(EdgesBucket, "edge-b", nil)
	for i := range 20 {
		kv.set(RoutesBucket, fmt.Sprintf("i%02d", i), encode(t, poolRoute(fmt.Sprintf("s%02d", i), "127.0.0.1:31000")))
	}
	a := newEdge(t, kv, edgeConfig("edge-a"), portalloc.Range{First: 10500, Last: 10599}, nil, &now)
	b := newEdge(t, kv, edgeConfig("edge-b"), portalloc.Range{First: 10500, Last: 10599}, nil, &now)
	pa, pb := a.s.Plan(now, a.drain), b.s.Plan(now, b.drain)
	if len(pa.Claims) != 20 || len(pb.Claims) != 20 {
		t.Fatalf("claims: edge-a %d, edge-b %d, want 20 each", len(pa.Claims), len(pb.Claims))
	}
	ra, rb := a.finish(pa), b.finish(pb)
	if len(ra.lost) != 0 || len(rb.lost) != 20 {
		t.Fatalf("lost: edge-a %v, edge-b %v; the first writer wins all", ra.lost, rb.lost)
	}
	if len(rb.plan.Map) != 0 || len(rb.plan.Media) != 0 || len(rb.writes) != 0 {
		t.Fatalf("edge-b after losing: map %v, media %v, writes %v", rb.plan.Map, rb.plan.Media, rb.writes)
	}
	for _, k := range rb.lost {
		if held := b.ports.Ports(k + "/s" + k[1:]); len(held) != 0 {
			t.Fatalf("edge-b holds ports %v for %s, which it lost", held, k)
		}
	}
	// Once both see the claims, edge-b leaves the routes alone, and edge-a rewrites nothing.
	a.watch(now)
	for range 3 {
		now = now.Add(time.Second)
		if rb := b.pass(now); len(rb.plan.Claims) != 0 || len(rb.plan.Map) != 0 {
			t.Fatalf("edge-b claims %v, map %v after edge-a won", rb.plan.Claims, rb.plan.Map)
		}
		if ra := a.pass(now); len(ra.plan.Map) != 20 || len(ra.writes) != 0 {
			t.Fatalf("edge-a map %d entries, writes %v", len(ra.plan.Map), ra.writes)
		}
	}
	for k := range kv.live[RoutesBucket] {
		if ep := endpointIn(t, kv, k); ep.GetEdgeId() != "edge-a" {
			t.Fatalf("%s endpoint %v", k, ep)
		}
	}
}

// TestTakeoverAfterOwnerExpires: a pool route whose endpoint names a live edge is left to it; when
// that edge's heartbeat expires, the other edge claims it at the endpoint's revision, keeping its
// ports if it can, and a route of an edge that comes back is not taken back.
func TestTakeoverAfterOwnerExpires(t *testing.T) {
	now := time.Unix(1000, 0)
	kv := newStore()
	kv.set(EdgesBucket, "edge-a", nil)
	kv.set(EdgesBucket, "edge-b", nil)
	kv.set(RoutesBucket, "i1", encode(t, poolRoute("s1", "127.0.0.1:31000")))
	b := newEdge(t, kv, edgeConfig("edge-b"), mediaPorts, nil, &now)
	if rb := b.pass(now); len(rb.plan.Map) != 1 {
		t.Fatalf("edge-b did not claim: %v", rb.plan.Claims)
	}
	rev := kv.live[EndpointsBucket]["i1"].Revision
	a := newEdge(t, kv, edgeConfig("edge-a"), mediaPorts, nil, &now)
	if ra := a.pass(now); len(ra.plan.Claims) != 0 || len(ra.plan.Map) != 0 {
		t.Fatalf("edge-a claims a live edge's route: %v", ra.plan.Claims)
	}
	kv.remove(EdgesBucket, "edge-b", true)
	if !a.watch(now) {
		t.Fatal("an edge's expiry calls for no pass")
	}
	ra := a.pass(now)
	if len(ra.plan.Claims) != 1 || ra.plan.Claims[0].Op != OpUpdate || ra.plan.Claims[0].Revision != rev || len(ra.lost) != 0 {
		t.Fatalf("takeover claims %+v, lost %v; want one update at revision %d", ra.plan.Claims, ra.lost, rev)
	}
	if ep := endpointIn(t, kv, "i1"); ep.GetEdgeId() != "edge-a" || len(ep.GetPublicUdpPorts()) != 1 {
		t.Fatalf("endpoint after the takeover %v", ep)
	}
	// edge-b returns: it sees edge-a's endpoint, and does not serve the route any more.
	kv.set(EdgesBucket, "edge-b", nil)
	rb := b.pass(now)
	if len(rb.plan.Map) != 0 || len(rb.plan.Claims) != 0 {
		t.Fatalf("edge-b after its return: map %v, claims %v", rb.plan.Map, rb.plan.Claims)
	}
	if ev := rb.events(Removed)["i1"]; ev.RemovedAs != RemovedReassigned {
		t.Fatalf("edge-b's removal %+v, want reassigned", ev)
	}
	if len(rb.writes) != 0 {
		t.Fatalf("edge-b writes %v over edge-a's endpoint", rb.writes)
	}
}

// TestClaimDelayGrowsWithLoad: an edge already serving routes claims later, by the step per
// route, and asks for a pass when the claim falls due.
func TestClaimDelayGrowsWithLoad(t *testing.T) {
	now := time.Unix(1000, 0)
	kv := newStore()
	cfg := edgeConfig("edge-a")
	cfg.ClaimDelayStep, cfg.MaxClaimDelay = 10*time.Millisecond, 25*time.Millisecond
	kv.set(EdgesBucket, "edge-a", nil)
	for i := range 3 {
		kv.set(RoutesBucket, fmt.Sprintf("e%d", i), encode(t, edgeRoute("edge-a", fmt.Sprintf("se%d", i))))
	}
	kv.set(RoutesBucket, "p1", encode(t, poolRoute("sp1")))
	a := newEdge(t, kv, cfg, mediaPorts, nil, &now)
	r := a.pass(now)
	if len(r.plan.Claims) != 0 || !r.plan.Next.Equal(now.Add(25*time.Millisecond)) {
		t.Fatalf("claims %v, next %v; want none yet, due in 25ms (3 routes served, capped)", r.plan.Claims, r.plan.Next.Sub(now))
	}
	if r := a.pass(now.Add(24 * time.Millisecond)); len(r.plan.Claims) != 0 {
		t.Fatalf("claimed early: %v", r.plan.Claims)
	}
	if r := a.pass(now.Add(25 * time.Millisecond)); len(r.plan.Claims) != 1 || len(r.lost) != 0 {
		t.Fatalf("claims when due %v", r.plan.Claims)
	}
}

// TestMaxRoutesStopsClaims: pool claims stop at MaxRoutes.
func TestMaxRoutesStopsClaims(t *testing.T) {
	now := time.Unix(1000, 0)
	kv := newStore()
	cfg := edgeConfig("edge-a")
	cfg.MaxRoutes = 3
	for i := range 5 {
		kv.set(RoutesBucket, fmt.Sprintf("p%d", i), encode(t, poolRoute(fmt.Sprintf("s%d", i))))
	}
	a := newEdge(t, kv, cfg, mediaPorts, nil, &now)
	if r := a.pass(now); len(r.plan.Claims) != 3 || len(r.plan.Map) != 3 {
		t.Fatalf("claims %d, map %d; want 3", len(r.plan.Claims), len(r.plan.Map))
	}
}

func TestDecideClaims(t *testing.T) {
	claim := func(key string, media int) routes.Claim {
		c := routes.Claim{Route: routes.Route{Key: key}}
		for range media {
			c.Route.Media = append(c.Route.Media, netip.MustParseAddrPort("127.0.0.1:31000"))
		}
		return c
	}
	keys := func(cs []routes.Claim) []string {
		var out []string
		for _, c := range cs {
			out = append(out, c.Route.Key)
		}
		slices.Sort(out)
		return out
	}
	tests := []struct {
		name           string
		in             ClaimInput
		claim, starved []string
	}{
		{name: "room for all", in: ClaimInput{MaxRoutes: 10, FreePorts: 10, MediaOn: true, Candidates: []routes.Claim{claim("a", 1), claim("b", 2)}}, claim: []string{"a", "b"}},
		{name: "full", in: ClaimInput{Load: 10, MaxRoutes: 10, FreePorts: 10, MediaOn: true, Candidates: []routes.Claim{claim("a", 1)}}},
		{name: "room for one", in: ClaimInput{Load: 9, MaxRoutes: 10, FreePorts: 10, MediaOn: true, Candidates: []routes.Claim{claim("a", 0), claim("b", 0)}}, claim: []string{"a"}},
		{name: "ports short", in: ClaimInput{MaxRoutes: 10, FreePorts: 1, MediaOn: true, Candidates: []routes.Claim{claim("a", 2), claim("b", 1)}}, claim: []string{"b"}, starved: []string{"a"}},
		{name: "no media plane", in: ClaimInput{MaxRoutes: 10, Candidates: []routes.Claim{claim("a", 2)}}, claim: []string{"a"}},
		{name: "signaling only without ports", in: ClaimInput{MaxRoutes: 10, MediaOn: true, Candidates: []routes.Claim{claim("a", 0)}}, claim: []string{"a"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := DecideClaims(alone(tt.in))
			if got := keys(d.Claim); !slices.Equal(got, tt.claim) {
				t.Fatalf("claim %v, want %v", got, tt.claim)
			}
			if got := keys(d.Starved); !slices.Equal(got, tt.starved) {
				t.Fatalf("starved %v, want %v", got, tt.starved)
			}
		})
	}
	// Two edges order the same burst differently, so they start with different routes.
	var cs []routes.Claim
	for i := range 8 {
		cs = append(cs, claim(fmt.Sprintf("k%d", i), 0))
	}
	da := DecideClaims(alone(ClaimInput{EdgeID: "edge-a", MaxRoutes: 100, Candidates: cs}))
	db := DecideClaims(alone(ClaimInput{EdgeID: "edge-b", MaxRoutes: 100, Candidates: cs}))
	if slices.EqualFunc(da.Claim, db.Claim, func(x, y routes.Claim) bool { return x.Route.Key == y.Route.Key }) {
		t.Fatal("two edges claim a burst in the same order")
	}
}

// alone is in with this edge the only one of its pool, as its own numbers describe it.
func alone(in ClaimInput) ClaimInput {
	in.Edges = []placement.Edge{{
		ID: in.EdgeID, MaxRoutes: in.MaxRoutes, PortCapacity: in.PortTotal, FreePorts: in.FreePorts,
		Routes: in.Load, BeatRoutes: in.Load, Draining: in.Draining,
	}}
	return in
}

// TestRefusedOncePerChange: a route refused for want of ports is reported once across passes and
// a lease renewal, and again when it changes; an invalid value once per change of reason.
func TestRefusedOncePerChange(t *testing.T) {
	now := time.Unix(1000, 0)
	kv := newStore()
	a := newEdge(t, kv, edgeConfig("edge-a"), portalloc.Range{First: 10500, Last: 10500}, nil, &now)
	kv.set(RoutesBucket, "i1", encode(t, edgeRoute("edge-a", "s1", "127.0.0.1:31000")))
	a.pass(now)
	refusals := 0
	step := func(name string, want int) {
		t.Helper()
		now = now.Add(time.Second)
		r := a.pass(now)
		refusals += len(r.events(Refused))
		if refusals != want {
			t.Fatalf("%s: %d refusals so far, want %d", name, refusals, want)
		}
	}
	kv.set(RoutesBucket, "i2", encode(t, edgeRoute("edge-a", "s2", "127.0.0.1:31001")))
	step("no port left", 1)
	step("another pass", 1)
	kv.set(RoutesBucket, "i2", encode(t, edgeRoute("edge-a", "s2", "127.0.0.1:31001")))
	step("a renewal", 1)
	kv.set(RoutesBucket, "i2", encode(t, edgeRoute("edge-a", "s2", "127.0.0.1:31002")))
	step("a change", 2)
	kv.set(RoutesBucket, "i3", []byte("not json"))
	step("an invalid value", 3)
	kv.set(RoutesBucket, "i3", []byte("not json"))
	step("the same invalid value again", 3)
	kv.set(RoutesBucket, "i3", encode(t, edgeRoute("edge-a", "s 3")))
	step("another reason", 4)
	kv.set(RoutesBucket, "i4", encode(t, poolRoute("s4", "127.0.0.1:31004")))
	step("a pool route without ports", 5)
	step("it again", 5)
	if r := a.pass(now); !r.plan.Next.Equal(now.Add(time.Second)) {
		t.Fatalf("a starved edge asks for its next pass at %v, want the recheck", r.plan.Next.Sub(now))
	}
}

// TestRefusalEventsCarryNothingHostile: a refused value's session id and pool reach the event
// only when they are valid.
func TestRefusalEventsCarryNothingHostile(t *testing.T) {
	now := time.Unix(1000, 0)
	kv := newStore()
	a := newEdge(t, kv, edgeConfig("edge-a"), mediaPorts, nil, &now)
	kv.set(RoutesBucket, "i1", encode(t, &livegatev1.Route{SessionId: "s 1\n", SignalingBackend: "127.0.0.1:30000", Pool: "default"}))
	kv.set(RoutesBucket, "i2", encode(t, &livegatev1.Route{SessionId: "s2", SignalingBackend: "127.0.0.1:80", Pool: "default"}))
	r := a.pass(now).events(Refused)
	if ev := r["i1"]; ev.Session != "" || ev.Pool != "default" {
		t.Fatalf("refusal %+v", ev)
	}
	if ev := r["i2"]; ev.Session != "s2" || ev.Pool != "default" {
		t.Fatalf("refusal %+v", ev)
	}
}

// TestSessionHeldByItsFirstInstance: a second instance with a served session id is refused, also
// while the holder's key lapsed (for the holder's lease), and gets the id once the holder's route
// is deleted outright.
func TestSessionHeldByItsFirstInstance(t *testing.T) {
	now := time.Unix(1000, 0)
	kv := newStore()
	a := newEdge(t, kv, edgeConfig("edge-a"), mediaPorts, nil, &now)
	owner := func() []byte { return encode(t, leased(edgeRoute("edge-a", "s"), 3*time.Second)) }
	squatter := edgeRoute("edge-a", "s")
	squatter.SignalingBackend = "127.0.0.1:30002"
	kv.set(RoutesBucket, "i-owner", owner())
	a.pass(now)
	kv.set(RoutesBucket, "i-squat", encode(t, squatter))
	r := a.pass(now)
	if ev := r.events(Refused)["i-squat"]; !strings.Contains(ev.Reason, "session_id: held by instance i-owner") || r.plan.Conflicts != 1 {
		t.Fatalf("squatter: refusal %+v, conflicts %d", ev, r.plan.Conflicts)
	}
	kv.remove(RoutesBucket, "i-owner", true)
	now = now.Add(time.Second)
	r = a.pass(now)
	if ev := r.events(Removed)["i-owner"]; ev.RemovedAs != RemovedExpired || r.plan.Map["s"] != "" {
		t.Fatalf("owner lapsed: removal %+v, map %v", ev, r.plan.Map)
	}
	if !r.plan.Next.Equal(now.Add(3 * time.Second)) {
		t.Fatalf("next pass in %v, want when the holder's lease ends", r.plan.Next.Sub(now))
	}
	kv.set(RoutesBucket, "i-owner", owner())
	if r = a.pass(now); r.plan.Map["s"] != "127.0.0.1:30000" {
		t.Fatalf("the owner's return: map %v", r.plan.Map)
	}
	kv.remove(RoutesBucket, "i-owner", false)
	if r = a.pass(now); r.plan.Map["s"] != "127.0.0.1:30002" {
		t.Fatalf("once the session ended the other instance gets it: map %v", r.plan.Map)
	}
	// The squatter's hold ends with its lease, had the owner not come back.
	kv.set(RoutesBucket, "i-x", encode(t, leased(edgeRoute("edge-a", "sx"), 2*time.Second)))
	a.pass(now)
	kv.remove(RoutesBucket, "i-x", true)
	kv.set(RoutesBucket, "i-y", encode(t, edgeRoute("edge-a", "sx")))
	if r = a.pass(now); r.plan.Map["sx"] != "" {
		t.Fatalf("the id was free at once: map %v", r.plan.Map)
	}
	if r = a.pass(now.Add(2 * time.Second)); r.plan.Map["sx"] == "" {
		t.Fatalf("the id still held after the lease: map %v", r.plan.Map)
	}
}

// TestPortsAcrossSessionsAndRestarts: a renewal keeps the ports; a new session on the instance
// gets fresh ones (the old ones rest in quarantine); a restarted edge takes back the ports its
// endpoint recorded.
func TestPortsAcrossSessionsAndRestarts(t *testing.T) {
	now := time.Unix(1000, 0)
	kv := newStore()
	a := newEdge(t, kv, edgeConfig("edge-a"), mediaPorts, nil, &now)
	kv.set(RoutesBucket, "i1", encode(t, edgeRoute("edge-a", "s1", "127.0.0.1:31000", "127.0.0.1:31001")))
	kv.set(RoutesBucket, "i0", encode(t, edgeRoute("edge-a", "s0", "127.0.0.1:31005")))
	first := a.pass(now).plan.Routes["i1"].Ports
	kv.set(RoutesBucket, "i1", encode(t, edgeRoute("edge-a", "s1", "127.0.0.1:31000", "127.0.0.1:31001")))
	r := a.pass(now)
	if got := r.plan.Routes["i1"].Ports; !slices.Equal(got, first) || len(r.writes) != 0 || len(r.events(Programmed)) != 0 {
		t.Fatalf("a renewal: ports %v (had %v), writes %v, events %v", got, first, r.writes, r.commit.Events)
	}
	kv.set(RoutesBucket, "i1", encode(t, edgeRoute("edge-a", "s1b", "127.0.0.1:31000", "127.0.0.1:31001")))
	r = a.pass(now)
	second := r.plan.Routes["i1"].Ports
	if slices.ContainsFunc(second, func(p uint16) bool { return slices.Contains(first, p) }) {
		t.Fatalf("the new session got %v, the old one had %v", second, first)
	}
	if ev := r.events(Programmed)["i1"]; ev.Session != "s1b" || !slices.Equal(ev.Ports, second) {
		t.Fatalf("programmed event %+v", ev)
	}
	if ep := endpointIn(t, kv, "i1"); ep.GetSessionId() != "s1b" || !slices.Equal(ep.GetPublicUdpPorts(), []uint32{uint32(second[0]), uint32(second[1])}) {
		t.Fatalf("endpoint %v", ep)
	}
	// A new process: its allocator is empty, its endpoints say which ports it had.
	b := newEdge(t, kv, edgeConfig("edge-a"), mediaPorts, nil, &now)
	r = b.pass(now)
	if got := r.plan.Routes["i1"].Ports; !slices.Equal(got, second) {
		t.Fatalf("after a restart: ports %v, the endpoint had %v", got, second)
	}
	if len(r.writes) != 0 {
		t.Fatalf("after a restart the endpoints are rewritten: %v", r.writes)
	}
}

// TestEndedRoutes: a route deleted, expired, moved to another edge or refused is removed with its
// reason; its endpoint is deleted at its revision, and its ports released.
func TestEndedRoutes(t *testing.T) {
	tests := []struct {
		name   string
		end    func(t *testing.T, kv *store)
		reason string
		kind   string
	}{
		{name: "deleted", end: func(t *testing.T, kv *store) { kv.remove(RoutesBucket, "i1", false) }, reason: "route deleted", kind: RemovedDeleted},
		{name: "lease lapsed", end: func(t *testing.T, kv *store) { kv.remove(RoutesBucket, "i1", true) }, reason: "route lease expired", kind: RemovedExpired},
		{name: "moved to another edge", end: func(t *testing.T, kv *store) {
			kv.set(RoutesBucket, "i1", encode(t, edgeRoute("edge-b", "s1", "127.0.0.1:31000")))
		}, reason: "route no longer served by this edge", kind: RemovedReassigned},
		{name: "changed to a refused value", end: func(t *testing.T, kv *store) {
			kv.set(RoutesBucket, "i1", encode(t, edgeRoute("edge-a", "s1", "10.0.0.1:31000")))
		}, reason: "route refused", kind: RemovedRefused},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			now := time.Unix(1000, 0)
			kv := newStore()
			a := newEdge(t, kv, edgeConfig("edge-a"), mediaPorts, nil, &now)
			kv.set(RoutesBucket, "i1", encode(t, edgeRoute("edge-a", "s1", "127.0.0.1:31000")))
			a.pass(now)
			rev := kv.live[EndpointsBucket]["i1"].Revision
			tt.end(t, kv)
			r := a.pass(now)
			ev := r.events(Removed)["i1"]
			if ev.Reason != tt.reason || ev.RemovedAs != tt.kind || ev.Session != "s1" {
				t.Fatalf("removal %+v, want %q (%s)", ev, tt.reason, tt.kind)
			}
			if len(r.plan.Map) != 0 || len(r.plan.Media) != 0 || !r.plan.MediaChanged {
				t.Fatalf("map %v, media %v (changed %v)", r.plan.Map, r.plan.Media, r.plan.MediaChanged)
			}
			if len(r.writes) != 1 || r.writes[0].Op != OpDelete || r.writes[0].Revision != rev || endpointIn(t, kv, "i1") != nil {
				t.Fatalf("writes %+v; want the endpoint deleted at revision %d", r.writes, rev)
			}
			if _, free := a.ports.Capacity(); free != 9 {
				t.Fatalf("%d ports free of 10: the route's port is in quarantine, not free, not held", free)
			}
			if r := a.pass(now); len(r.commit.Events) != 0 || len(r.writes) != 0 {
				t.Fatalf("the next pass: events %v, writes %v", r.commit.Events, r.writes)
			}
		})
	}
}

// TestHeldRouteResumes: after a re-watch, a served route whose lease lapsed stays served until two
// leases have passed; its agent's renewal takes it over unchanged (no new event, no write).
func TestHeldRouteResumes(t *testing.T) {
	const lease = 4 * time.Second
	now := time.Unix(1000, 0)
	kv := newStore()
	a := newEdge(t, kv, edgeConfig("edge-a"), mediaPorts, nil, &now)
	kv.set(RoutesBucket, "i1", encode(t, leased(edgeRoute("edge-a", "s1"), lease)))
	kv.set(RoutesBucket, "i2", encode(t, leased(edgeRoute("edge-a", "s2"), lease)))
	a.pass(now)
	// NATS was away and the store expired both; the edge watches routes anew.
	kv.remove(RoutesBucket, "i1", true)
	kv.remove(RoutesBucket, "i2", true)
	a.read = len(kv.log)
	now = now.Add(10 * time.Second)
	a.s.Observe(Input{Bucket: RoutesBucket, Snapshot: map[string]Entry{}, At: now})
	r := a.pass(now)
	if len(r.plan.Map) != 2 || len(r.commit.Events) != 0 || !r.plan.Next.Equal(now.Add(2*lease)) {
		t.Fatalf("after the re-watch: map %v, events %v, next %v", r.plan.Map, r.commit.Events, r.plan.Next.Sub(now))
	}
	kv.set(RoutesBucket, "i1", encode(t, leased(edgeRoute("edge-a", "s1"), lease)))
	if r = a.pass(now.Add(time.Second)); len(r.commit.Events) != 0 || len(r.writes) != 0 {
		t.Fatalf("the renewal: events %v, writes %v", r.commit.Events, r.writes)
	}
	r = a.pass(now.Add(2 * lease))
	if ev := r.events(Removed); len(ev) != 1 || ev["i2"].RemovedAs != RemovedExpired || len(r.plan.Map) != 1 {
		t.Fatalf("at the end of the hold: removals %v, map %v", ev, r.plan.Map)
	}
}

// TestFailedEndpointWriteRetried: an endpoint write that failed is asked again once, and written
// by the next pass.
func TestFailedEndpointWriteRetried(t *testing.T) {
	now := time.Unix(1000, 0)
	kv := newStore()
	a := newEdge(t, kv, edgeConfig("edge-a"), mediaPorts, nil, &now)
	kv.set(RoutesBucket, "i1", encode(t, edgeRoute("edge-a", "s1")))
	a.fail = true
	if r := a.pass(now); len(r.writes) != 1 || !a.s.Retry() || a.s.Retry() {
		t.Fatalf("writes %v; want one, failed, retried once", r.writes)
	}
	a.fail = false
	if r := a.pass(now); len(r.writes) != 1 || len(r.events(Programmed)) != 0 || endpointIn(t, kv, "i1") == nil {
		t.Fatalf("the retry: writes %v, events %v", r.writes, r.commit.Events)
	}
	if r := a.pass(now); len(r.writes) != 0 || a.s.Retry() {
		t.Fatalf("after the retry: writes %v", r.writes)
	}
}

// TestMediaPlanShared: an unchanged plan hands the media plane the same mappings, unchanged.
func TestMediaPlanShared(t *testing.T) {
	now := time.Unix(1000, 0)
	kv := newStore()
	a := newEdge(t, kv, edgeConfig("edge-a"), mediaPorts, nil, &now)
	kv.set(RoutesBucket, "i1", encode(t, edgeRoute("edge-a", "s1", "127.0.0.1:31000")))
	r1 := a.pass(now)
	kv.set(RoutesBucket, "i2", encode(t, edgeRoute("edge-a", "s2")))
	r2 := a.pass(now)
	r3 := a.pass(now)
	if !r1.plan.MediaChanged || r2.plan.MediaChanged || r3.plan.MediaChanged {
		t.Fatalf("media changed: %v %v %v; want only the first", r1.plan.MediaChanged, r2.plan.MediaChanged, r3.plan.MediaChanged)
	}
	if &r1.plan.Media["i1"][0] != &r3.plan.Media["i1"][0] || !maps.Equal(r2.plan.Map, map[string]string{"s1": "127.0.0.1:30000", "s2": "127.0.0.1:30000"}) {
		t.Fatalf("plans: %v / %v", r1.plan.Media, r2.plan.Map)
	}
}

// TestPublishedOnceRoutable: a route whose media mappings the plane does not hold yet is in the
// map at once, but its endpoint is written and its programmed event reported only by the first
// commit that finds it routable; a signaling-only route needs no media batch.
func TestPublishedOnceRoutable(t *testing.T) {
	now := time.Unix(1000, 0)
	kv := newStore()
	a := newEdge(t, kv, edgeConfig("edge-a"), mediaPorts, nil, &now)
	kv.set(RoutesBucket, "i1", encode(t, edgeRoute("edge-a", "s1", "127.0.0.1:31000")))
	kv.set(RoutesBucket, "i2", encode(t, edgeRoute("edge-a", "s2")))
	held := map[string]bool{}
	pass := func(at time.Time) passResult {
		a.watch(at)
		p := a.s.Plan(at, a.drain)
		ready := func(k string) bool { _, media := p.Media[k]; return !media || held[k] }
		r := passResult{plan: p, writes: a.s.Publish(p, ready)}
		var results []WriteResult
		for _, w := range r.writes {
			results = append(results, kv.apply(t, w))
		}
		r.commit = a.s.Commit(p, at.Add(time.Millisecond), ready)
		a.s.Written(results)
		return r
	}
	r := pass(now)
	if len(r.plan.Map) != 2 || len(r.writes) != 1 || r.writes[0].Key != "i2" {
		t.Fatalf("before the batch: map %v, writes %+v", r.plan.Map, r.writes)
	}
	if ev := r.events(Programmed); len(ev) != 1 || ev["i2"].Latency != time.Millisecond {
		t.Fatalf("before the batch: programmed %v", ev)
	}
	r = pass(now.Add(time.Second))
	if len(r.writes) != 0 || len(r.commit.Events) != 0 {
		t.Fatalf("still no batch: writes %v, events %v", r.writes, r.commit.Events)
	}
	held["i1"] = true
	r = pass(now.Add(2 * time.Second))
	if len(r.writes) != 1 || r.writes[0].Key != "i1" || r.events(Programmed)["i1"].Latency != 2*time.Second+time.Millisecond {
		t.Fatalf("after the batch: writes %+v, events %+v", r.writes, r.commit.Events)
	}
	if r = pass(now.Add(3 * time.Second)); len(r.writes) != 0 || len(r.commit.Events) != 0 {
		t.Fatalf("after that: writes %v, events %v", r.writes, r.commit.Events)
	}
	// A route removed before it was routable is reported removed, never programmed.
	kv.set(RoutesBucket, "i3", encode(t, edgeRoute("edge-a", "s3", "127.0.0.1:31003")))
	pass(now.Add(4 * time.Second))
	kv.remove(RoutesBucket, "i3", false)
	held["i3"] = true
	r = pass(now.Add(5 * time.Second))
	if ev := r.commit.Events; len(ev) != 1 || ev[0].Kind != Removed || ev[0].Key != "i3" {
		t.Fatalf("events %+v", ev)
	}
}
