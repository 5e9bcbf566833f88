package desired

import (
	"net/netip"
	"slices"
	"time"

	"github.com/livegate/livegate/edgeproxy/internal/routes"
)

// Op is the kind of a livegate_endpoints write.
type Op uint8

// The writes the core asks for.
const (
	// OpCreate creates the key: it fails when the key exists.
	OpCreate Op = iota + 1
	// OpUpdate writes at Revision: it fails when the key moved on.
	OpUpdate
	// OpPut writes whatever the key holds.
	OpPut
	// OpDelete removes the key at Revision: it fails when the key moved on.
	OpDelete
)

// Write is one livegate_endpoints write: Endpoint is the value (nil for OpDelete).
type Write struct {
	Key      string
	Op       Op
	Revision uint64
	Endpoint *Endpoint
	ports    []uint16
}

// Result is how a write ended.
type Result uint8

// The results of a write.
const (
	// Applied: the write is in KV at WriteResult.Revision.
	Applied Result = iota + 1
	// Conflict: a compare-and-set lost (the key exists, or moved on): another edge wrote first.
	Conflict
	// Failed: the write did not happen for another reason; it is tried again.
	Failed
)

// WriteResult is the outcome of a Write.
type WriteResult struct {
	Write    Write
	Result   Result
	Revision uint64
}

// EventKind is what an Event reports.
type EventKind uint8

// The events of the loop.
const (
	Programmed EventKind = iota + 1
	Removed
	Refused
)

// The reasons a route is no longer served, as the removal metric counts them.
const (
	RemovedDeleted    = "deleted"
	RemovedExpired    = "expired"
	RemovedRefused    = "refused"
	RemovedReassigned = "reassigned"
	RemovedDrained    = "drained"
)

// Event is a route programmed, removed or refused. Session and Pool may be empty (a refused value
// that names no valid one).
type Event struct {
	Kind               EventKind
	Key, Session, Pool string
	Revision           uint64
	Reason             string
	// RemovedAs is a removal's reason as the metric counts it (RemovedDeleted, ...).
	RemovedAs string
	// Latency is how long a programmed route took since its change was seen (HasLatency: known).
	Latency    time.Duration
	HasLatency bool
	Backend    string
	Ports      []uint16
}

// Claimed takes in the results of p's claims. The routes whose claim lost leave p (their ports
// are released and p's map and mappings derived again); it returns their keys.
func (s *State) Claimed(p *Plan, results []WriteResult) (lost []string) {
	for _, res := range results {
		k := res.Write.Key
		if res.Result != Applied {
			lost = append(lost, k)
			continue
		}
		s.endpoints[k] = endpoint{Endpoint: routes.Endpoint{EdgeID: s.cfg.EdgeID, Revision: res.Revision, Ports: res.Write.ports}, pub: res.Write.Endpoint}
	}
	if len(lost) == 0 {
		return nil
	}
	slices.Sort(lost)
	for _, k := range lost {
		s.ports.Release(mediaKey(p.Routes[k].Route))
		delete(p.Routes, k)
	}
	s.program(p)
	return lost
}

// Ready reports whether the media plane holds the mappings of p's route key, so that the route
// is routable; nil means every route is.
type Ready func(key string) bool

// Publish returns the endpoint writes p calls for: the endpoint of each route served whose KV
// entry is missing or stale, once ready says the route is routable (its map entry is assumed
// programmed), and the removal of this edge's endpoints of routes it no longer serves. A removal
// is at the entry's revision, so an endpoint another edge has just written is never removed.
// Their results go to Written; until then they are under way (see NeedsWritten). Writes of
// several calls may be under way at once: a key whose write is under way is left out, and
// looked at again once its result is in. A plan of changed routes (Plan.Changed) looks at those
// alone.
func (s *State) Publish(p *Plan, ready Ready) []Write {
	claimed := make(map[string]bool, len(p.Claims))
	for _, c := range p.Claims {
		claimed[c.Key] = true
	}
	var stale []string
	consider := func(k string, w Served) {
		if claimed[k] || ready != nil && !ready(k) {
			return
		}
		if cur, ok := s.endpoints[k]; ok && s.publishes(cur.pub, w) {
			return
		}
		stale = append(stale, k)
	}
	var gone []string
	leaves := func(k string) {
		if ep, ok := s.endpoints[k]; ok && ep.EdgeID == s.cfg.EdgeID {
			if _, served := p.Routes[k]; !served {
				gone = append(gone, k)
			}
		}
	}
	if p.changed != nil {
		// The changed routes, and those still waiting for the media plane.
		for k := range p.changed {
			if w, ok := p.Routes[k]; ok {
				consider(k, w)
			}
			leaves(k)
		}
		for k := range s.unreported {
			if w, ok := p.Routes[k]; ok && !p.changed[k] {
				consider(k, w)
			}
		}
	} else {
		for k, w := range p.Routes {
			consider(k, w)
		}
		for k := range s.endpoints {
			leaves(k)
		}
	}
	return s.startWrites(p.Routes, stale, gone, p.now)
}

