package desired

import (
	"cmp"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/livegate/livegate/edgeproxy/internal/placement"
	"github.com/livegate/livegate/edgeproxy/internal/portalloc"
	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
)

// TestPlanOfChangesIsTheFullPlan runs two edges through the same random history of KV changes,
// one planning changed routes alone where it may (Plan.Changed), the other always planning in
// full, and checks that every plan, write and event is the same: a plan of changes is only a
// shorter way to the full plan.
func TestPlanOfChangesIsTheFullPlan(t *testing.T) {
	// Half the histories mostly churn routes of this edge (where plans of changes happen), half
	// mix in everything that takes a full plan.
	changes, plans := 0, 0
	for seed := range uint64(80) {
		calm := seed%2 == 0
		changes += comparePlans(t, seed, 150, calm)
		plans += 150
	}
	t.Logf("%d of %d plans looked at their changes alone", changes, plans)
	if changes < plans/10 {
		t.Fatalf("only %d of %d plans looked at their changes alone", changes, plans)
	}
}

func comparePlans(t *testing.T, seed uint64, steps int, calm bool) int {
	rng := rand.New(rand.NewPCG(seed, 1))
	now := time.Unix(1000, 0)
	kvA, kvB := newStore(), newStore()
	cfg := edgeConfig("edge-a")
	ports := mediaPorts
	if calm {
		ports = portalloc.Range{First: 10500, Last: 10599}
	}
	a := newEdge(t, kvA, cfg, ports, nil, &now)
	b := newEdge(t, kvB, cfg, ports, nil, &now)
	b.s.noChanges = true
	both := func(f func(kv *store)) { f(kvA); f(kvB) }
	var k int
	key := func() string { k = rng.IntN(12); return fmt.Sprintf("i%d", k) }
	// A calm history gives each key sessions of its own: no id is contested.
	session := func() string {
		if calm {
			return fmt.Sprintf("s%d.%d", k, rng.IntN(3))
		}
		return fmt.Sprintf("s%d", rng.IntN(14))
	}
	backends := func() []string {
		var out []string
		for range rng.IntN(3) {
			out = append(out, fmt.Sprintf("127.0.0.1:%d", 31000+rng.IntN(4)))
		}
		return out
	}
	changes := 0
	for step := range steps {
		var what string
		op := rng.IntN(100)
		if calm && op >= 70 && rng.IntN(10) > 0 {
			op = rng.IntN(70)
		}
		switch {
		case op < 45:
			k, r := key(), edgeRoute("edge-a", session(), backends()...)
			if rng.IntN(4) == 0 {
				r = leased(r, time.Minute)
			}
			what = "put " + k
			v := encode(t, r)
			both(func(kv *store) { kv.set(RoutesBucket, k, v) })
		case op < 70:
			k := key()
			what = "delete " + k
			both(func(kv *store) { kv.remove(RoutesBucket, k, false) })
		case op < 74:
			k := key()
			what = "purge " + k
			both(func(kv *store) { kv.remove(RoutesBucket, k, true) })
		case op < 80:
			k := key()
			what = "pool route " + k
			v := encode(t, poolRoute(session(), backends()...))
			both(func(kv *store) { kv.set(RoutesBucket, k, v) })
		case op < 85:
			k := key()
			what = "other edge's route " + k
			v := encode(t, edgeRoute("edge-b", session(), backends()...))
			both(func(kv *store) { kv.set(RoutesBucket, k, v) })
		case op < 88:
			k := key()
			what = "invalid route " + k
			both(func(kv *store) { kv.set(RoutesBucket, k, []byte("{not json")) })
		case op < 92:
			k := key()
			what = "edge-b's endpoint " + k
			v := encode(t, &livegatev1.Endpoint{InstanceId: k, SessionId: session(), EdgeId: "edge-b", PublicHost: "edge-b.example.test"})
			both(func(kv *store) { kv.set(EndpointsBucket, k, v) })
		case op < 95:
			what = "edge-b beats"
			v := encode(t, &livegatev1.EdgeStatus{EdgeId: "edge-b", Pool: "default", MaxRoutes: 100})
			both(func(kv *store) { kv.set(EdgesBucket, "edge-b", v) })
		case op < 97:
			what = "edge-b lapses"
			both(func(kv *store) { kv.remove(EdgesBucket, "edge-b", true) })
		default:
			what = "drain toggled"
			if a.drain.Draining {
				a.drain = placement.Drain{}
			} else {
				a.drain = placement.Drain{Draining: true, Since: now, Deadline: now.Add(time.Duration(rng.IntN(3)) * time.Second)}
			}
			b.drain = a.drain
		}
		now = now.Add(time.Duration(rng.IntN(1500)) * time.Millisecond)
		ra, rb := a.pass(now), b.pass(now)
		if ra.plan.Changed() {
			changes++
		}
		where := fmt.Sprintf("seed %d, step %d (%s), changes only %v", seed, step, what, ra.plan.Changed())
		if !reflect.DeepEqual(ra.plan.Routes, rb.plan.Routes) {
			t.Fatalf("%s: routes\n%+v\nwant\n%+v", where, ra.plan.Routes, rb.plan.Routes)
		}
		if !reflect.DeepEqual(ra.plan.Map, rb.plan.Map) || !reflect.DeepEqual(ra.plan.Media, rb.plan.Media) || ra.plan.MediaChanged != rb.plan.MediaChanged {
			t.Fatalf("%s: map %v media %v (changed %v), want %v %v (%v)", where, ra.plan.Map, ra.plan.Media, ra.plan.MediaChanged, rb.plan.Map, rb.plan.Media, rb.plan.MediaChanged)
		}
		// Refusals come in map order.
		for _, evs := range [][]Event{ra.plan.Events, rb.plan.Events} {
			slices.SortFunc(evs, func(x, y Event) int { return cmp.Or(cmp.Compare(x.Kind, y.Kind), strings.Compare(x.Key, y.Key)) })
		}
		if !reflect.DeepEqual(ra.plan.Claims, rb.plan.Claims) || !reflect.DeepEqual(ra.plan.Events, rb.plan.Events) || !ra.plan.Next.Equal(rb.plan.Next) {
			t.Fatalf("%s: claims %+v events %+v next %v, want %+v %+v %v", where, ra.plan.Claims, ra.plan.Events, ra.plan.Next, rb.plan.Claims, rb.plan.Events, rb.plan.Next)
		}
		if !reflect.DeepEqual(ra.writes, rb.writes) {
			t.Fatalf("%s: writes %+v, want %+v", where, ra.writes, rb.writes)
		}
		if !reflect.DeepEqual(ra.commit, rb.commit) {
			t.Fatalf("%s: commit %+v, want %+v", where, ra.commit, rb.commit)
		}
	}
	return changes
}
