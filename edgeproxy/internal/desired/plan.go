package desired

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/livegate/livegate/edgeproxy/internal/media"
	"github.com/livegate/livegate/edgeproxy/internal/placement"
	"github.com/livegate/livegate/edgeproxy/internal/portalloc"
	"github.com/livegate/livegate/edgeproxy/internal/routes"
	"github.com/livegate/livegate/pkg/events"
	"github.com/livegate/livegate/pkg/sessionid"
)

// Plan is what this edge should have programmed now, and the writes that claim pool routes.
type Plan struct {
	// Routes are the routes to serve, by key, with their ports.
	Routes map[string]Served
	// Map is HAProxy's map: session id → signaling backend.
	Map map[string]string
	// Media are the media plane's mappings, by the route's media key. An unchanged route keeps
	// the slice of the plan before, so that comparing plans is cheap.
	Media map[string][]media.Mapping
	// MediaChanged is whether Media differs from the previous plan's.
	MediaChanged bool
	// Claims are the compare-and-set writes that take pool routes (already in Routes); their
	// results go to Claimed before the map is trusted.
	Claims []Write
	// Events are the refusals this plan found (each reported once per change of its route).
	Events []Event
	// Conflicts counts the refusals reported now because another instance holds the session id.
	Conflicts int
	// MediaErrors counts the routes refused because the media plane had no ports for them.
	MediaErrors int
	// Next is when the core wants another plan (zero: only on a change).
	Next time.Time
	now  time.Time
	// releasing is set when the plan hands a drained edge's pool routes over (see release).
	releasing bool
	// changed, when not nil, says the plan looked only at these route keys (see planChanges):
	// the other routes are served as the plan before served them.
	changed map[string]bool
}

// Changed reports whether the plan looked only at the routes that changed since the plan before
// (true), or at every route.
func (p *Plan) Changed() bool { return p.changed != nil }

// Plan works out what this edge serves at now, in the drain state drain, assigns the public
// ports of routes new to it, and releases those of routes it no longer serves.
//
// Most plans under churn change a few routes: when nothing else changed since the plan before
// (see changesOnly), only those are planned, in time that grows with them rather than with the
// routes served, and the plan is the one a full derivation would make.
func (s *State) Plan(now time.Time, drain placement.Drain) *Plan {
	if s.changesOnly(now, drain) {
		return s.planChanges(now)
	}
	s.whole, s.changesOK = false, false
	clear(s.dirty)
	s.now, s.turnRenew = now, time.Time{}
	p := &Plan{now: now}
	heldUntil := s.releaseHeld(now)
	s.refuseInvalid(p)
	holders, ownersUntil := s.trackOwners(now)
	derived := routes.Derive(routes.Self{EdgeID: s.cfg.EdgeID, Pool: s.cfg.Pool}, s.valid, func(k string) (routes.Endpoint, bool) {
		e, ok := s.endpoints[k]
		return e.Endpoint, ok
	}, s.live, holders)
	s.refuseDerived(p, derived)
	p.releasing = release(derived.Serve, drain, now)
	due, next, starved := s.dueClaims(p, derived, drain, now)

	p.Routes = make(map[string]Served, len(derived.Serve)+len(due))
	for k, rt := range derived.Serve {
		p.Routes[k] = Served{Route: rt}
	}
	claims := make(map[string]routes.Claim, len(due))
	for _, c := range due {
		claims[c.Route.Key] = c
		p.Routes[c.Route.Key] = Served{Route: c.Route}
	}
	if s.assignPorts(p, claims, nil) > 0 {
		starved = true
	}
	for k, w := range s.served {
		if _, ok := p.Routes[k]; !ok {
			s.ports.Release(mediaKey(w.Route))
		}
	}
	for _, k := range slices.Sorted(maps.Keys(claims)) {
		w := p.Routes[k]
		pub := s.endpointFor(w, s.credentials(w, now))
		op := OpCreate
		if claims[k].Revision != 0 {
			op = OpUpdate
		}
		p.Claims = append(p.Claims, Write{Key: k, Op: op, Revision: claims[k].Revision, Endpoint: pub, ports: w.Ports})
	}
	s.program(p)
	for _, at := range []time.Time{heldUntil, ownersUntil, drain.Next(now)} {
		if !at.IsZero() {
			next = earliest(next, at)
		}
	}
	if starved {
		next = earliest(next, now.Add(s.cfg.Recheck))
	}
	p.Next = next
	// What only a full plan revisits: claims, holds and session ids waiting for their time, a
	// drain, a starved edge's recheck.
	s.changesOK = len(derived.Claims) == 0 && len(due) == 0 && s.sched.Pending() == 0 && !starved &&
		heldUntil.IsZero() && ownersUntil.IsZero() && !drain.Draining
	return p
}

