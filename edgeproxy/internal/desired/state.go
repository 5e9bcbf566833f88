// Package desired is the pure core of the edge's control loop: it folds the KV state (routes,
// endpoints, the edges' heartbeats) into what this edge should have programmed, and plans the
// changes that get it there: the HAProxy map, the media mappings, the claim and endpoint writes
// and the events to report. It does no I/O and starts no goroutine; time comes from its caller,
// and the results of the writes it planned are handed back to it (see Written).
package desired

import (
	"net/netip"
	"time"

	"github.com/livegate/livegate/edgeproxy/internal/media"
	"github.com/livegate/livegate/edgeproxy/internal/placement"
	"github.com/livegate/livegate/edgeproxy/internal/routes"
	"github.com/livegate/livegate/pkg/wire"
	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
	"github.com/rs/zerolog"
)

// Config is what the core needs to know about this edge.
type Config struct {
	EdgeID        string
	Pool          string
	PublicHost    string
	PublicIP      string
	SignalingPort uint16
	Policy        routes.Policy
	// MaxRoutes is the most routes this edge takes; pool claims stop there.
	MaxRoutes int
	// ClaimDelayStep is the claim delay per route served; MaxClaimDelay caps it.
	ClaimDelayStep time.Duration
	MaxClaimDelay  time.Duration
	// Recheck is how soon a plan short of public ports asks to be made again: ports come out of
	// quarantine with time, not with a KV change.
	Recheck time.Duration
	// PortReserve is the share of the public port range kept free: at or below it this edge
	// claims no new pool route. ClaimFallback is how long an edge waits per edge the placement
	// policy ranks before it for a route (see package placement).
	PortReserve   float64
	ClaimFallback time.Duration
}

// Ports hands out the public media ports (the media plane's allocator; it does no I/O).
type Ports interface {
	// Assign returns one public UDP port per backend, index-aligned, keeping the ports key
	// holds, else the preferred ones where they are free.
	Assign(key string, backends []netip.AddrPort, preferred []uint16) ([]uint16, error)
	// Release gives back key's ports.
	Release(key string)
	// Capacity reports the size of the public port range and how many ports are free.
	Capacity() (total, free int)
}

// Relay is what the core needs of the edge's TURN relay: the credentials an endpoint publishes.
type Relay interface {
	// Credentials is what session's endpoint publishes of the relay at now.
	Credentials(session string, now time.Time) *livegatev1.TurnRelay
	// Current reports whether published still stands at now, and when it is due for renewal.
	Current(session string, published *livegatev1.TurnRelay, now time.Time) (bool, time.Time)
}

// Bucket names the KV bucket an input comes from.
type Bucket uint8

// The buckets the core watches.
const (
	RoutesBucket Bucket = iota + 1
	EndpointsBucket
	EdgesBucket
)

// Entry is one KV entry as a watch delivers it.
type Entry struct {
	Key      string
	Value    []byte
	Revision uint64
	// Deleted is true for a delete, a purge or a TTL expiry; Purged tells a purge (or a lapsed
	// TTL) from a delete.
	Deleted, Purged bool
}

// Input is one watch delivery: a bucket's whole snapshot, or one update.
type Input struct {
	Bucket   Bucket
	Snapshot map[string]Entry
	Entry    Entry
	At       time.Time
}

// Served is a route this edge serves: the route, its public media ports (index-aligned with its
// media backends) and since when it is served.
type Served struct {
	Route routes.Route
	Ports []uint16
	Since time.Time
}

// PublicPorts is what the endpoint publishes of the ports: one per media backend, never more.
func (w Served) PublicPorts() []uint16 {
	return w.Ports[:min(len(w.Ports), len(w.Route.Media))]
}

// mediaKey names a route's public ports in the media plane: its instance and its session. A new
// session on an instance is a new key, so it never inherits the ports (or the quarantined ports
// handed back to a returning key) of the session before it, whose client may still be sending.
func mediaKey(rt routes.Route) string { return rt.Key + "/" + rt.SessionID }

// invalidRoute is a route value this edge could not parse, kept by revision so that it is
// parsed once.
type invalidRoute struct {
	revision      uint64
	err           error
	session, pool string
	// mine is whether the route names this edge or its pool (or could not be read at all).
	mine bool
}

// refusal is the last refusal of a route key reported: at which revision, and what was refused
// why (see refuse).
type refusal struct {
	revision uint64
	mark     string
}