// startWrites returns the writes of the stale endpoints and of the removals gone, leaving out
// (as blocked) the keys whose write is under way, and records them as under way.
func (s *State) startWrites(served map[string]Served, stale, gone []string, now time.Time) []Write {
	slices.Sort(stale)
	slices.Sort(gone)
	var writes []Write
	if s.writing == nil {
		s.writing = map[string]*Endpoint{}
	}
	for _, k := range stale {
		if _, busy := s.writing[k]; busy {
			s.blocked[k] = true
			continue
		}
		w := served[k]
		cur, ok := s.endpoints[k]
		pub := s.endpointFor(w, s.credentials(w, now))
		wr := Write{Key: k, Op: OpPut, Endpoint: pub, ports: w.Ports}
		if w.Route.EdgeID == "" && ok {
			// A pool route's endpoint changes only under the claim this edge holds.
			wr.Op, wr.Revision = OpUpdate, cur.Revision
		}
		writes = append(writes, wr)
		s.writing[k] = pub
	}
	for _, k := range gone {
		if _, busy := s.writing[k]; busy {
			s.blocked[k] = true
			continue
		}
		s.writing[k] = nil
		writes = append(writes, Write{Key: k, Op: OpDelete, Revision: s.endpoints[k].Revision})
	}
	if len(s.writing) == 0 {
		s.writing = nil
	}
	return writes
}

// Routable returns, at now, the endpoint writes and programmed events of the routes served that
// ready now says the media plane holds and that no commit has reported yet: what a plan would
// publish and report once a media batch is done, without planning again. Their results go to
// Written.
func (s *State) Routable(now time.Time, ready Ready) ([]Write, []Event) {
	s.now = now
	evs := s.programmed(s.served, now, ready)
	var stale []string
	for _, ev := range evs {
		w := s.served[ev.Key]
		if cur, ok := s.endpoints[ev.Key]; ok && s.publishes(cur.pub, w) {
			continue
		}
		stale = append(stale, ev.Key)
	}
	return s.startWrites(s.served, stale, nil, now), evs
}

// Written takes in the results of writes Publish or Routable returned (one call's, or any of
// them: each key's result once). A failed one is still stale, so the next plan writes it again;
// Retry says one did. It reports whether a plan should follow: a key left out because its write
// was under way may be stale still.
func (s *State) Written(results []WriteResult) bool {
	again := false
	for _, res := range results {
		k := res.Write.Key
		delete(s.writing, k)
		if s.blocked[k] {
			delete(s.blocked, k)
			s.dirty[k], again = true, true
		}
		switch {
		case res.Result == Conflict && res.Write.Op == OpDelete:
		case res.Result != Applied:
			s.retry = true
			s.dirty[k] = true
		case res.Write.Op == OpDelete:
			delete(s.endpoints, k)
		default:
			s.endpoints[k] = endpoint{Endpoint: routes.Endpoint{EdgeID: s.cfg.EdgeID, Revision: res.Revision, Ports: res.Write.ports}, pub: res.Write.Endpoint}
		}
	}
	if len(s.writing) == 0 {
		s.writing = nil
	}
	return again
}

// Retry reports, once, whether a write failed since it was last asked.
func (s *State) Retry() bool {
	r := s.retry
	s.retry = false
	return r
}

// Commit is what a committed plan reports and hands on.
type Commit struct {
	// Events are the routes removed and programmed (anew, not a lease renewal).
	Events []Event
	// Relay, when not nil, is the sessions served and their media, for the TURN relay.
	Relay map[string]RelayMedia
	// Next is when a published TURN credential falls due for renewal (zero: none).
	Next time.Time
	// Fresh are the routes this commit serves anew (new, or changed), sorted.
	Fresh []string
}

// RelayMedia is what the TURN relay may relay to for one session.
type RelayMedia struct {
	Ports    []uint16
	Backends []netip.AddrPort
}