// PlanAll makes the next plan a full one, whatever changed: a resync, or news the core does not
// see (a TURN secret rotated).
func (s *State) PlanAll() { s.whole = true }

// changesOnly reports whether a plan at now may look at the changed routes alone: the plan
// before was full or such a plan, and since then only routes that name this edge changed (or
// routes that were never this edge's), with no session id shared, no refusal, hold or lapse to
// revisit, no drain, no TURN credential due and no failed write. Anything else takes a full
// plan, which is always right.
func (s *State) changesOnly(now time.Time, drain placement.Drain) bool {
	if s.noChanges || s.whole || !s.changesOK || drain.Draining || len(s.held) > 0 || len(s.expired) > 0 ||
		len(s.refused) > 0 || len(s.invalid) > 0 || s.sched.Pending() > 0 || (!s.turnRenew.IsZero() && !now.Before(s.turnRenew)) {
		return false
	}
	sessions := make(map[string]bool, len(s.dirty))
	for k := range s.dirty {
		old, served := s.served[k]
		rt, ok := s.valid[k]
		switch {
		case served && old.Route.EdgeID != s.cfg.EdgeID:
			// A pool route this edge serves: its endpoint and the pool decide.
			return false
		case !ok:
		case rt.EdgeID == "":
			return false
		case rt.EdgeID != s.cfg.EdgeID:
		default:
			if o, held := s.owners[rt.SessionID]; held && o.key != k || sessions[rt.SessionID] {
				return false
			}
			sessions[rt.SessionID] = true
		}
	}
	return true
}

// planChanges is Plan for the routes changed since the plan before (see changesOnly): the rest
// are served as they were, with their ports, map entries and mappings.
func (s *State) planChanges(now time.Time) *Plan {
	s.now = now
	p := &Plan{now: now, changed: s.dirty}
	s.dirty = map[string]bool{}
	p.Routes = maps.Clone(s.served)
	if p.Routes == nil {
		p.Routes = map[string]Served{}
	}
	keys := slices.Sorted(maps.Keys(p.changed))
	var assign []string
	for _, k := range keys {
		old, served := s.served[k]
		rt, ok := s.valid[k]
		mine := ok && rt.EdgeID == s.cfg.EdgeID
		if served && (!mine || rt.SessionID != old.Route.SessionID) {
			// As trackOwners: the id goes with a route that left or changed session.
			if o, held := s.owners[old.Route.SessionID]; held && o.key == k && (!ok || rt.SessionID != old.Route.SessionID) {
				delete(s.owners, old.Route.SessionID)
			}
		}
		if !mine {
			if served {
				delete(p.Routes, k)
				s.ports.Release(mediaKey(old.Route))
			}
			continue
		}
		if o, held := s.owners[rt.SessionID]; held {
			o.lease = rt.LeaseTTL
			s.owners[rt.SessionID] = o
		} else {
			s.owners[rt.SessionID] = owner{key: k, lease: rt.LeaseTTL}
		}
		p.Routes[k] = Served{Route: rt}
		assign = append(assign, k)
	}
	var next time.Time
	if s.assignPorts(p, nil, assign) > 0 {
		next = now.Add(s.cfg.Recheck)
		s.changesOK = false
	}
	s.programChanges(p)
	p.Next = next
	return p
}

