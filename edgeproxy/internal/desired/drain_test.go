package desired

import (
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/livegate/livegate/edgeproxy/internal/placement"
	"github.com/livegate/livegate/edgeproxy/internal/portalloc"
	"github.com/livegate/livegate/edgeproxy/internal/routes"
	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
)

// TestDecideClaimsPlacement: the drain state, the port reserve and the placement ranking in the
// claim decision.
func TestDecideClaimsPlacement(t *testing.T) {
	cs := []routes.Claim{{Route: routes.Route{Key: "a"}}, {Route: routes.Route{Key: "b"}}}
	self := func(free int) placement.Edge {
		return placement.Edge{ID: "edge-a", MaxRoutes: 100, PortCapacity: 100, FreePorts: free}
	}
	other := func(free int, draining bool) placement.Edge {
		return placement.Edge{ID: "edge-b", MaxRoutes: 100, PortCapacity: 100, FreePorts: free, Draining: draining}
	}
	base := ClaimInput{EdgeID: "edge-a", MaxRoutes: 10, FreePorts: 50, MediaOn: true, PortTotal: 100, PortReserve: 0.02, ClaimFallback: time.Second, Candidates: cs}
	with := func(f func(*ClaimInput)) ClaimInput { in := base; f(&in); return in }
	tests := []struct {
		name    string
		in      ClaimInput
		delays  map[string]time.Duration
		recheck bool
	}{
		{name: "first for both", in: with(func(in *ClaimInput) { in.Edges = []placement.Edge{self(50), other(10, false)} }),
			delays: map[string]time.Duration{"a": 0, "b": 0}},
		{name: "second for both: waits the fallback", in: with(func(in *ClaimInput) { in.Edges = []placement.Edge{self(50), other(90, false)} }),
			delays: map[string]time.Duration{"a": time.Second, "b": time.Second}},
		{name: "the other edge drains", in: with(func(in *ClaimInput) { in.Edges = []placement.Edge{self(50), other(90, true)} }),
			delays: map[string]time.Duration{"a": 0, "b": 0}},
		{name: "draining: nothing, and no recheck", in: with(func(in *ClaimInput) {
			in.Draining = true
			in.Edges = []placement.Edge{self(50), other(10, false)}
		})},
		{name: "at the reserve: nothing, looked at again", in: with(func(in *ClaimInput) {
			in.FreePorts = 2
			in.Edges = []placement.Edge{self(2), other(10, false)}
		}), recheck: true},
		{name: "above the reserve", in: with(func(in *ClaimInput) {
			in.FreePorts = 3
			in.Edges = []placement.Edge{self(3)}
		}), delays: map[string]time.Duration{"a": 0}, recheck: true},
		{name: "no edge takes them by the heartbeats", in: with(func(in *ClaimInput) { in.Edges = []placement.Edge{other(90, true)} }), recheck: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := DecideClaims(tt.in)
			var claimed []string
			for _, c := range d.Claim {
				claimed = append(claimed, c.Route.Key)
			}
			slices.Sort(claimed)
			if want := slices.Sorted(maps.Keys(tt.delays)); !slices.Equal(claimed, want) {
				t.Fatalf("claim %v, want %v", claimed, want)
			}
			for k, want := range tt.delays {
				if d.Delays[k] != want {
					t.Errorf("delay of %s %v, want %v", k, d.Delays[k], want)
				}
			}
			if d.Recheck != tt.recheck {
				t.Errorf("recheck %t, want %t", d.Recheck, tt.recheck)
			}
		})
	}
}

func beat(t *testing.T, st *livegatev1.EdgeStatus) []byte { return encode(t, st) }

// TestClaimsFollowTheHeartbeats: the edge with most room by its heartbeat claims a new pool route
// at once; the other waits a fallback per edge ranked before it, and claims when the first did
// not. An unreadable heartbeat, or one of another pool, takes no part in the ranking.
func TestClaimsFollowTheHeartbeats(t *testing.T) {
	now := time.Unix(1000, 0)
	kv := newStore()
	cfg := edgeConfig("edge-a")
	cfg.ClaimFallback, cfg.PortReserve = 10*time.Second, 0.02
	// edge-a's ports: 10500-10509, 10 free.
	kv.set(EdgesBucket, "edge-a", beat(t, &livegatev1.EdgeStatus{EdgeId: "edge-a", Pool: "default", MaxRoutes: 100, Capacity: 10, FreePorts: 10}))
	kv.set(EdgesBucket, "edge-b", beat(t, &livegatev1.EdgeStatus{EdgeId: "edge-b", Pool: "default", MaxRoutes: 100, Capacity: 100, FreePorts: 100}))
	kv.set(EdgesBucket, "edge-c", []byte("not a heartbeat"))
	kv.set(EdgesBucket, "edge-d", beat(t, &livegatev1.EdgeStatus{EdgeId: "edge-d", Pool: "other", MaxRoutes: 100, Capacity: 1000, FreePorts: 1000}))
	kv.set(RoutesBucket, "p1", encode(t, poolRoute("s1", "127.0.0.1:31000")))
	a := newEdge(t, kv, cfg, mediaPorts, nil, &now)
	r := a.pass(now)
	if len(r.plan.Claims) != 0 || !r.plan.Next.Equal(now.Add(10*time.Second)) {
		t.Fatalf("claims %v, next in %v; want none, due after the fallback (edge-b has more room)", r.plan.Claims, r.plan.Next.Sub(now))
	}
	if r := a.pass(now.Add(10 * time.Second)); len(r.plan.Claims) != 1 {
		t.Fatalf("edge-b did not claim and edge-a did not either after the fallback: %v", r.plan.Claims)
	}

	// The same from edge-b's side: it ranks first, and claims at once.
	kv2 := newStore()
	kv2.set(EdgesBucket, "edge-a", kv.live[EdgesBucket]["edge-a"].Value)
	kv2.set(EdgesBucket, "edge-b", kv.live[EdgesBucket]["edge-b"].Value)
	kv2.set(RoutesBucket, "p1", encode(t, poolRoute("s1", "127.0.0.1:31000")))
	cb := edgeConfig("edge-b")
	cb.ClaimFallback, cb.PortReserve = cfg.ClaimFallback, cfg.PortReserve
	b := newEdge(t, kv2, cb, portalloc.Range{First: 10500, Last: 10599}, nil, &now)
	if r := b.pass(now); len(r.plan.Claims) != 1 {
		t.Fatalf("edge-b, first by its heartbeat, claims %v", r.plan.Claims)
	}

	// edge-b's heartbeat goes: edge-a is alone, and claims a new route at once.
	kv.remove(EdgesBucket, "edge-b", true)
	kv.set(RoutesBucket, "p2", encode(t, poolRoute("s2", "127.0.0.1:31000")))
	if r := a.pass(now.Add(11 * time.Second)); len(r.plan.Claims) != 1 || r.plan.Claims[0].Key != "p2" {
		t.Fatalf("edge-a alone claims %v", r.plan.Claims)
	}
}