// Commit records p as served, once its map is programmed and its writes started, at the time at.
// A route new or changed is reported programmed once ready says it is routable: by this commit
// or a later one.
func (s *State) Commit(p *Plan, at time.Time, ready Ready) Commit {
	var c Commit
	var removed []string
	gone := func(k string) {
		if _, ok := p.Routes[k]; !ok {
			removed = append(removed, k)
		}
	}
	if p.changed != nil {
		for k := range p.changed {
			if _, ok := s.served[k]; ok {
				gone(k)
			}
		}
	} else {
		for k := range s.served {
			gone(k)
		}
	}
	slices.Sort(removed)
	for _, k := range removed {
		old := s.served[k]
		kind, reason := s.removal(p, k)
		c.Events = append(c.Events, Event{Kind: Removed, Key: k, Session: old.Route.SessionID, Pool: old.Route.Pool, Reason: reason, RemovedAs: kind})
	}
	// The plan's own map becomes what is served rather than being copied.
	served := p.Routes
	fresh := 0
	check := func(k string, w Served) {
		if old, had := s.served[k]; !had || !sameProgramming(old, w) {
			fresh++
			if w.Since.IsZero() {
				w.Since = p.now
				served[k] = w
			}
			s.unreported[k] = true
			c.Fresh = append(c.Fresh, k)
		}
	}
	if p.changed != nil {
		for k := range p.changed {
			if w, ok := served[k]; ok {
				check(k, w)
			}
		}
	} else {
		for k, w := range served {
			check(k, w)
		}
	}
	slices.Sort(c.Fresh)
	c.Events = append(c.Events, s.programmed(served, at, ready)...)
	if s.relay != nil && (fresh > 0 || len(s.served) != len(served) || !s.committed) {
		c.Relay = relaySessions(served)
	}
	s.served, s.committed = served, true
	clear(s.expired)
	c.Next = s.turnRenew
	return c
}

// programmed reports the routes served and not yet reported that ready says are routable.
func (s *State) programmed(served map[string]Served, at time.Time, ready Ready) []Event {
	var report []string
	for k := range s.unreported {
		if _, ok := served[k]; !ok {
			delete(s.unreported, k)
			continue
		}
		if ready == nil || ready(k) {
			report = append(report, k)
			delete(s.unreported, k)
		}
	}
	slices.Sort(report)
	evs := make([]Event, 0, len(report))
	for _, k := range report {
		w := served[k]
		ev := Event{Kind: Programmed, Key: k, Session: w.Route.SessionID, Pool: w.Route.Pool, Backend: w.Route.Signaling.String(), Ports: w.Ports}
		if seen, ok := s.seen[k]; ok {
			ev.Latency, ev.HasLatency = max(at.Sub(seen), 0), true
		}
		evs = append(evs, ev)
	}
	return evs
}

func relaySessions(served map[string]Served) map[string]RelayMedia {
	sessions := make(map[string]RelayMedia, len(served))
	for _, w := range served {
		m := sessions[w.Route.SessionID]
		m.Ports = append(m.Ports, w.PublicPorts()...)
		m.Backends = append(m.Backends, w.Route.Media...)
		sessions[w.Route.SessionID] = m
	}
	return sessions
}

// removal says why a route this edge served is no longer served: the metric's reason and the
// event's words. A route that vanished while this edge was away from NATS is held first (see
// hold) and counts as expired when the hold ends.
func (s *State) removal(p *Plan, key string) (kind, reason string) {
	rev, known := s.revisionOf(key)
	switch {
	case s.expired[key]:
		return RemovedExpired, "route lease expired"
	case !known:
		return RemovedDeleted, "route deleted"
	case s.refused[key].mark != "" && s.refused[key].revision == rev:
		return RemovedRefused, "route refused"
	case p.releasing && s.valid[key].EdgeID == "":
		return RemovedDrained, "edge drained: deadline passed; handed to the pool's other edges"
	default:
		return RemovedReassigned, "route no longer served by this edge"
	}
}

// sameProgramming tells a lease renewal (a new revision of an unchanged route) from a change that
// programs the route anew: only the latter is reported, or every route would be reported again
// every third of its lease.
func sameProgramming(a, b Served) bool {
	return a.Route.SessionID == b.Route.SessionID && a.Route.Signaling == b.Route.Signaling &&
		slices.Equal(a.Route.Media, b.Route.Media) && slices.Equal(a.Ports, b.Ports)
}