// refuseDerived reports the routes the derivation refused (a session id held by another
// instance), and records the holders of the session ids it handed out.
func (s *State) refuseDerived(p *Plan, derived routes.Plan) {
	for k, reason := range derived.Refused {
		rt := s.valid[k]
		if s.refuse(p, k, rt.Revision, routeChange(rt), rt.SessionID, rt.Pool, reason) && derived.Taken[k] != "" {
			p.Conflicts++
		}
	}
	for sid, k := range derived.Holders {
		if _, ok := s.owners[sid]; !ok {
			s.owners[sid] = owner{key: k, lease: s.valid[k].LeaseTTL}
		}
	}
}

// release drops from serve the pool routes of an edge whose drain deadline has passed, so that
// their endpoints are removed and the pool's other edges claim them; routes that name this edge
// have nowhere else to go and stay. It reports whether it released.
func release(serve map[string]routes.Route, drain placement.Drain, now time.Time) bool {
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

// dueClaims decides the claims (DecideClaims), refuses the pool routes this edge has no ports
// for, and returns the claims due at now, when the next falls due, and whether the plan must be
// made again by itself (ports short, or a route no edge takes by the shared state yet).
func (s *State) dueClaims(p *Plan, derived routes.Plan, drain placement.Drain, now time.Time) ([]routes.Claim, time.Time, bool) {
	var total, free int
	var edges []placement.Edge
	if len(derived.Claims) > 0 {
		// Only claims need it; the media plane may be busy with a batch.
		total, free = s.ports.Capacity()
		edges = s.poolEdges(drain, total, free)
	}
	decision := DecideClaims(ClaimInput{
		EdgeID: s.cfg.EdgeID, Load: len(derived.Serve), MaxRoutes: s.cfg.MaxRoutes, FreePorts: free, MediaOn: total > 0,
		PortTotal: total, PortReserve: s.cfg.PortReserve, Draining: drain.Draining, Edges: edges, ClaimFallback: s.cfg.ClaimFallback,
		Live: s.live, Candidates: derived.Claims,
	})
	for _, c := range decision.Starved {
		// Said once per change of the route: otherwise a pool route no edge has ports for waits
		// unseen.
		s.refuse(p, c.Route.Key, c.Route.Revision, routeChange(c.Route), c.Route.SessionID, c.Route.Pool,
			fmt.Sprintf("media ports: public port range exhausted (%d wanted); left to the pool's other edges", len(c.Route.Media)))
	}
	byKey := make(map[string]routes.Claim, len(decision.Claim))
	order := make([]string, 0, len(decision.Claim))
	for _, c := range decision.Claim {
		byKey[c.Route.Key] = c
		order = append(order, c.Route.Key)
	}
	load := len(derived.Serve)
	keys, next := s.sched.Update(now, order, func(k string, i int) time.Duration {
		return decision.Delays[k] + routes.ClaimDelay(load+i, s.cfg.ClaimDelayStep, s.cfg.MaxClaimDelay)
	})
	due := make([]routes.Claim, len(keys))
	for i, k := range keys {
		due[i] = byKey[k]
	}
	return due, next, len(decision.Starved) > 0 || decision.Recheck
}

// poolEdges are the live edges of this edge's pool as their heartbeats show them, each with the
// count of endpoints naming it now. This edge is added from its own numbers (total and free
// public ports) while its heartbeat is not yet in the watch.
func (s *State) poolEdges(drain placement.Drain, total, free int) []placement.Edge {
	counts := map[string]int{}
	for _, ep := range s.endpoints {
		counts[ep.EdgeID]++
	}
	var out []placement.Edge
	self := false
	for id, b := range s.beats {
		if b.pool != s.cfg.Pool {
			continue
		}
		b.Routes = counts[id]
		if id == s.cfg.EdgeID {
			// Its own drain is known here before its heartbeat says so.
			b.Draining = b.Draining || drain.Draining
			self = true
		}
		out = append(out, b.Edge)
	}
	if !self {
		out = append(out, placement.Edge{
			ID: s.cfg.EdgeID, MaxRoutes: s.cfg.MaxRoutes, PortCapacity: total, FreePorts: free,
			Routes: counts[s.cfg.EdgeID], BeatRoutes: counts[s.cfg.EdgeID], Draining: drain.Draining,
		})
	}
	return out
}

// Claiming reports whether this edge takes new pool routes in the drain state drain with free of
// its total public ports: not draining, and more ports free than its reserve. Its heartbeat says
// so to the pool.
func (s *State) Claiming(drain placement.Drain, total, free int) bool {
	return claiming(drain.Draining, total, free, s.cfg.PortReserve)
}

func claiming(draining bool, total, free int, share float64) bool {
	reserve := placement.Reserve(total, share)
	return !draining && (reserve == 0 || free > reserve)
}

// ClaimInput is what the claim decision weighs: this edge, its load, free ports and drain state,
// the edges whose heartbeat is alive, and the pool routes no live edge serves.
type ClaimInput struct {
	EdgeID string
	// Load is the number of routes this edge serves before claiming; MaxRoutes caps it.
	Load, MaxRoutes int
	// FreePorts is the number of public ports free; MediaOn is whether the edge has a media
	// plane at all (without one, routes with media backends take no ports).
	FreePorts int
	MediaOn   bool
	// PortTotal is the size of the public port range; PortReserve the share of it kept free (at
	// or below it this edge claims nothing, see placement.Reserve).
	PortTotal   int
	PortReserve float64
	// Draining is whether this edge drains: it claims nothing.
	Draining bool
	// Edges are the pool's live edges as the placement policy ranks them, this edge included;
	// ClaimFallback is the wait per edge ranked before this one (see placement.Delay).
	Edges         []placement.Edge
	ClaimFallback time.Duration
	// Live are the edges whose heartbeat is alive, by edge id.
	Live map[string]bool
	// Candidates are the pool routes up for grabs, sorted by key (routes.Plan.Claims).
	Candidates []routes.Claim
}

// ClaimDecision is which candidates this edge claims, in the order it claims them, with how long
// it waits for each (Delays, by key: its rank in the placement policy), and which it leaves to the
// pool's other edges for want of public ports. Recheck is set when this edge left routes it may
// take later without a KV change: it is at its port reserve, or no edge takes a route by the
// heartbeats so far.
type ClaimDecision struct {
	Claim   []routes.Claim
	Starved []routes.Claim
	Delays  map[string]time.Duration
	Recheck bool
}

// DecideClaims decides which pool routes this edge claims: none while it drains, only with room
// left (MaxRoutes), public ports for their media and more free than its reserve, and only those
// the placement policy ranks it for (placement.Assign: the edge with most room first; the others
// wait their rank). They come in an order of this edge's own (routes.ClaimOrder) so that the edges
// of a pool facing the same burst start with different routes. When each claim falls due (its
// rank's delay, and the busier the edge, the later) is the scheduler's.
func DecideClaims(in ClaimInput) ClaimDecision {
	var d ClaimDecision
	open := claiming(in.Draining, in.PortTotal, in.FreePorts, in.PortReserve)
	var keys []string
	byKey := map[string]routes.Claim{}
	for _, c := range in.Candidates {
		if in.Draining || in.Load+len(keys) >= in.MaxRoutes {
			continue
		}
		if len(c.Route.Media) > 0 && in.FreePorts < len(c.Route.Media) && in.MediaOn {
			d.Starved = append(d.Starved, c)
			continue
		}
		if !open {
			// Near the end of its port range: left to the pool's other edges, looked at again as
			// ports come back.
			d.Recheck = true
			continue
		}
		keys = append(keys, c.Route.Key)
		byKey[c.Route.Key] = c
	}
	if len(keys) == 0 {
		return d
	}
	ranks := placement.Assign(in.Edges, keys, in.PortReserve)
	d.Delays = make(map[string]time.Duration, len(keys))
	keys = slices.DeleteFunc(keys, func(k string) bool {
		ranked, ok := ranks[k]
		d.Recheck = d.Recheck || !ok
		delay, mine := placement.Delay(in.EdgeID, ranked, in.ClaimFallback)
		if mine {
			d.Delays[k] = delay
		}
		return !mine
	})
	routes.ClaimOrder(in.EdgeID, keys)
	for _, k := range keys {
		d.Claim = append(d.Claim, byKey[k])
	}
	return d
}

// assignPorts gives each route of p (only those of keys, when not nil) its public media ports,
// keeping those it holds, else those its endpoint recorded (a restarted edge). A route that gets
// none is refused and dropped; it returns how many were.
func (s *State) assignPorts(p *Plan, claims map[string]routes.Claim, keys []string) int {
	refused := 0
	// Routes keeping their ports are most of a plan and need no order; the others are assigned
	// in key order, so that which route gets which port does not depend on map order.
	var assign []string
	keep := func(k string, w Served) {
		if cur, ok := s.served[k]; ok && cur.Route.SessionID == w.Route.SessionID && slices.Equal(cur.Route.Media, w.Route.Media) {
			w.Ports, w.Since = cur.Ports, cur.Since
			p.Routes[k] = w
			return
		}
		assign = append(assign, k)
	}
	if keys == nil {
		for k, w := range p.Routes {
			keep(k, w)
		}
	} else {
		for _, k := range keys {
			keep(k, p.Routes[k])
		}
	}
	slices.Sort(assign)
	for _, k := range assign {
		w := p.Routes[k]
		if cur, ok := s.served[k]; ok && cur.Route.SessionID != w.Route.SessionID {
			// The previous session's ports go to quarantine now (and their conntrack entries
			// with the next sync), before the new session takes fresh ones.
			s.ports.Release(mediaKey(cur.Route))
		}
		var preferred []uint16
		if ep, ok := s.endpoints[k]; ok && ep.EdgeID == s.cfg.EdgeID && ep.pub != nil && ep.pub.Session == w.Route.SessionID {
			preferred = ep.Ports
		}
		ports, err := s.ports.Assign(mediaKey(w.Route), w.Route.Media, preferred)
		if err != nil {
			p.MediaErrors++
			reason := fmt.Sprintf("media ports: %v", err)
			if errors.Is(err, portalloc.ErrExhausted) {
				// Without the free count, which changes from plan to plan: see refuse.
				reason = fmt.Sprintf("media ports: public port range exhausted (%d wanted)", len(w.Route.Media))
			}
			s.refuse(p, k, w.Route.Revision, routeChange(w.Route), w.Route.SessionID, w.Route.Pool, reason)
			delete(p.Routes, k)
			delete(claims, k)
			refused++
			continue
		}
		if cur, ok := s.served[k]; ok && cur.Route.SessionID == w.Route.SessionID {
			w.Since = cur.Since
		}
		w.Ports = ports
		p.Routes[k] = w
	}
	return refused
}

// program derives the HAProxy map and the media mappings from p.Routes.
func (s *State) program(p *Plan) {
	p.Map = make(map[string]string, len(p.Routes))
	p.Media = make(map[string][]media.Mapping, len(p.Routes))
	for k, w := range p.Routes {
		s.programRoute(p, k, w)
	}
	p.MediaChanged = !maps.EqualFunc(p.Media, s.media, slices.Equal)
	s.media, s.mapped = p.Media, p.Map
}

// programRoute puts route k's map entry and mappings in p.
func (s *State) programRoute(p *Plan, k string, w Served) {
	p.Map[w.Route.SessionID] = w.Route.Signaling.String()
	if len(w.Ports) != len(w.Route.Media) || len(w.Ports) == 0 {
		return
	}
	// The mappings of the plan before are never changed: an unchanged route shares them rather
	// than building its own on every plan.
	if old, ok := s.media[k]; ok && sameMappings(old, w) {
		p.Media[k] = old
		return
	}
	ms := make([]media.Mapping, len(w.Ports))
	for i, port := range w.Ports {
		ms[i] = media.Mapping{PublicPort: port, Backend: w.Route.Media[i]}
	}
	p.Media[k] = ms
}

// programChanges is program for a plan of changed routes: the map and mappings of the plan
// before, with those routes' entries replaced.
func (s *State) programChanges(p *Plan) {
	p.Map, p.Media = maps.Clone(s.mapped), maps.Clone(s.media)
	if p.Map == nil {
		p.Map = map[string]string{}
	}
	if p.Media == nil {
		p.Media = map[string][]media.Mapping{}
	}
	for k := range p.changed {
		if old, ok := s.served[k]; ok {
			delete(p.Map, old.Route.SessionID)
		}
		delete(p.Media, k)
	}
	for k := range p.changed {
		if w, ok := p.Routes[k]; ok {
			s.programRoute(p, k, w)
		}
	}
	for k := range p.changed {
		old, had := s.media[k]
		now, has := p.Media[k]
		if had != has || !slices.Equal(old, now) {
			p.MediaChanged = true
			break
		}
	}
	s.media, s.mapped = p.Media, p.Map
}

// sameMappings reports whether ms maps w's public ports to its media backends.
func sameMappings(ms []media.Mapping, w Served) bool {
	if len(ms) != len(w.Ports) {
		return false
	}
	for i, m := range ms {
		if m.PublicPort != w.Ports[i] || m.Backend != w.Route.Media[i] {
			return false
		}
	}
	return true
}

// refuseInvalid reports the unparsable routes that concern this edge, and forgets refusals of
// routes that are gone.
func (s *State) refuseInvalid(p *Plan) {
	for k, inv := range s.invalid {
		if inv.mine {
			s.refuse(p, k, inv.revision, "", inv.session, inv.pool, inv.err.Error())
		}
	}
	for k := range s.refused {
		if _, ok := s.revisionOf(k); !ok {
			delete(s.refused, k)
		}
	}
}

// trackOwners keeps who holds each session id on this edge, and returns the holders (session id
// → key) the plan must keep them for and when the next hold ends (zero: none pending). A session
// id belongs to the instance that first held it until that instance's lease really ends: while
// its route is there, and for one lease (at most maxHold) after its key lapsed, as it does while
// its agent restarts. A route deleted outright (its session ended) lets the id go at once.
func (s *State) trackOwners(now time.Time) (map[string]string, time.Time) {
	holders := make(map[string]string, len(s.owners))
	var next time.Time
	for sid, o := range s.owners {
		rt, present := s.valid[o.key]
		switch {
		case present && rt.SessionID == sid:
			o.lease, o.until = rt.LeaseTTL, time.Time{}
		case present, !o.until.IsZero() && !now.Before(o.until):
			delete(s.owners, sid)
			continue
		case o.until.IsZero() && s.expired[o.key] && o.lease > 0:
			o.until = now.Add(min(o.lease, maxHold))
			s.log.Info().Str("instance_id", o.key).Str("session_id", sid).Time("until", o.until).
				Msg("route lease lapsed; its session id stays reserved for it for one lease")
		case o.until.IsZero():
			delete(s.owners, sid)
			continue
		}
		s.owners[sid] = o
		holders[sid] = o.key
		if !o.until.IsZero() {
			next = earliest(next, o.until)
		}
	}
	return holders, next
}

// refuse reports a route this edge will not program, once per key, change (what the route asks
// for, see routeChange; empty for a value that does not parse) and reason: a lease renewal, or
// another plan finding the same refusal, says nothing new. It reports whether it reported now.
func (s *State) refuse(p *Plan, key string, revision uint64, change, session, pool, reason string) bool {
	mark := change + "\x00" + reason
	old := s.refused[key]
	s.refused[key] = refusal{revision: revision, mark: mark}
	if old.mark == mark {
		return false
	}
	// The session id and pool may be hostile: such an event goes out without them (under this
	// edge's pool).
	if sessionid.Validate(session) != nil {
		session = ""
	}
	if events.ValidateToken("pool", pool) != nil {
		pool = ""
	}
	p.Events = append(p.Events, Event{Kind: Refused, Key: key, Session: session, Pool: pool, Revision: revision, Reason: reason})
	return true
}

// routeChange is what a route asks for, whatever its revision: a lease renewal leaves it alone.
func routeChange(rt routes.Route) string {
	return fmt.Sprint(rt.SessionID, " ", rt.Signaling, " ", rt.Media, " ", rt.EdgeID, " ", rt.Pool)
}