// TestDrainHandsOverAtTheDeadline: a draining edge claims no new route and keeps what it serves
// until its deadline, when it wants another plan; then it hands its pool routes over (their
// endpoints removed, reported as drained), keeps the routes that name it, and another edge claims
// the pool routes.
func TestDrainHandsOverAtTheDeadline(t *testing.T) {
	now := time.Unix(1000, 0)
	kv := newStore()
	kv.set(EdgesBucket, "edge-a", nil)
	for i := range 3 {
		kv.set(RoutesBucket, fmt.Sprintf("p%d", i), encode(t, poolRoute(fmt.Sprintf("s%d", i), "127.0.0.1:31000")))
	}
	kv.set(RoutesBucket, "e1", encode(t, edgeRoute("edge-a", "se1")))
	a := newEdge(t, kv, edgeConfig("edge-a"), mediaPorts, nil, &now)
	if r := a.pass(now); len(r.plan.Claims) != 3 || len(r.plan.Map) != 4 {
		t.Fatalf("claims %d, map %d; want 3 and 4", len(r.plan.Claims), len(r.plan.Map))
	}

	deadline := now.Add(time.Minute)
	a.drain = placement.Drain{Draining: true, Since: now, Deadline: deadline}
	kv.set(RoutesBucket, "p9", encode(t, poolRoute("s9", "127.0.0.1:31000")))
	r := a.pass(now.Add(time.Second))
	if len(r.plan.Claims) != 0 || len(r.plan.Map) != 4 || len(r.writes) != 0 || len(r.events(Removed)) != 0 {
		t.Fatalf("draining before the deadline: claims %v, map %d, writes %v, removed %v", r.plan.Claims, len(r.plan.Map), r.writes, r.events(Removed))
	}
	if !r.plan.Next.Equal(deadline) {
		t.Fatalf("next plan in %v, want at the deadline", r.plan.Next.Sub(now))
	}
	if a.s.Claiming(a.drain, 10, 10) {
		t.Fatal("a draining edge says it claims")
	}

	r = a.pass(deadline)
	if _, ok := r.plan.Map["se1"]; len(r.plan.Map) != 1 || !ok {
		t.Fatalf("map at the deadline %v, want only the route naming edge-a", r.plan.Map)
	}
	removed := r.events(Removed)
	for i := range 3 {
		k := fmt.Sprintf("p%d", i)
		if removed[k].RemovedAs != RemovedDrained {
			t.Errorf("removal of %s %+v, want drained", k, removed[k])
		}
		if endpointIn(t, kv, k) != nil {
			t.Errorf("endpoint of %s still there", k)
		}
	}
	if len(removed) != 3 {
		t.Errorf("removed %v, want the 3 pool routes", removed)
	}
	if !r.plan.Next.IsZero() {
		t.Errorf("next plan in %v after the deadline, want none", r.plan.Next.Sub(now))
	}

	kv.set(EdgesBucket, "edge-b", nil)
	b := newEdge(t, kv, edgeConfig("edge-b"), mediaPorts, nil, &now)
	if r := b.pass(deadline); len(r.plan.Claims) != 4 {
		t.Fatalf("edge-b claims %v, want the 3 handed over and the new one", r.plan.Claims)
	}

	// The drain ends: edge-a claims again.
	a.drain = placement.Drain{}
	kv.set(RoutesBucket, "p10", encode(t, poolRoute("s10", "127.0.0.1:31000")))
	if r := a.pass(deadline.Add(time.Second)); len(r.plan.Claims) != 1 || r.plan.Claims[0].Key != "p10" {
		t.Fatalf("edge-a undrained claims %v", r.plan.Claims)
	}
	if !a.s.Claiming(a.drain, 10, 10) {
		t.Fatal("an undrained edge with room says it does not claim")
	}
}
