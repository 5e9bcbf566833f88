package routes

import (
	"cmp"
	"fmt"
	"hash/fnv"
	"slices"
	"sort"
	"strings"
	"time"
)

// Endpoint is what this package needs of a livegate_endpoints entry.
type Endpoint struct {
	EdgeID   string
	Revision uint64
	Ports    []uint16
}

// Self identifies this edge.
type Self struct {
	EdgeID string
	Pool   string
}

// Claim is a pool route no live edge serves: this edge may take it by a compare-and-set write of
// its endpoint at Revision (0: create the key).
type Claim struct {
	Route    Route
	Revision uint64
}

// Plan is who serves what, as far as this edge is concerned.
type Plan struct {
	// Serve are the routes this edge serves, by key.
	Serve map[string]Route
	// Claims are pool routes up for grabs, sorted by key.
	Claims []Claim
	// Refused are routes addressed to this edge that it cannot take, with the reason, by key.
	Refused map[string]string
	// Taken are the refused routes whose session id another instance holds: key → holder.
	Taken map[string]string
	// Holders are the session ids this edge serves or may claim: session id → key.
	Holders map[string]string
}

// Derive decides, from the valid routes, the endpoints in KV and the edges whose heartbeat is
// alive, which routes this edge serves and which it may claim. A route naming an edge belongs to
// that edge; a route naming only a pool belongs to the pool edge holding its endpoint, and is
// claimable when none does or that edge's heartbeat has expired. Two routes with the same
// session id cannot share the map: the instance that holds it in owners (session id → key, the
// caller's memory of earlier plans) keeps it, even while its own route is away; else the older
// revision does.
// The endpoints are looked up by key, so that a caller keeping them in another shape does not
// copy them all on every pass.
func Derive(self Self, routes map[string]Route, endpoint func(key string) (Endpoint, bool), live map[string]bool, owners map[string]string) Plan {
	p := Plan{Serve: make(map[string]Route, len(routes)), Refused: map[string]string{}, Taken: map[string]string{}, Holders: map[string]string{}}
	type ordered struct {
		key string
		rev uint64
	}
	keys := make([]ordered, 0, len(routes))
	for k, r := range routes {
		keys = append(keys, ordered{key: k, rev: r.Revision})
	}
	// Oldest revision first, so the older route keeps a contested session id.
	slices.SortFunc(keys, func(a, b ordered) int {
		if a.rev != b.rev {
			return cmp.Compare(a.rev, b.rev)
		}
		return strings.Compare(a.key, b.key)
	})
	sessions := make(map[string]string, len(routes))
	for _, o := range keys {
		k := o.key
		r := routes[k]
		var claim *Claim
		switch {
		case r.EdgeID != "":
			if r.EdgeID != self.EdgeID {
				continue
			}
		case r.Pool == self.Pool:
			ep, ok := endpoint(k)
			switch {
			case ok && ep.EdgeID == self.EdgeID:
			case ok && live[ep.EdgeID]:
				continue
			case ok:
				claim = &Claim{Route: r, Revision: ep.Revision}
			default:
				claim = &Claim{Route: r}
			}
		default:
			continue
		}
		if owner, held := owners[r.SessionID]; held && owner != k {
			p.Refused[k] = fmt.Sprintf("session_id: held by instance %s, which had it first and whose lease has not ended", owner)
			p.Taken[k] = owner
			continue
		}
		if other, dup := sessions[r.SessionID]; dup {
			p.Refused[k] = fmt.Sprintf("session_id: already used by instance %s", other)
			p.Taken[k] = other
			continue
		}
		sessions[r.SessionID] = k
		if claim != nil {
			p.Claims = append(p.Claims, *claim)
			continue
		}
		p.Serve[k] = r
	}
	slices.SortFunc(p.Claims, func(a, b Claim) int { return strings.Compare(a.Route.Key, b.Route.Key) })
	p.Holders = sessions
	return p
}

// Diff returns what turns the map have into want: entries to set and keys to delete (sorted).
func Diff(want, have map[string]string) (set map[string]string, del []string) {
	set = map[string]string{}
	for k, v := range want {
		if hv, ok := have[k]; !ok || hv != v {
			set[k] = v
		}
	}
	for k := range have {
		if _, ok := want[k]; !ok {
			del = append(del, k)
		}
	}
	sort.Strings(del)
	return set, del
}

// ClaimDelay is how long an edge already serving load routes waits before it claims one more:
// step per route, at most max. Busier edges wait longer, so the least-loaded edge of a pool
// usually wins the compare-and-set.
func ClaimDelay(load int, step, max time.Duration) time.Duration {
	if load <= 0 || step <= 0 {
		return 0
	}
	if int64(load) >= int64(max/step) {
		return max
	}
	return time.Duration(load) * step
}

// ClaimOrder sorts keys in an order of this edge's own (a hash of edge id and key), so the edges
// of a pool facing the same burst of routes start claiming different ones and rarely collide.
func ClaimOrder(edgeID string, keys []string) {
	h := func(k string) uint64 {
		f := fnv.New64a()
		f.Write([]byte(edgeID))
		f.Write([]byte{0})
		f.Write([]byte(k))
		return f.Sum64()
	}
	slices.SortFunc(keys, func(a, b string) int {
		ha, hb := h(a), h(b)
		switch {
		case ha < hb:
			return -1
		case ha > hb:
			return 1
		}
		return strings.Compare(a, b)
	})
}

// Scheduler remembers when each pending claim falls due. It is pure: the caller passes the time.
type Scheduler struct {
	due map[string]time.Time
}

// NewScheduler returns an empty scheduler.
func NewScheduler() *Scheduler { return &Scheduler{due: map[string]time.Time{}} }

// Update takes the keys claimable now, in the order the caller wants them claimed; a key seen
// for the first time is due after delay(key, i), where i counts the new keys of this call, so a
// burst of claims is spread as the load it adds grows (and key may weigh in: its edge's rank for
// it, see package placement). It forgets keys
// no longer claimable and returns the keys due at now (sorted) and the next time one falls due
// (zero when none is pending).
func (s *Scheduler) Update(now time.Time, claimable []string, delay func(key string, i int) time.Duration) (due []string, next time.Time) {
	keep := make(map[string]bool, len(claimable))
	fresh := 0
	for _, k := range claimable {
		keep[k] = true
		if _, ok := s.due[k]; !ok {
			s.due[k] = now.Add(delay(k, fresh))
			fresh++
		}
	}
	for k, at := range s.due {
		switch {
		case !keep[k]:
			delete(s.due, k)
		case !at.After(now):
			due = append(due, k)
			delete(s.due, k)
		case next.IsZero() || at.Before(next):
			next = at
		}
	}
	sort.Strings(due)
	return due, next
}

// Pending is the number of claims waiting for their time.
func (s *Scheduler) Pending() int { return len(s.due) }