// owner is the instance holding a session id, with its route's lease; until, when set, is when an
// owner whose route lapsed lets the id go.
type owner struct {
	key   string
	lease time.Duration
	until time.Time
}

// endpoint is a livegate_endpoints entry as the core keeps it.
type endpoint struct {
	routes.Endpoint
	// pub is what the entry publishes, to compare with what this edge would write; nil when
	// it could not be read.
	pub *Endpoint
}

// edgeBeat is what the placement policy needs of a livegate_edges entry, and the edge's pool.
type edgeBeat struct {
	placement.Edge
	pool string
}

// State is the core's memory of KV and of what it planned.
type State struct {
	cfg   Config
	ports Ports
	relay Relay
	log   zerolog.Logger

	synced    map[Bucket]bool
	valid     map[string]routes.Route
	invalid   map[string]invalidRoute
	seen      map[string]time.Time
	endpoints map[string]endpoint
	live      map[string]bool
	// beats are the edges' heartbeats as the placement policy reads them, by edge id.
	beats   map[string]edgeBeat
	served  map[string]Served
	media   map[string][]media.Mapping
	refused map[string]refusal
	// expired holds the route keys whose removal from KV was a lapsed lease, until the commit
	// that reports their removal.
	expired map[string]bool
	// rewatched is when livegate_routes was last watched anew (after a NATS reconnect), and
	// held the served routes whose key went away since then, with how long they are kept: see
	// hold.
	rewatched time.Time
	held      map[string]time.Time
	// owners holds, by session id, the instance that first held it on this edge (see
	// trackOwners).
	owners map[string]owner
	sched  *routes.Scheduler
	// writing holds the endpoint writes under way by key (nil: a removal), from Publish until
	// Written.
	writing map[string]*Endpoint
	// retry is set when a write failed: the next plan, after a pause, writes it again.
	retry bool
	// now is the time of the plan under way.
	now time.Time
	// turnRenew is when the earliest published TURN credential is due for renewal (zero: none).
	turnRenew time.Time
	// committed is whether a plan has been committed yet.
	committed bool
	// unreported holds the routes served, new or changed, not yet reported programmed because
	// the media plane did not hold them yet (see Commit).
	unreported map[string]bool
	// mapped is the HAProxy map of the last plan.
	mapped map[string]string
	// dirty holds the route keys that changed since the last plan; whole is set when something
	// else changed, which only a full plan looks at; changesOK when the last full plan left
	// nothing that only a full plan revisits (see changesOnly). noChanges makes every plan full
	// (tests compare the two).
	dirty     map[string]bool
	whole     bool
	changesOK bool
	noChanges bool
	// blocked holds the keys whose endpoint write Publish left for later because one was under
	// way: their results make them dirty again (see Written).
	blocked map[string]bool
}

// New returns an empty core for cfg. relay may be nil (no TURN relay).
func New(cfg Config, ports Ports, relay Relay, log zerolog.Logger) *State {
	return &State{
		cfg: cfg, ports: ports, relay: relay, log: log,
		synced: map[Bucket]bool{}, valid: map[string]routes.Route{}, invalid: map[string]invalidRoute{}, seen: map[string]time.Time{},
		endpoints: map[string]endpoint{}, live: map[string]bool{}, beats: map[string]edgeBeat{}, served: map[string]Served{}, refused: map[string]refusal{},
		expired: map[string]bool{}, held: map[string]time.Time{}, owners: map[string]owner{}, sched: routes.NewScheduler(),
		unreported: map[string]bool{}, dirty: map[string]bool{}, blocked: map[string]bool{},
	}
}

// Synced reports whether every bucket's snapshot has been observed.
func (s *State) Synced() bool { return len(s.synced) == 3 }

// Served is what the last commit serves, by key. The map is never changed once committed, so a
// reader may keep it while the core goes on.
func (s *State) Served() map[string]Served { return s.served }

// NeedsWritten reports whether in must wait for the results of the endpoint writes under way:
// they are taken in before what the watch says of their keys, so that the echo of a write finds
// it recorded, and a later value is never overwritten by an earlier result.
func (s *State) NeedsWritten(in Input) bool {
	if len(s.writing) == 0 || in.Bucket != EndpointsBucket {
		return false
	}
	if in.Snapshot != nil {
		return true
	}
	_, ours := s.writing[in.Entry.Key]
	return ours
}

// Writing reports whether an endpoint write of key is under way, for an executor that hands
// the results of several write batches back one by one: NeedsWritten asks for the batch that
// holds it.
func (s *State) Writing(key string) bool {
	_, ok := s.writing[key]
	return ok
}

