package reconcile

import (
	"time"

	"github.com/livegate/livegate/edgeproxy/internal/placement"
	"github.com/livegate/livegate/edgeproxy/internal/routes"
	"github.com/livegate/livegate/pkg/kvstore"
	"github.com/livegate/livegate/pkg/wire"
	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
)

// edgeEntry is what the placement policy needs of a livegate_edges entry, and the edge's pool.
type edgeEntry struct {
	placement.Edge
	pool string
}

// trackEdge keeps what the placement policy needs of a livegate_edges change. An unreadable
// entry is an edge that takes nothing.
func (r *Reconciler) trackEdge(e kvstore.Entry) {
	if e.Deleted {
		delete(r.edgeState, e.Key)
		return
	}
	if r.edgeState == nil {
		r.edgeState = map[string]edgeEntry{}
	}
	var st livegatev1.EdgeStatus
	if wire.Unmarshal(e.Value, &st) != nil {
		r.edgeState[e.Key] = edgeEntry{Edge: placement.Edge{ID: e.Key, Draining: true}}
		return
	}
	// An edge older than max_routes publishes 0 and so has no room by the policy: it is left out
	// of the ranking and claims by its own rule, first come, as before.
	r.edgeState[e.Key] = edgeEntry{pool: st.GetPool(), Edge: placement.Edge{
		ID: e.Key, MaxRoutes: int(st.GetMaxRoutes()), PortCapacity: int(st.GetCapacity()), FreePorts: int(st.GetFreePorts()),
		BeatRoutes: int(st.GetRoutes()), Draining: st.GetDraining(),
	}}
}

// poolEdges are the live edges of this edge's pool as the shared state shows them, each with the
// count of endpoints naming it now. This edge is added from its own numbers while its heartbeat
// is not yet in the watch.
func (r *Reconciler) poolEdges(drain placement.Drain) []placement.Edge {
	counts := map[string]int{}
	for _, ep := range r.endpoints {
		counts[ep.EdgeID]++
	}
	var out []placement.Edge
	self := false
	for id, e := range r.edgeState {
		if !r.live[id] || e.pool != r.cfg.Pool {
			continue
		}
		e.Routes = counts[id]
		if id == r.cfg.EdgeID {
			// Its own drain is known here before its heartbeat says so.
			e.Draining = e.Draining || drain.Draining
		}
		out = append(out, e.Edge)
		self = self || id == r.cfg.EdgeID
	}
	if !self {
		total, free := r.d.Media.Capacity()
		out = append(out, placement.Edge{
			ID: r.cfg.EdgeID, MaxRoutes: r.cfg.MaxRoutes, PortCapacity: total, FreePorts: free,
			Routes: counts[r.cfg.EdgeID], BeatRoutes: counts[r.cfg.EdgeID], Draining: drain.Draining,
		})
	}
	return out
}

// drainState is this edge's drain state (never draining without Deps.Drain).
func (r *Reconciler) drainState() placement.Drain {
	if r.d.Drain == nil {
		return placement.Drain{}
	}
	return r.d.Drain()
}

// releaseDrained drops from serve the pool routes of an edge whose drain deadline has passed, so
// that their endpoints are removed and the pool's other edges claim them; routes that name this
// edge have nowhere else to go and stay. It reports whether it released.
func releaseDrained(serve map[string]routes.Route, drain placement.Drain, now time.Time) bool {
	if !drain.Release(now) {
		return false
	}
	for k, rt := range serve {
		if rt.EdgeID == "" {
			delete(serve, k)
		}
	}
	return true
}

// claimDelays ranks the claimable pool routes among the pool's edges (see placement.Assign) and
// returns this edge's wait for each one it may claim; a route it must leave to others is absent.
// unassigned reports routes no edge takes by the shared state, which a later heartbeat may change.
func (r *Reconciler) claimDelays(drain placement.Drain, keys []string) (delays map[string]time.Duration, unassigned bool) {
	if len(keys) == 0 {
		return nil, false
	}
	ranks := placement.Assign(r.poolEdges(drain), keys, r.cfg.PortReserve)
	delays = make(map[string]time.Duration, len(keys))
	for _, k := range keys {
		ranked, ok := ranks[k]
		unassigned = unassigned || !ok
		if d, mine := placement.Delay(r.cfg.EdgeID, ranked, r.cfg.ClaimFallback); mine {
			delays[k] = d
		}
	}
	return delays, unassigned
}

// portTotal is the size of the public port range (0 without a media plane).
func (r *Reconciler) portTotal() int {
	total, _ := r.d.Media.Capacity()
	return total
}
