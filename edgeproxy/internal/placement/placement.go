// Package placement is the edges' shared policy for pool routes: which edge of a pool should
// claim a new route given every edge's published capacity and drain state, when an edge stops
// claiming (draining, or near the end of its public port range), and when a draining edge hands
// the routes it still serves to the rest of its pool. It is pure: the caller passes the state
// read from livegate_edges and livegate_endpoints, and the time.
package placement

import (
	"cmp"
	"hash/fnv"
	"slices"
	"strings"
	"time"
)

// Edge is one edge of a pool as the shared state describes it: its heartbeat in livegate_edges,
// and how many endpoints in livegate_endpoints name it now.
type Edge struct {
	ID string
	// MaxRoutes is the most routes it takes (--max-routes).
	MaxRoutes int
	// PortCapacity and FreePorts are its public UDP port range and the ports free in it when it
	// last beat; PortCapacity is 0 without a media plane.
	PortCapacity, FreePorts int
	// BeatRoutes is how many routes it served when it last beat; Routes how many endpoints name
	// it now. Routes taken since the heartbeat are taken off its free ports (one each).
	BeatRoutes, Routes int
	Draining           bool
}

// Reserve is the share of an edge's public port range it keeps: with this many free ports or
// fewer it takes no new pool route, and the pool's other edges do.
func Reserve(capacity int, share float64) int {
	if capacity <= 0 || share <= 0 {
		return 0
	}
	return int(float64(capacity) * share)
}

// Room is how many more single-port routes e can take by the shared state: the lesser of its
// route slots and its free ports (estimated since its heartbeat) above its reserve. Negative
// means none.
func (e Edge) Room(share float64) int {
	room := e.MaxRoutes - e.Routes
	if e.PortCapacity > 0 {
		free := e.FreePorts - max(e.Routes-e.BeatRoutes, 0)
		room = min(room, free-Reserve(e.PortCapacity, share))
	}
	return room
}

// Claimable reports whether e takes new pool routes: not draining, with room above its reserve.
func (e Edge) Claimable(share float64) bool { return !e.Draining && e.Room(share) > 0 }

// Assign decides, for each new pool route (keys), the order in which the pool's edges should try
// to claim it: the edge with most room first, then the others by room, each route taking one
// from the room of the edge it goes to so that a burst spreads as rooms even out. Ties go by a
// hash of route and edge, so edges with equal room share a burst. Draining edges and those at
// their reserve get nothing. Every edge computing this from the same state gets the same answer,
// so only the first of a route's list needs to claim it; the others wait their rank (see Delay)
// in case it does not. The result maps each key to its ranked edge ids; keys no edge can take
// are absent.
func Assign(edges []Edge, keys []string, share float64) map[string][]string {
	room := make(map[string]int, len(edges))
	var open []string
	for _, e := range edges {
		if e.Claimable(share) {
			room[e.ID] = e.Room(share)
			open = append(open, e.ID)
		}
	}
	out := make(map[string][]string, len(keys))
	if len(open) == 0 {
		return out
	}
	sorted := slices.Clone(keys)
	slices.Sort(sorted)
	for _, k := range sorted {
		ranked := slices.Clone(open)
		slices.SortFunc(ranked, func(a, b string) int {
			if c := cmp.Compare(room[b], room[a]); c != 0 {
				return c
			}
			if c := cmp.Compare(tie(k, a), tie(k, b)); c != 0 {
				return c
			}
			return strings.Compare(a, b)
		})
		if room[ranked[0]] <= 0 {
			continue
		}
		room[ranked[0]]--
		out[k] = ranked
	}
	return out
}

func tie(key, edge string) uint64 {
	f := fnv.New64a()
	f.Write([]byte(key))
	f.Write([]byte{0})
	f.Write([]byte(edge))
	return f.Sum64()
}

// Delay is how long self waits before claiming a route ranked as in Assign: nothing when it is
// first, fallback for each edge ranked before it, so that an edge that does not claim (stopped,
// cut off from NATS, its heartbeat not yet expired) costs the route fallback per rank. ok is false
// when self is not in the ranking: it must not claim.
func Delay(self string, ranked []string, fallback time.Duration) (time.Duration, bool) {
	i := slices.Index(ranked, self)
	if i < 0 {
		return 0, false
	}
	return time.Duration(i) * fallback, true
}

// Drain is an edge's drain state. Deadline zero means no deadline: its routes stay until they end.
type Drain struct {
	Draining bool      `json:"draining"`
	Since    time.Time `json:"since,omitzero"`
	Deadline time.Time `json:"deadline,omitzero"`
}

// Release reports whether a draining edge hands its pool routes to the rest of the pool at now:
// once its deadline has passed.
func (d Drain) Release(now time.Time) bool {
	return d.Draining && !d.Deadline.IsZero() && !now.Before(d.Deadline)
}

// Next is when the drain state changes by itself after now (its deadline), zero when never.
func (d Drain) Next(now time.Time) time.Time {
	if !d.Draining || d.Deadline.IsZero() || !now.Before(d.Deadline) {
		return time.Time{}
	}
	return d.Deadline
}

// Reason is what /readyz says of a draining edge.
func (d Drain) Reason(now time.Time) string {
	switch {
	case !d.Draining:
		return ""
	case d.Deadline.IsZero():
		return "draining since " + d.Since.UTC().Format(time.RFC3339) + ": no new sessions; sessions served until they end"
	case d.Release(now):
		return "draining since " + d.Since.UTC().Format(time.RFC3339) + ": deadline " + d.Deadline.UTC().Format(time.RFC3339) + " passed; pool sessions handed to the pool's other edges"
	default:
		return "draining since " + d.Since.UTC().Format(time.RFC3339) + ": no new sessions; pool sessions handed to the pool's other edges at " + d.Deadline.UTC().Format(time.RFC3339)
	}
}