// AwaitRemovals reports whether the next plan must wait for the writes under way: they remove
// the endpoint of a route still in KV, and whether that endpoint is gone decides whether the
// route is served or claimed (a claim must see the entry it races for). Removals of deleted
// routes, the usual case, do not hold the next plan.
func (s *State) AwaitRemovals() bool {
	for k, pub := range s.writing {
		if _, ok := s.valid[k]; ok && pub == nil {
			return true
		}
	}
	return false
}

// Observe folds one watch input into the state and reports whether a plan must see it: the echo
// of what this edge wrote itself (its endpoints, its heartbeat) changes nothing. The caller first
// hands in the results of the writes under way when NeedsWritten says so.
func (s *State) Observe(in Input) bool {
	if in.Snapshot != nil {
		s.whole = true
		again := s.synced[in.Bucket]
		s.synced[in.Bucket] = true
		switch in.Bucket {
		case RoutesBucket:
			s.routesSnapshot(in.Snapshot, in.At, again)
			return true
		case EndpointsBucket:
			clear(s.endpoints)
		case EdgesBucket:
			clear(s.live)
			clear(s.beats)
		}
		for _, e := range in.Snapshot {
			s.observe(in.Bucket, e, in.At)
		}
		return true
	}
	changed := s.observe(in.Bucket, in.Entry, in.At)
	switch {
	case !changed:
	case in.Bucket == RoutesBucket:
		s.dirty[in.Entry.Key] = true
	default:
		s.whole = true
	}
	return changed
}

func (s *State) observe(b Bucket, e Entry, at time.Time) bool {
	switch b {
	case RoutesBucket:
		_, invalid := s.invalid[e.Key]
		changed := s.observeRoute(e, at)
		if _, now := s.invalid[e.Key]; invalid || now {
			s.whole = true
		}
		return changed
	case EndpointsBucket:
		return s.observeEndpoint(e)
	case EdgesBucket:
		s.observeBeat(e)
		if e.Deleted {
			had := s.live[e.Key]
			delete(s.live, e.Key)
			return had
		}
		had := s.live[e.Key]
		s.live[e.Key] = true
		return !had
	}
	return false
}

// observeBeat keeps what the placement policy needs of a livegate_edges change. An unreadable
// entry is an edge that takes nothing. A heartbeat's numbers alone do not call for a plan: a plan
// that found a route no edge takes looks again by itself (see Plan's recheck).
func (s *State) observeBeat(e Entry) {
	if e.Deleted {
		delete(s.beats, e.Key)
		return
	}
	var st livegatev1.EdgeStatus
	if wire.Unmarshal(e.Value, &st) != nil {
		s.beats[e.Key] = edgeBeat{Edge: placement.Edge{ID: e.Key, Draining: true}}
		return
	}
	// An edge older than max_routes publishes 0 and so has no room by the policy: it is left out
	// of the ranking and claims by its own rule, first come, as before.
	s.beats[e.Key] = edgeBeat{pool: st.GetPool(), Edge: placement.Edge{
		ID: e.Key, MaxRoutes: int(st.GetMaxRoutes()), PortCapacity: int(st.GetCapacity()), FreePorts: int(st.GetFreePorts()),
		BeatRoutes: int(st.GetRoutes()), Draining: st.GetDraining(),
	}}
}

// routesSnapshot replaces the routes by a new snapshot. Parsed routes of unchanged revisions are
// kept across it.
func (s *State) routesSnapshot(entries map[string]Entry, at time.Time, again bool) {
	if again {
		s.rewatched = at
	}
	oldValid, oldInvalid := s.valid, s.invalid
	s.valid, s.invalid = make(map[string]routes.Route, len(entries)), map[string]invalidRoute{}
	for k, e := range entries {
		switch rt, inv := oldValid[k], oldInvalid[k]; {
		case e.Deleted:
		case rt.Key != "" && rt.Revision == e.Revision:
			s.valid[k] = rt
		case inv.err != nil && inv.revision == e.Revision:
			s.invalid[k] = inv
		default:
			s.takeRoute(e, at)
		}
	}
	for k, rt := range oldValid {
		if _, ok := entries[k]; !ok && s.hold(k, rt, at) {
			s.valid[k] = rt
		}
	}
	for k := range s.held {
		if _, ok := s.valid[k]; !ok {
			delete(s.held, k)
		}
	}
	for k := range s.seen {
		if _, ok := entries[k]; !ok {
			delete(s.seen, k)
		}
	}
}

func (s *State) observeRoute(e Entry, at time.Time) bool {
	k := e.Key
	if !e.Deleted {
		return s.takeRoute(e, at)
	}
	if rt, ok := s.valid[k]; ok && e.Purged && s.hold(k, rt, at) {
		return false
	}
	delete(s.held, k)
	_, had := s.valid[k]
	_, hadInvalid := s.invalid[k]
	delete(s.valid, k)
	delete(s.invalid, k)
	delete(s.seen, k)
	if e.Purged && (had || hadInvalid) {
		s.expired[k] = true
	}
	return had || hadInvalid
}

func (s *State) observeEndpoint(e Entry) bool {
	// Revisions only grow: an echo older than what a write of this edge recorded says nothing
	// new, and must not undo it.
	if old, ok := s.endpoints[e.Key]; ok && old.Revision >= e.Revision {
		return false
	}
	if e.Deleted {
		_, had := s.endpoints[e.Key]
		delete(s.endpoints, e.Key)
		return had
	}
	s.endpoints[e.Key] = decodeEndpoint(e)
	return true
}

func (s *State) revisionOf(key string) (uint64, bool) {
	if rt, ok := s.valid[key]; ok {
		return rt.Revision, true
	}
	inv, ok := s.invalid[key]
	return inv.revision, ok
}

// maxHold bounds how long a lapsed route is held, whatever lease its value claims.
const maxHold = 2 * time.Minute

// hold decides whether a served route whose key went away (gone from a new snapshot, or expired
// by its TTL) is kept for now. Leases cannot be renewed while NATS is away: after an outage
// longer than a lease the store expires every route at once, and an edge that reconnects
// before the agents would unroute live sessions until each agent renews. So for two leases after
// the routes bucket is watched anew (agents reconnect later than the edge, by their own back-off,
// and then renew), such a route stays programmed; its agent's renewal takes it over, and the end
// of the hold removes it as expired. Routes deleted outright (a session that ended) are not held,
// and neither is any route before the first re-watch.
func (s *State) hold(key string, rt routes.Route, now time.Time) bool {
	if _, served := s.served[key]; !served || s.rewatched.IsZero() || rt.LeaseTTL <= 0 {
		return false
	}
	until, ok := s.held[key]
	if !ok {
		until = s.rewatched.Add(min(2*rt.LeaseTTL, maxHold))
	}
	if !now.Before(until) {
		delete(s.held, key)
		return false
	}
	if !ok {
		s.held[key] = until
		s.log.Info().Str("instance_id", key).Str("session_id", rt.SessionID).Time("until", until).
			Msg("route gone from KV after a NATS reconnect; kept for its lease so that its agent can renew it")
	}
	return true
}

// releaseHeld drops the held routes whose time is up, as expired, and reports when the next one
// is due (zero: none held).
func (s *State) releaseHeld(now time.Time) time.Time {
	var next time.Time
	for k, until := range s.held {
		if now.Before(until) {
			next = earliest(next, until)
			continue
		}
		delete(s.held, k)
		delete(s.valid, k)
		delete(s.seen, k)
		s.expired[k] = true
	}
	return next
}

// takeRoute parses a route value unless its revision is already known; it reports whether the
// route changed.
func (s *State) takeRoute(e Entry, at time.Time) bool {
	if rev, ok := s.revisionOf(e.Key); ok && rev == e.Revision {
		return false
	}
	s.seen[e.Key] = at
	delete(s.expired, e.Key)
	delete(s.held, e.Key)
	rt, err := s.cfg.Policy.Parse(e.Key, e.Value, e.Revision)
	if err == nil {
		delete(s.invalid, e.Key)
		s.valid[e.Key] = rt
		return true
	}
	delete(s.valid, e.Key)
	inv := invalidRoute{revision: e.Revision, err: err, mine: true}
	var pb livegatev1.Route
	if wire.Unmarshal(e.Value, &pb) == nil {
		inv.session, inv.pool = pb.GetSessionId(), pb.GetPool()
		inv.mine = pb.GetEdgeId() == s.cfg.EdgeID || (pb.GetEdgeId() == "" && (pb.GetPool() == s.cfg.Pool || pb.GetPool() == ""))
	}
	s.invalid[e.Key] = inv
	return true
}

// earliest is the earlier of two times, zero meaning none.
func earliest(a, b time.Time) time.Time {
	if a.IsZero() || b.Before(a) {
		return b
	}
	return a
}
