// Package reconcile is the edge's control loop: it watches livegate_routes, livegate_endpoints and
// livegate_edges, derives the routes this edge serves (claiming pool routes), programs HAProxy's
// map and the media plane, publishes what it assigned to livegate_endpoints and its heartbeat to
// livegate_edges. It is level-triggered: every pass starts from the KV state, and a periodic
// resync reads HAProxy's live map back and repairs drift. A pass runs only when something it
// depends on changed (a route or endpoint revision, the set of live edges), when a resync or a
// claim falls due, or to retry; the echo of the edge's own heartbeat and endpoint writes is not
// a change. Each route value is parsed once per KV revision.
package reconcile

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/livegate/livegate/edgeproxy/internal/haproxy"
	"github.com/livegate/livegate/edgeproxy/internal/media"
	"github.com/livegate/livegate/edgeproxy/internal/placement"
	"github.com/livegate/livegate/edgeproxy/internal/portalloc"
	"github.com/livegate/livegate/edgeproxy/internal/routes"
	"github.com/livegate/livegate/edgeproxy/internal/turnrelay"
	"github.com/livegate/livegate/pkg/events"
	"github.com/livegate/livegate/pkg/kvstore"
	"github.com/livegate/livegate/pkg/logging"
	"github.com/livegate/livegate/pkg/natsconn"
	"github.com/livegate/livegate/pkg/sessionid"
	"github.com/livegate/livegate/pkg/wire"
	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Config is what the loop needs to know about this edge.
type Config struct {
	EdgeID        string
	Pool          string
	PublicHost    string
	SignalingPort uint32
	Policy        routes.Policy
	// MaxRoutes is the most routes this edge takes; pool claims stop there.
	MaxRoutes int
	// Resync is the period of the full read-back of HAProxy's map.
	Resync time.Duration
	// Heartbeat is the period of the livegate_edges write; EdgeTTL its lifetime.
	Heartbeat time.Duration
	EdgeTTL   time.Duration
	// ClaimDelayStep is the claim delay per route served; MaxClaimDelay caps it.
	ClaimDelayStep time.Duration
	MaxClaimDelay  time.Duration
	Version        string
	// PublicIP is the address of the public UDP ports, published beside the host name because an
	// ICE candidate needs an address; empty without a media plane.
	PublicIP string
	// PortReserve is the share of the public port range kept free: at or below it this edge
	// claims no new pool route. ClaimFallback is how long an edge waits per edge the placement
	// policy ranks before it for a route (see package placement).
	PortReserve   float64
	ClaimFallback time.Duration
}

// Validate reports a configuration the loop cannot run with.
func (c Config) Validate() error {
	var errs []error
	if err := events.ValidateToken("edge id", c.EdgeID); err != nil {
		errs = append(errs, err)
	}
	if err := events.ValidateToken("pool", c.Pool); err != nil {
		errs = append(errs, err)
	}
	if c.PublicHost == "" {
		errs = append(errs, errors.New("public host is empty"))
	}
	if c.MaxRoutes < 1 {
		errs = append(errs, errors.New("max routes must be at least 1"))
	}
	if c.Resync <= 0 || c.Heartbeat <= 0 || c.EdgeTTL < time.Second || c.EdgeTTL <= c.Heartbeat {
		errs = append(errs, errors.New("resync and heartbeat must be positive, and the edge TTL (at least 1s) longer than the heartbeat"))
	}
	if c.MaxClaimDelay < 0 || c.ClaimDelayStep < 0 || c.ClaimFallback < 0 {
		errs = append(errs, errors.New("claim delays must not be negative"))
	}
	if c.PortReserve < 0 || c.PortReserve >= 1 {
		errs = append(errs, errors.New("port reserve must be a share from 0 to below 1"))
	}
	return errors.Join(errs...)
}

// Deps are the loop's adapters.
type Deps struct {
	JS      jetstream.JetStream
	Buckets *kvstore.Buckets
	Driver  haproxy.Driver
	Media   media.Plane
	// Events, when set, receives route_programmed, route_removed and route_refused events.
	Events  *events.Publisher
	Metrics *Metrics
	Log     zerolog.Logger
	// Relay, when set, is the edge's TURN relay: endpoints carry its credentials and it is told
	// which sessions are served.
	Relay Relay
	// Drain, when set, is this edge's drain state, read at each pass (see package drainstate).
	Drain func() placement.Drain
}

// Relay is what the loop needs of the edge's TURN relay (turnrelay.Relay).
type Relay interface {
	// Credentials is what session's endpoint publishes of the relay at now.
	Credentials(session string, now time.Time) *livegatev1.TurnRelay
	// Current reports whether published still stands at now, and when it is due for renewal.
	Current(session string, published *livegatev1.TurnRelay, now time.Time) (bool, time.Time)
	// Serve sets the sessions served and the media each may relay to.
	Serve(sessions map[string]turnrelay.Media)
}

// Option changes a Reconciler's defaults.
type Option func(*Reconciler)

// WithMapFile keeps the map file HAProxy loads at start in line with the programmed map. The
// file is written off the loop, at most every MapFileInterval, and once more when the loop
// stops: while HAProxy runs its runtime API is the truth, and the file only matters to its next
// start, which a resync then corrects.
func WithMapFile(path string) Option { return func(r *Reconciler) { r.mapFile = path } }

// MapFileInterval is the shortest time between two writes of the map file.
const MapFileInterval = 250 * time.Millisecond

// WithStartGate holds the first pass until ready is closed: a supervised HAProxy that is still
// starting is not a failure to report. The KV snapshot is read in the meantime.
func WithStartGate(ready <-chan struct{}) Option { return func(r *Reconciler) { r.gate = ready } }

// RouteStatus is one programmed route, as GET /v1/routes shows it. EdgeID is the edge serving it
// (this one), also for a route that named only a pool.
type RouteStatus struct {
	InstanceID       string    `json:"instance_id"`
	SessionID        string    `json:"session_id"`
	SignalingBackend string    `json:"signaling_backend"`
	MediaBackends    []string  `json:"media_backends"`
	PublicUDPPorts   []uint16  `json:"public_udp_ports"`
	EdgeID           string    `json:"edge_id"`
	Pool             string    `json:"pool,omitempty"`
	ProgrammedAt     time.Time `json:"programmed_at"`
}

// Reconciler runs the loop.
type Reconciler struct {
	cfg     Config
	d       Deps
	log     zerolog.Logger
	mapFile string
	gate    <-chan struct{}
	now     func() time.Time
	kick    chan struct{}
	evq     chan *livegatev1.Event

	// Loop state, owned by Run's goroutine.
	valid      map[string]routes.Route
	invalid    map[string]invalidRoute
	seen       map[string]time.Time
	endpoints  map[string]endpoint
	live       map[string]bool
	programmed map[string]string
	mapWritten map[string]string
	mediaWant  map[string][]media.Mapping
	served     map[string]servedRoute
	refused    map[string]refusal
	// expired holds the route keys whose removal from KV was a lapsed lease, until the pass
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
	files  *fileWriter
	// publishing delivers the results of the endpoint writes under way (nil: none), writing
	// holds what they write by key (nil: a removal), and writes runs them (see
	// publishEndpoints).
	publishing chan publishBatch
	writing    map[string]*published
	writes     sync.WaitGroup
	// republish asks the loop for a pass after retryDelay: an endpoint write failed.
	republish bool
	// turnRenew is when the earliest published TURN credential is due for renewal (zero: none).
	turnRenew time.Time
	// edgeState is the pool's edges as livegate_edges shows them; claiming and beatDrain are
	// what this edge's last pass decided and its heartbeat last said; releasing is set by a pass
	// that hands a drained edge's routes over (see package placement).
	edgeState map[string]edgeEntry
	claiming  bool
	beatDrain placement.Drain
	releasing bool

	mu     sync.Mutex
	status map[string]servedRoute
	// lastErr and synced are what Healthy reports.
	lastErr error
	synced  bool
}

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

type endpoint struct {
	routes.Endpoint
	// pub is what the entry publishes, to compare with what this edge would write; nil when
	// it could not be read.
	pub *published
}

// published holds the fields of a livegate_endpoints value that this edge writes and compares.
// What this edge wrote shares its slices with the served route.
type published struct {
	instance, session, edge, host, ip string
	signalingPort                     uint32
	ports                             []uint16
	media                             []netip.AddrPort
	turn                              *livegatev1.TurnRelay
	// unreadable marks a value whose ports or backends do not parse: it equals nothing.
	unreadable bool
}

func publishedOf(pb *livegatev1.Endpoint) *published {
	p := &published{
		instance: pb.GetInstanceId(), session: pb.GetSessionId(), edge: pb.GetEdgeId(), host: pb.GetPublicHost(),
		ip: pb.GetPublicIp(), signalingPort: pb.GetSignalingPort(), turn: pb.GetTurn(),
	}
	for _, port := range pb.GetPublicUdpPorts() {
		p.unreadable = p.unreadable || port == 0 || port > 65535
		p.ports = append(p.ports, uint16(port))
	}
	for _, m := range pb.GetMediaBackends() {
		ap, err := netip.ParseAddrPort(m)
		p.unreadable = p.unreadable || err != nil
		p.media = append(p.media, ap)
	}
	return p
}

// publishedFor is what this edge publishes for w (see endpointFor), with its TURN credential.
func (r *Reconciler) publishedFor(w servedRoute, turn *livegatev1.TurnRelay) *published {
	return &published{
		instance: w.route.Key, session: w.route.SessionID, edge: r.cfg.EdgeID, host: r.cfg.PublicHost,
		ip: r.cfg.PublicIP, signalingPort: r.cfg.SignalingPort, ports: w.publicPorts(), media: w.route.Media, turn: turn,
	}
}

// publishes reports whether p is what this edge publishes for w: p.equal(r.publishedFor(w)),
// without building the latter for every served route on every pass.
func (p *published) publishes(r *Reconciler, w servedRoute) bool {
	return p != nil && !p.unreadable && p.instance == w.route.Key && p.session == w.route.SessionID &&
		p.edge == r.cfg.EdgeID && p.host == r.cfg.PublicHost && p.ip == r.cfg.PublicIP && p.signalingPort == r.cfg.SignalingPort &&
		slices.Equal(p.ports, w.publicPorts()) && slices.Equal(p.media, w.route.Media) && r.turnCurrent(w.route.SessionID, p.turn)
}

// turnCurrent reports whether a published TURN credential still stands, and notes when it is due
// for renewal.
func (r *Reconciler) turnCurrent(session string, t *livegatev1.TurnRelay) bool {
	if r.d.Relay == nil {
		return t == nil
	}
	ok, renew := r.d.Relay.Current(session, t, r.now())
	if ok {
		r.turnRenew = earliest(r.turnRenew, renew)
	}
	return ok
}

type servedRoute struct {
	route routes.Route
	ports []uint16
	since time.Time
}

// mediaKey names a route's public ports in the media plane: its instance and its session. A new
// session on an instance is a new key, so it never inherits the ports (or the quarantined ports
// handed back to a returning key) of the session before it, whose client may still be sending.
func mediaKey(rt routes.Route) string { return rt.Key + "/" + rt.SessionID }

// publicPorts is what the endpoint publishes of w's ports: one per media backend, never more.
func (w servedRoute) publicPorts() []uint16 {
	return w.ports[:min(len(w.ports), len(w.route.Media))]
}

// New returns a loop for cfg.
func New(cfg Config, d Deps, opts ...Option) (*Reconciler, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("reconcile: %w", err)
	}
	if d.JS == nil || d.Buckets == nil || d.Driver == nil || d.Media == nil || d.Metrics == nil {
		return nil, errors.New("reconcile: missing dependency")
	}
	r := &Reconciler{
		cfg: cfg, d: d, log: d.Log, now: time.Now,
		kick: make(chan struct{}, 1), evq: make(chan *livegatev1.Event, 1<<16),
		valid: map[string]routes.Route{}, invalid: map[string]invalidRoute{}, seen: map[string]time.Time{}, expired: map[string]bool{}, held: map[string]time.Time{}, endpoints: map[string]endpoint{},
		live: map[string]bool{}, served: map[string]servedRoute{}, refused: map[string]refusal{}, owners: map[string]owner{},
		sched: routes.NewScheduler(), edgeState: map[string]edgeEntry{},
	}
	for _, o := range opts {
		o(r)
	}
	if r.mapFile != "" {
		path := r.mapFile
		r.files = newFileWriter(func(m map[string]string) error { return haproxy.WriteMapFile(path, m) }, MapFileInterval,
			func(err error) {
				r.d.Metrics.errors.WithLabelValues(ErrKindMapFile).Inc()
				r.log.Warn().Err(err).Msg("map file write failed; retrying")
			})
	}
	return r, nil
}

// Resync asks for a full pass with a read-back of HAProxy's map, e.g. after HAProxy restarted.
func (r *Reconciler) Resync() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// Routes is what this edge has programmed, sorted by instance id.
func (r *Reconciler) Routes() []RouteStatus {
	r.mu.Lock()
	served := r.status
	r.mu.Unlock()
	status := make([]RouteStatus, 0, len(served))
	for _, k := range sortedKeys(served) {
		w := served[k]
		status = append(status, RouteStatus{
			InstanceID: k, SessionID: w.route.SessionID, SignalingBackend: w.route.Signaling.String(),
			MediaBackends: addrStrings(w.route.Media), PublicUDPPorts: append([]uint16{}, w.ports...),
			EdgeID: r.cfg.EdgeID, Pool: w.route.Pool, ProgrammedAt: w.since,
		})
	}
	return status
}

// Healthy is nil once the loop has programmed the KV snapshot and its last pass succeeded.
func (r *Reconciler) Healthy() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.synced {
		return errors.New("not yet synced with KV and HAProxy")
	}
	return r.lastErr
}

type input struct {
	bucket   string
	snapshot map[string]kvstore.Entry
	entry    kvstore.Entry
	at       time.Time
}

// retryDelay is the pause before a failed pass is tried again.
const retryDelay = time.Second

// Run runs the loop until ctx ends.
func (r *Reconciler) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	in := make(chan input, 1024)
	var wg sync.WaitGroup
	for _, kv := range []jetstream.KeyValue{r.d.Buckets.Routes, r.d.Buckets.Endpoints, r.d.Buckets.Edges} {
		wg.Go(func() { r.watch(ctx, kv, in) })
	}
	wg.Go(func() { r.publishEvents(ctx) })
	if r.files != nil {
		wg.Go(func() { r.files.Run(ctx) })
	}
	defer r.settle()
	defer wg.Wait()
	defer r.writes.Wait()
	defer cancel()

	r.heartbeat(ctx)
	resync := time.NewTicker(r.cfg.Resync)
	defer resync.Stop()
	beat := time.NewTicker(r.cfg.Heartbeat)
	defer beat.Stop()
	wake := time.NewTimer(time.Hour)
	defer wake.Stop()
	synced := map[string]bool{}
	// due holds until a pass has run for every reason it was wanted: a KV change, a claim or
	// retry falling due, the first pass.
	full, due := true, true
	gate := r.gate
	// wakeAt is when wake fires (zero: not set).
	var wakeAt time.Time
	setWake := func(at time.Time) {
		wakeAt = at
		wake.Stop()
		if !at.IsZero() {
			wake.Reset(max(at.Sub(r.now()), time.Millisecond))
		}
	}
	for {
		if r.republish {
			r.republish = false
			setWake(earliest(wakeAt, r.now().Add(retryDelay)))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-gate:
			gate = nil
		case x := <-in:
			due = r.take(x, synced) || due
		drain:
			for {
				select {
				case x := <-in:
					due = r.take(x, synced) || due
				default:
					break drain
				}
			}
		case <-resync.C:
			full = true
		case <-r.kick:
			full = true
		case <-wake.C:
			wakeAt, due = time.Time{}, true
		case res := <-r.publishing:
			r.published(res)
			continue
		case <-beat.C:
			r.heartbeat(ctx)
			continue
		}
		if len(synced) < 3 || gate != nil || !(due || full) {
			continue
		}
		due = false
		next, err := r.pass(ctx, full)
		if ctx.Err() != nil {
			return nil
		}
		r.mu.Lock()
		r.synced, r.lastErr = r.synced || err == nil, err
		r.mu.Unlock()
		if err != nil {
			r.log.Error().Err(err).Msg("reconcile pass failed; retrying")
			full = true
			next = r.now().Add(retryDelay)
		} else {
			full = false
		}
		setWake(next)
	}
}

// settleTimeout bounds how long a stopping loop waits for the media plane's background work.
const settleTimeout = 5 * time.Second

// settle lets the media plane finish deleting the conntrack entries of removed ports: a
// process that exits first leaves them to time out, and the next process does not know them.
func (r *Reconciler) settle() {
	ctx, cancel := context.WithTimeout(context.Background(), settleTimeout)
	defer cancel()
	if err := r.d.Media.Settle(ctx); err != nil {
		r.log.Warn().Err(err).Msg("media plane not settled on stop")
	}
}

func (r *Reconciler) watch(ctx context.Context, kv jetstream.KeyValue, in chan<- input) {
	bucket := kv.Bucket()
	send := func(x input) {
		x.bucket, x.at = bucket, r.now()
		select {
		case in <- x:
		case <-ctx.Done():
		}
	}
	_ = kvstore.Watch(ctx, kv, ">", kvstore.Handler{
		Snapshot: func(m map[string]kvstore.Entry) { send(input{snapshot: m}) },
		Update:   func(e kvstore.Entry) { send(input{entry: e}) },
		// Without it a watch resumes only when its consumer's heartbeats lapse, 10-15 s after
		// NATS is back: that long, route changes made meanwhile would wait.
		Restart: natsconn.Reconnects(r.d.JS.Conn()),
		Error: func(err error) {
			r.d.Metrics.errors.WithLabelValues(ErrKindKV).Inc()
			r.log.Warn().Err(err).Str("bucket", bucket).Msg("kv watch broke; watching again")
		},
	})
}

// take folds one watch input into the loop state and reports whether a pass must see it: the
// echo of what this edge wrote itself (its endpoints, its heartbeat) changes nothing.
func (r *Reconciler) take(x input, synced map[string]bool) bool {
	entries := x.snapshot
	changed := entries != nil
	if entries != nil {
		again := synced[x.bucket]
		synced[x.bucket] = true
		switch x.bucket {
		case kvstore.RoutesBucket:
			if again {
				r.rewatched = x.at
			}
			// Parsed routes of unchanged revisions are kept across a new snapshot.
			oldValid, oldInvalid := r.valid, r.invalid
			r.valid, r.invalid = make(map[string]routes.Route, len(entries)), map[string]invalidRoute{}
			for k, e := range entries {
				switch rt, inv := oldValid[k], oldInvalid[k]; {
				case e.Deleted:
				case rt.Key != "" && rt.Revision == e.Revision:
					r.valid[k] = rt
				case inv.err != nil && inv.revision == e.Revision:
					r.invalid[k] = inv
				default:
					r.takeRoute(e, x.at)
				}
			}
			for k, rt := range oldValid {
				if _, ok := entries[k]; !ok && r.hold(k, rt, x.at) {
					r.valid[k] = rt
				}
			}
			for k := range r.held {
				if _, ok := r.valid[k]; !ok {
					delete(r.held, k)
				}
			}
			for k := range r.seen {
				if _, ok := entries[k]; !ok {
					delete(r.seen, k)
				}
			}
			return true
		case kvstore.EndpointsBucket:
			r.awaitPublished()
			clear(r.endpoints)
		case kvstore.EdgesBucket:
			clear(r.live)
			clear(r.edgeState)
		}
	} else {
		entries = map[string]kvstore.Entry{x.entry.Key: x.entry}
	}
	for k, e := range entries {
		switch x.bucket {
		case kvstore.RoutesBucket:
			if e.Deleted {
				if rt, ok := r.valid[k]; ok && e.Purged && r.hold(k, rt, x.at) {
					continue
				}
				delete(r.held, k)
				_, had := r.valid[k]
				_, hadInvalid := r.invalid[k]
				delete(r.valid, k)
				delete(r.invalid, k)
				delete(r.seen, k)
				if e.Purged && (had || hadInvalid) {
					r.expired[k] = true
				}
				changed = changed || had || hadInvalid
				continue
			}
			changed = r.takeRoute(e, x.at) || changed
		case kvstore.EndpointsBucket:
			if _, ours := r.writing[k]; ours {
				// The results of this edge's writes are taken in before what the watch says
				// of their keys, so that the echo of a write finds it recorded, and a later
				// value is never overwritten by an earlier result.
				r.awaitPublished()
			}
			// Revisions only grow: an echo older than what a write of this edge recorded
			// says nothing new, and must not undo it.
			if old, ok := r.endpoints[k]; ok && old.Revision >= e.Revision {
				continue
			}
			if e.Deleted {
				_, had := r.endpoints[k]
				delete(r.endpoints, k)
				changed = changed || had
				continue
			}
			r.endpoints[k] = decodeEndpoint(e)
			changed = true
		case kvstore.EdgesBucket:
			r.trackEdge(e)
			if e.Deleted {
				changed = changed || r.live[k]
				delete(r.live, k)
				continue
			}
			changed = changed || !r.live[k]
			r.live[k] = true
		}
	}
	return changed
}

func (r *Reconciler) revisionOf(key string) (uint64, bool) {
	if rt, ok := r.valid[key]; ok {
		return rt.Revision, true
	}
	inv, ok := r.invalid[key]
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
func (r *Reconciler) hold(key string, rt routes.Route, now time.Time) bool {
	if _, served := r.served[key]; !served || r.rewatched.IsZero() || rt.LeaseTTL <= 0 {
		return false
	}
	until, ok := r.held[key]
	if !ok {
		until = r.rewatched.Add(min(2*rt.LeaseTTL, maxHold))
	}
	if !now.Before(until) {
		delete(r.held, key)
		return false
	}
	if !ok {
		r.held[key] = until
		r.log.Info().Str("instance_id", key).Str("session_id", rt.SessionID).Time("until", until).
			Msg("route gone from KV after a NATS reconnect; kept for its lease so that its agent can renew it")
	}
	return true
}

// releaseHeld drops the held routes whose time is up, as expired, and reports when the next one
// is due (zero: none held).
func (r *Reconciler) releaseHeld(now time.Time) time.Time {
	var next time.Time
	for k, until := range r.held {
		if now.Before(until) {
			next = earliest(next, until)
			continue
		}
		delete(r.held, k)
		delete(r.valid, k)
		delete(r.seen, k)
		r.expired[k] = true
	}
	return next
}

// takeRoute parses a route value unless its revision is already known; it reports whether the
// route changed.
func (r *Reconciler) takeRoute(e kvstore.Entry, at time.Time) bool {
	if rev, ok := r.revisionOf(e.Key); ok && rev == e.Revision {
		return false
	}
	r.seen[e.Key] = at
	delete(r.expired, e.Key)
	delete(r.held, e.Key)
	rt, err := r.cfg.Policy.Parse(e.Key, e.Value, e.Revision)
	if err == nil {
		delete(r.invalid, e.Key)
		r.valid[e.Key] = rt
		return true
	}
	delete(r.valid, e.Key)
	inv := invalidRoute{revision: e.Revision, err: err, mine: true}
	var pb livegatev1.Route
	if wire.Unmarshal(e.Value, &pb) == nil {
		inv.session, inv.pool = pb.GetSessionId(), pb.GetPool()
		inv.mine = pb.GetEdgeId() == r.cfg.EdgeID || (pb.GetEdgeId() == "" && (pb.GetPool() == r.cfg.Pool || pb.GetPool() == ""))
	}
	r.invalid[e.Key] = inv
	return true
}

func decodeEndpoint(e kvstore.Entry) endpoint {
	var pb livegatev1.Endpoint
	if err := wire.Unmarshal(e.Value, &pb); err != nil {
		// An endpoint nobody can read belongs to nobody alive: the pool may claim it over.
		return endpoint{Endpoint: routes.Endpoint{Revision: e.Revision}}
	}
	ports := make([]uint16, 0, len(pb.GetPublicUdpPorts()))
	for _, p := range pb.GetPublicUdpPorts() {
		if p > 0 && p <= 65535 {
			ports = append(ports, uint16(p))
		}
	}
	return endpoint{Endpoint: routes.Endpoint{EdgeID: pb.GetEdgeId(), Revision: e.Revision, Ports: ports}, pub: publishedOf(&pb)}
}

// pass reconciles once. It returns when it wants to run again (a claim falling due), or zero.
func (r *Reconciler) pass(ctx context.Context, full bool) (time.Time, error) {
	now := r.now()
	r.turnRenew = time.Time{}
	heldUntil := r.releaseHeld(now)
	r.awaitRemovals()
	r.refuseInvalid()
	owners, ownersUntil := r.trackOwners(now)
	plan := routes.Derive(routes.Self{EdgeID: r.cfg.EdgeID, Pool: r.cfg.Pool}, r.valid, func(k string) (routes.Endpoint, bool) {
		e, ok := r.endpoints[k]
		return e.Endpoint, ok
	}, r.live, owners)
	for k, reason := range plan.Refused {
		rt := r.valid[k]
		if r.refuse(k, rt.Revision, routeChange(rt), rt.SessionID, rt.Pool, reason) && plan.Taken[k] != "" {
			r.d.Metrics.conflicts.Inc()
		}
	}
	for s, k := range plan.Holders {
		if _, ok := r.owners[s]; !ok {
			r.owners[s] = owner{key: k, lease: r.valid[k].LeaseTTL}
		}
	}
	drain := r.drainState()
	r.releasing = releaseDrained(plan.Serve, drain, now)

	// Pool claims: only with room left, and the busier this edge, the later.
	load := len(plan.Serve)
	_, freePorts := r.d.Media.Capacity()
	var claimable []string
	claimByKey := map[string]routes.Claim{}
	// starved is set when ports were short: ports come out of quarantine with time, not with a
	// KV change, so the loop must look again by itself.
	starved := false
	reserve := placement.Reserve(r.portTotal(), r.cfg.PortReserve)
	r.claiming = !drain.Draining && (reserve == 0 || freePorts > reserve)
	for _, c := range plan.Claims {
		if load+len(claimable) >= r.cfg.MaxRoutes || drain.Draining {
			continue
		}
		if len(c.Route.Media) > 0 && freePorts < len(c.Route.Media) && r.mediaOn() {
			starved = true
			// Said once per change of the route: otherwise a pool route no edge has ports for
			// waits unseen.
			r.refuse(c.Route.Key, c.Route.Revision, routeChange(c.Route), c.Route.SessionID, c.Route.Pool,
				fmt.Sprintf("media ports: public port range exhausted (%d wanted); left to the pool's other edges", len(c.Route.Media)))
			continue
		}
		if !r.claiming {
			// Near the end of its port range: left to the pool's other edges, looked at again
			// as ports come back.
			starved = true
			continue
		}
		claimable = append(claimable, c.Route.Key)
		claimByKey[c.Route.Key] = c
	}
	delays, unassigned := r.claimDelays(drain, claimable)
	claimable = slices.DeleteFunc(claimable, func(k string) bool { _, mine := delays[k]; return !mine })
	starved = starved || unassigned
	routes.ClaimOrder(r.cfg.EdgeID, claimable)
	due, next := r.sched.Update(now, claimable, func(k string, i int) time.Duration {
		return delays[k] + routes.ClaimDelay(load+i, r.cfg.ClaimDelayStep, r.cfg.MaxClaimDelay)
	})
	if drain != r.beatDrain {
		r.heartbeat(ctx)
	}
	if at := drain.Next(now); !at.IsZero() {
		next = earliest(next, at)
	}

	want := make(map[string]servedRoute, len(plan.Serve)+len(due))
	for k, rt := range plan.Serve {
		want[k] = servedRoute{route: rt}
	}
	claims := map[string]routes.Claim{}
	for _, k := range due {
		claims[k] = claimByKey[k]
		want[k] = servedRoute{route: claimByKey[k].Route}
	}
	if r.assignPorts(want, claims) > 0 {
		starved = true
	}
	r.releaseGone(want)

	tPlan := r.now()
	if err := r.program(ctx, want, full); err != nil {
		return time.Time{}, err
	}
	tProg := r.now()
	lost := r.writeClaims(ctx, want, claims)
	if len(lost) > 0 {
		for _, k := range lost {
			r.d.Media.Release(mediaKey(want[k].route))
			delete(want, k)
		}
		if err := r.program(ctx, want, false); err != nil {
			return time.Time{}, err
		}
	}
	tClaim := r.now()
	r.publishEndpoints(ctx, want, claims)
	if !r.turnRenew.IsZero() {
		next = earliest(next, r.turnRenew)
	}
	tPub := r.now()
	r.finish(want, now)
	r.log.Debug().Bool("full", full).Int("routes", len(want)).Dur("plan_ms", tPlan.Sub(now)).Dur("program_ms", tProg.Sub(tPlan)).
		Dur("claims_ms", tClaim.Sub(tProg)).Dur("publish_ms", tPub.Sub(tClaim)).Dur("finish_ms", r.now().Sub(tPub)).Msg("reconcile pass")
	for _, at := range []time.Time{heldUntil, ownersUntil} {
		if !at.IsZero() {
			next = earliest(next, at)
		}
	}
	if starved {
		next = earliest(next, now.Add(r.cfg.Heartbeat))
	}
	return next, nil
}

// earliest is the earlier of two times, zero meaning none.
func earliest(a, b time.Time) time.Time {
	if a.IsZero() || b.Before(a) {
		return b
	}
	return a
}

func (r *Reconciler) mediaOn() bool {
	total, _ := r.d.Media.Capacity()
	return total > 0
}

// refuseInvalid reports the unparsable routes that concern this edge, and forgets refusals of
// routes that are gone.
func (r *Reconciler) refuseInvalid() {
	for k, inv := range r.invalid {
		if inv.mine {
			r.refuse(k, inv.revision, "", inv.session, inv.pool, inv.err.Error())
		}
	}
	for k := range r.refused {
		if _, ok := r.revisionOf(k); !ok {
			delete(r.refused, k)
		}
	}
}

// trackOwners keeps who holds each session id on this edge, and returns the holders (session id
// → key) the plan must keep them for and when the next hold ends (zero: none pending). A session
// id belongs to the instance that first held it until that instance's lease really ends: while
// its route is there, and for one lease (at most maxHold) after its key lapsed, as it does while
// its agent restarts. A route deleted outright (its session ended) lets the id go at once.
func (r *Reconciler) trackOwners(now time.Time) (map[string]string, time.Time) {
	holders := make(map[string]string, len(r.owners))
	var next time.Time
	for s, o := range r.owners {
		rt, present := r.valid[o.key]
		switch {
		case present && rt.SessionID == s:
			o.lease, o.until = rt.LeaseTTL, time.Time{}
		case present, !o.until.IsZero() && !now.Before(o.until):
			delete(r.owners, s)
			continue
		case o.until.IsZero() && r.expired[o.key] && o.lease > 0:
			o.until = now.Add(min(o.lease, maxHold))
			r.log.Info().Str("instance_id", o.key).Str("session_id", s).Time("until", o.until).
				Msg("route lease lapsed; its session id stays reserved for it for one lease")
		case o.until.IsZero():
			delete(r.owners, s)
			continue
		}
		r.owners[s] = o
		holders[s] = o.key
		if !o.until.IsZero() {
			next = earliest(next, o.until)
		}
	}
	return holders, next
}

// refuse logs and reports a route this edge will not program, once per key, change (what the
// route asks for, see routeChange; empty for a value that does not parse) and reason: a lease
// renewal, or another pass finding the same refusal, says nothing new. It reports whether it
// reported now.
func (r *Reconciler) refuse(key string, revision uint64, change, session, pool, reason string) bool {
	mark := change + "\x00" + reason
	old := r.refused[key]
	r.refused[key] = refusal{revision: revision, mark: mark}
	if old.mark == mark {
		return false
	}
	r.d.Metrics.errors.WithLabelValues(ErrKindRefused).Inc()
	// The key and session id may be hostile: zerolog quotes them, and they go no further.
	r.log.Warn().Str("instance_id", logging.Clip(key)).Uint64("revision", revision).Str("reason", reason).Msg("route refused")
	if sessionid.Validate(session) != nil {
		session = ""
	}
	// A hostile pool cannot name the event's subject; the event goes out under this edge's pool.
	if events.ValidateToken("pool", pool) != nil {
		pool = ""
	}
	r.emit(&livegatev1.Event{Type: livegatev1.EventType_EVENT_TYPE_ROUTE_REFUSED, InstanceId: key, SessionId: session, Pool: pool,
		Details: &livegatev1.Event_RouteRefused{RouteRefused: &livegatev1.RouteRefused{EdgeId: r.cfg.EdgeID, Reason: reason}}})
	return true
}

// assignPorts gives each wanted route its public media ports, keeping those it holds, else those
// its endpoint recorded (a restarted edge). A route that gets none is refused and dropped; it
// returns how many were.
func (r *Reconciler) assignPorts(want map[string]servedRoute, claims map[string]routes.Claim) int {
	refused := 0
	// Routes keeping their ports are most of a pass and need no order; the others are assigned
	// in key order, so that which route gets which port does not depend on map order.
	var assign []string
	for k, w := range want {
		if cur, ok := r.served[k]; ok && cur.route.SessionID == w.route.SessionID && slices.Equal(cur.route.Media, w.route.Media) {
			w.ports, w.since = cur.ports, cur.since
			want[k] = w
			continue
		}
		assign = append(assign, k)
	}
	slices.Sort(assign)
	for _, k := range assign {
		w := want[k]
		if cur, ok := r.served[k]; ok && cur.route.SessionID != w.route.SessionID {
			// The previous session's ports go to quarantine now (and their conntrack entries
			// with the next sync), before the new session takes fresh ones.
			r.d.Media.Release(mediaKey(cur.route))
		}
		var preferred []uint16
		if ep, ok := r.endpoints[k]; ok && ep.EdgeID == r.cfg.EdgeID && ep.pub != nil && ep.pub.session == w.route.SessionID {
			preferred = ep.Ports
		}
		ports, err := r.d.Media.Assign(mediaKey(w.route), w.route.Media, preferred)
		if err != nil {
			r.d.Metrics.errors.WithLabelValues(ErrKindMedia).Inc()
			reason := fmt.Sprintf("media ports: %v", err)
			if errors.Is(err, portalloc.ErrExhausted) {
				// Without the free count, which changes from pass to pass: see refuse.
				reason = fmt.Sprintf("media ports: public port range exhausted (%d wanted)", len(w.route.Media))
			}
			r.refuse(k, w.route.Revision, routeChange(w.route), w.route.SessionID, w.route.Pool, reason)
			delete(want, k)
			delete(claims, k)
			refused++
			continue
		}
		if cur, ok := r.served[k]; ok && cur.route.SessionID == w.route.SessionID {
			w.since = cur.since
		}
		w.ports = ports
		want[k] = w
	}
	return refused
}

// releaseGone gives back the media ports of routes no longer served.
func (r *Reconciler) releaseGone(want map[string]servedRoute) {
	for k, w := range r.served {
		if _, ok := want[k]; !ok {
			r.d.Media.Release(mediaKey(w.route))
		}
	}
}

// program makes HAProxy's map and the media plane hold want, and hands the map to the map file
// writer. With full, it reads HAProxy's live map back first and syncs the media plane even when
// its mappings did not change (the plane decides itself when to read the kernel back).
func (r *Reconciler) program(ctx context.Context, want map[string]servedRoute, full bool) error {
	entries := make(map[string]string, len(want))
	mediaWant := make(map[string][]media.Mapping, len(want))
	for k, w := range want {
		entries[w.route.SessionID] = w.route.Signaling.String()
		if len(w.ports) == len(w.route.Media) && len(w.ports) > 0 {
			// The mappings last handed to the plane are never changed: an unchanged route
			// shares them rather than building its own on every pass.
			if old, ok := r.mediaWant[k]; ok && sameMappings(old, w) {
				mediaWant[k] = old
				continue
			}
			ms := make([]media.Mapping, len(w.ports))
			for i, p := range w.ports {
				ms[i] = media.Mapping{PublicPort: p, Backend: w.route.Media[i]}
			}
			mediaWant[k] = ms
		}
	}
	// HAProxy and the kernel are independent: program both at once, publish after both.
	var mediaErr error
	var wg sync.WaitGroup
	if full || !maps.EqualFunc(mediaWant, r.mediaWant, slices.Equal) {
		r.mediaWant = nil
		wg.Go(func() {
			if mediaErr = r.d.Media.Sync(ctx, mediaWant); mediaErr != nil {
				r.d.Metrics.errors.WithLabelValues(ErrKindMedia).Inc()
				mediaErr = fmt.Errorf("program media plane: %w", mediaErr)
				return
			}
			r.mediaWant = mediaWant
		})
	}
	haproxyErr := r.programHAProxy(ctx, entries, full)
	wg.Wait()
	if haproxyErr == nil && r.files != nil && (full || !maps.Equal(entries, r.mapWritten)) {
		r.files.Offer(entries)
		r.mapWritten = entries
	}
	return errors.Join(haproxyErr, mediaErr)
}

// sameMappings reports whether ms maps w's public ports to its media backends.
func sameMappings(ms []media.Mapping, w servedRoute) bool {
	if len(ms) != len(w.ports) {
		return false
	}
	for i, m := range ms {
		if m.PublicPort != w.ports[i] || m.Backend != w.route.Media[i] {
			return false
		}
	}
	return true
}

// programHAProxy makes HAProxy's map hold entries. With full, or after a failure, it first reads
// the live map back instead of trusting what it last wrote.
func (r *Reconciler) programHAProxy(ctx context.Context, entries map[string]string, full bool) error {
	if full || r.programmed == nil {
		live, err := r.d.Driver.List(ctx)
		if err != nil {
			r.programmed = nil
			r.d.Metrics.errors.WithLabelValues(ErrKindHAProxy).Inc()
			return fmt.Errorf("read haproxy map: %w", err)
		}
		if r.programmed != nil {
			set, del := routes.Diff(r.programmed, live)
			if drift := len(set) + len(del); drift > 0 {
				r.d.Metrics.drift.Add(float64(drift))
				r.log.Warn().Int("entries", drift).Msg("haproxy map drifted; repairing")
			}
		}
		r.programmed = live
	}
	set, del := routes.Diff(entries, r.programmed)
	if len(set)+len(del) > 0 {
		began := r.now()
		apply := r.d.Driver.Apply
		if d, ok := r.d.Driver.(haproxy.KnownApplier); ok {
			known := r.programmed
			apply = func(ctx context.Context, set map[string]string, del []string) error {
				return d.ApplyKnown(ctx, set, del, known)
			}
		}
		if err := apply(ctx, set, del); err != nil {
			r.programmed = nil
			r.d.Metrics.errors.WithLabelValues(ErrKindHAProxy).Inc()
			return fmt.Errorf("program haproxy map (%d set, %d deleted): %w", len(set), len(del), err)
		}
		r.programmed = entries
		r.log.Debug().Int("set", len(set)).Int("deleted", len(del)).Dur("took", r.now().Sub(began)).Msg("haproxy map programmed")
	}
	return nil
}

// parallelism bounds concurrent KV writes.
const parallelism = 32

type writeResult struct {
	key     string
	rev     uint64
	pub     *published
	ports   []uint16
	deleted bool
	err     error
}

// publishBatch is the outcome of the endpoint writes of one pass; stopping says the loop was
// stopping, so that failures are not reported.
type publishBatch struct {
	results  []writeResult
	stopping bool
}

// runWrites runs fns with bounded concurrency and collects their results.
func runWrites(fns []func() writeResult) []writeResult {
	out := make([]writeResult, len(fns))
	sem := make(chan struct{}, parallelism)
	var wg sync.WaitGroup
	for i, fn := range fns {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			out[i] = fn()
		})
	}
	wg.Wait()
	return out
}

func (r *Reconciler) endpointFor(w servedRoute) *livegatev1.Endpoint {
	ep := &livegatev1.Endpoint{
		InstanceId: w.route.Key, SessionId: w.route.SessionID, EdgeId: r.cfg.EdgeID,
		PublicHost: r.cfg.PublicHost, PublicIp: r.cfg.PublicIP, SignalingPort: r.cfg.SignalingPort,
		AssignedAt: timestamppb.New(r.now()),
	}
	for _, m := range w.route.Media {
		ep.MediaBackends = append(ep.MediaBackends, m.String())
	}
	for _, p := range w.publicPorts() {
		ep.PublicUdpPorts = append(ep.PublicUdpPorts, uint32(p))
	}
	if r.d.Relay != nil {
		ep.Turn = r.d.Relay.Credentials(w.route.SessionID, r.now())
		r.turnCurrent(w.route.SessionID, ep.Turn)
	}
	return ep
}

// writeClaims takes pool routes with a compare-and-set write of their endpoint: a create where no
// endpoint exists, an update at the dead owner's revision otherwise. Exactly one edge wins each.
// It returns the keys this edge lost.
func (r *Reconciler) writeClaims(ctx context.Context, want map[string]servedRoute, claims map[string]routes.Claim) []string {
	var fns []func() writeResult
	for _, k := range sortedKeys(claims) {
		c, w := claims[k], want[k]
		pb := r.endpointFor(w)
		fns = append(fns, func() writeResult {
			data, err := wire.Marshal(pb)
			if err != nil {
				return writeResult{key: k, err: err}
			}
			var rev uint64
			if c.Revision == 0 {
				rev, err = r.d.Buckets.Endpoints.Create(ctx, k, data)
			} else {
				rev, err = r.d.Buckets.Endpoints.Update(ctx, k, data, c.Revision)
			}
			return writeResult{key: k, rev: rev, pub: r.publishedFor(w, pb.Turn), err: err}
		})
	}
	var lost []string
	for _, res := range runWrites(fns) {
		if res.err != nil {
			lost = append(lost, res.key)
			r.d.Metrics.claims.WithLabelValues("lost").Inc()
			if ctx.Err() == nil && !errors.Is(res.err, jetstream.ErrKeyExists) && !errors.Is(res.err, jetstream.ErrKeyRevisionMismatch) && !isWrongSequence(res.err) {
				r.d.Metrics.errors.WithLabelValues(ErrKindKV).Inc()
				r.log.Warn().Err(res.err).Str("instance_id", res.key).Msg("claim write failed")
			}
			continue
		}
		r.d.Metrics.claims.WithLabelValues("won").Inc()
		r.endpoints[res.key] = endpoint{Endpoint: routes.Endpoint{EdgeID: r.cfg.EdgeID, Revision: res.rev, Ports: want[res.key].ports}, pub: res.pub}
		r.log.Info().Str("instance_id", res.key).Msg("pool route claimed")
	}
	return lost
}

func isWrongSequence(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence
}

// publishEndpoints starts writing the endpoint of each served route whose KV entry is missing
// or stale, and removing this edge's endpoints of routes it no longer serves, all at once. A
// removal is at the entry's revision, so an endpoint another edge has just written is never
// removed. The writes run while the loop goes on to its next pass, whose programming does not
// depend on them: the next publishEndpoints, and a pass that must know whether an endpoint is
// gone (see awaitRemovals), first take their results in (see published).
func (r *Reconciler) publishEndpoints(ctx context.Context, want map[string]servedRoute, claims map[string]routes.Claim) {
	r.awaitPublished()
	var stale []string
	for k, w := range want {
		if _, claimed := claims[k]; claimed {
			continue
		}
		if cur, ok := r.endpoints[k]; ok && cur.pub.publishes(r, w) {
			continue
		}
		stale = append(stale, k)
	}
	slices.Sort(stale)
	var fns []func() writeResult
	writing := map[string]*published{}
	for _, k := range stale {
		w := want[k]
		cur, ok := r.endpoints[k]
		pb := r.endpointFor(w)
		pub := r.publishedFor(w, pb.Turn)
		pooled := w.route.EdgeID == ""
		fns = append(fns, func() writeResult {
			data, err := wire.Marshal(pb)
			if err != nil {
				return writeResult{key: k, err: err}
			}
			var rev uint64
			if pooled && ok {
				// A pool route's endpoint changes only under the claim this edge holds.
				rev, err = r.d.Buckets.Endpoints.Update(ctx, k, data, cur.Revision)
			} else {
				rev, err = r.d.Buckets.Endpoints.Put(ctx, k, data)
			}
			return writeResult{key: k, rev: rev, pub: pub, ports: w.ports, err: err}
		})
		writing[k] = pub
	}
	for k, ep := range r.endpoints {
		if _, ok := want[k]; ok || ep.EdgeID != r.cfg.EdgeID {
			continue
		}
		rev := ep.Revision
		writing[k] = nil
		fns = append(fns, func() writeResult {
			return writeResult{key: k, deleted: true, err: r.d.Buckets.Endpoints.Delete(ctx, k, jetstream.LastRevision(rev))}
		})
	}
	if len(fns) == 0 {
		return
	}
	done := make(chan publishBatch, 1)
	r.publishing, r.writing = done, writing
	r.writes.Go(func() {
		results := runWrites(fns)
		done <- publishBatch{results: results, stopping: ctx.Err() != nil}
	})
}

// awaitPublished takes in the results of the endpoint writes under way, if any. Those that
// failed are still stale, so the pass that waits writes them again.
func (r *Reconciler) awaitPublished() {
	if r.publishing != nil {
		r.published(<-r.publishing)
	}
}

// awaitRemovals waits for the endpoint writes under way when they remove the endpoint of a
// route still in KV: whether that endpoint is gone decides whether the route is served or
// claimed, and a claim must see the entry it races for. Removals of deleted routes, the usual
// case, do not hold the next pass.
func (r *Reconciler) awaitRemovals() {
	for k, pub := range r.writing {
		if _, ok := r.valid[k]; ok && pub == nil {
			r.awaitPublished()
			return
		}
	}
}

// published records the results of the endpoint writes publishEndpoints started. When one failed
// for a reason other than a removal losing to another edge's write, it asks the loop for a pass
// after retryDelay, whichever of the loop's waits took the results in: the failed endpoints are
// still stale, so that pass writes them again.
func (r *Reconciler) published(b publishBatch) {
	r.publishing, r.writing = nil, nil
	for _, res := range b.results {
		switch {
		case res.err != nil && res.deleted && isWrongSequence(res.err):
		case res.err != nil:
			r.republish = true
			if !b.stopping {
				r.d.Metrics.errors.WithLabelValues(ErrKindKV).Inc()
				r.log.Warn().Err(res.err).Str("instance_id", res.key).Bool("delete", res.deleted).Msg("endpoint write failed")
			}
		case res.deleted:
			delete(r.endpoints, res.key)
		default:
			r.endpoints[res.key] = endpoint{Endpoint: routes.Endpoint{EdgeID: r.cfg.EdgeID, Revision: res.rev, Ports: res.ports}, pub: res.pub}
		}
	}
}

// finish records what is served, reports programmed and removed routes and refreshes the status.
func (r *Reconciler) finish(want map[string]servedRoute, now time.Time) {
	for k, old := range r.served {
		if _, ok := want[k]; ok {
			continue
		}
		kind, reason := r.removal(k)
		r.d.Metrics.removed.WithLabelValues(kind).Inc()
		r.log.Info().Str("instance_id", k).Str("session_id", old.route.SessionID).Str("reason", reason).Msg("route removed")
		r.emit(&livegatev1.Event{Type: livegatev1.EventType_EVENT_TYPE_ROUTE_REMOVED, InstanceId: k, SessionId: old.route.SessionID, Pool: old.route.Pool,
			Details: &livegatev1.Event_RouteRemoved{RouteRemoved: &livegatev1.RouteRemoved{EdgeId: r.cfg.EdgeID, Reason: reason}}})
	}
	// want is the pass's own map: it becomes what is served rather than being copied.
	served := want
	var fresh []string
	for k, w := range want {
		if old, had := r.served[k]; !had || !sameProgramming(old, w) {
			fresh = append(fresh, k)
		}
	}
	slices.Sort(fresh)
	for _, k := range fresh {
		w := served[k]
		if w.since.IsZero() {
			w.since = now
			served[k] = w
		}
		latency := time.Duration(0)
		if seen, ok := r.seen[k]; ok {
			latency = max(r.now().Sub(seen), 0)
			r.d.Metrics.latency.Observe(latency.Seconds())
		}
		r.log.Info().Str("instance_id", k).Str("session_id", w.route.SessionID).Str("backend", w.route.Signaling.String()).
			Any("public_udp_ports", w.ports).Dur("latency", latency).Msg("route programmed")
		r.emit(&livegatev1.Event{Type: livegatev1.EventType_EVENT_TYPE_ROUTE_PROGRAMMED, InstanceId: k, SessionId: w.route.SessionID, Pool: w.route.Pool,
			Details: &livegatev1.Event_RouteProgrammed{RouteProgrammed: &livegatev1.RouteProgrammed{EdgeId: r.cfg.EdgeID, Latency: durationpb.New(latency)}}})
	}
	if r.d.Relay != nil && (len(fresh) > 0 || len(r.served) != len(served) || r.status == nil) {
		r.serveRelay(served)
	}
	r.served = served
	clear(r.expired)
	r.d.Metrics.routes.Set(float64(len(served)))
	// served is never changed once built, so Routes can read it while the loop goes on.
	r.mu.Lock()
	r.status = served
	r.mu.Unlock()
}

// serveRelay tells the relay the sessions served now and their media.
func (r *Reconciler) serveRelay(served map[string]servedRoute) {
	sessions := make(map[string]turnrelay.Media, len(served))
	for _, w := range served {
		m := sessions[w.route.SessionID]
		m.Ports = append(m.Ports, w.publicPorts()...)
		m.Backends = append(m.Backends, w.route.Media...)
		sessions[w.route.SessionID] = m
	}
	r.d.Relay.Serve(sessions)
}

// removal says why a route this edge served is no longer served: the metric's reason and the
// event's words. A route that vanished while this edge was away from NATS is held first (see
// hold) and counts as expired when the hold ends.
func (r *Reconciler) removal(key string) (kind, reason string) {
	rev, known := r.revisionOf(key)
	switch {
	case r.expired[key]:
		return RemovedExpired, "route lease expired"
	case !known:
		return RemovedDeleted, "route deleted"
	case r.refused[key].mark != "" && r.refused[key].revision == rev:
		return RemovedRefused, "route refused"
	case r.releasing && r.valid[key].EdgeID == "":
		return RemovedDrained, "edge drained: deadline passed; handed to the pool's other edges"
	default:
		return RemovedReassigned, "route no longer served by this edge"
	}
}

// routeChange is what a route asks for, whatever its revision: a lease renewal leaves it alone.
func routeChange(rt routes.Route) string {
	return fmt.Sprint(rt.SessionID, " ", rt.Signaling, " ", rt.Media, " ", rt.EdgeID, " ", rt.Pool)
}

// sameProgramming tells a lease renewal (a new revision of an unchanged route) from a change that
// programs the route anew: only the latter is reported, or every route would be reported again
// every third of its lease.
func sameProgramming(a, b servedRoute) bool {
	return a.route.SessionID == b.route.SessionID && a.route.Signaling == b.route.Signaling &&
		slices.Equal(a.route.Media, b.route.Media) && slices.Equal(a.ports, b.ports)
}

func addrStrings(as []netip.AddrPort) []string {
	out := make([]string, len(as))
	for i, a := range as {
		out[i] = a.String()
	}
	return out
}

// heartbeat writes this edge's status with a TTL: when the edge stops, the key expires and the
// pool takes its routes over.
func (r *Reconciler) heartbeat(ctx context.Context) {
	total, free := r.d.Media.Capacity()
	drain := r.drainState()
	st := &livegatev1.EdgeStatus{
		EdgeId: r.cfg.EdgeID, Pool: r.cfg.Pool, PublicHost: r.cfg.PublicHost,
		Capacity: uint32(max(total, 0)), FreePorts: uint32(max(free, 0)), Routes: uint32(len(r.served)),
		Heartbeat: timestamppb.New(r.now()), Version: r.cfg.Version,
		MaxRoutes: uint32(r.cfg.MaxRoutes), Draining: drain.Draining, Claiming: r.claiming && !drain.Draining,
	}
	if !drain.Deadline.IsZero() {
		st.DrainDeadline = timestamppb.New(drain.Deadline)
	}
	r.beatDrain = drain
	r.d.Metrics.observeDrain(drain, st.Claiming)
	data, err := wire.Marshal(st)
	if err == nil {
		_, err = kvstore.PutTTL(ctx, r.d.JS, kvstore.EdgesBucket, r.cfg.EdgeID, data, r.cfg.EdgeTTL)
	}
	if err != nil && ctx.Err() == nil {
		r.d.Metrics.errors.WithLabelValues(ErrKindHeartbeat).Inc()
		r.log.Warn().Err(err).Msg("heartbeat write failed")
	}
}

// emit queues ev; pool defaults to this edge's. Events about keys that cannot name a subject
// (hostile ones) are only logged.
func (r *Reconciler) emit(ev *livegatev1.Event) {
	if r.d.Events == nil || events.ValidateToken("instance id", ev.InstanceId) != nil {
		return
	}
	if ev.Pool == "" {
		ev.Pool = r.cfg.Pool
	}
	select {
	case r.evq <- ev:
	default:
		r.d.Metrics.errors.WithLabelValues(ErrKindEvents).Inc()
	}
}

// publishEvents sends events off the loop's goroutine, so a slow stream never delays routing.
func (r *Reconciler) publishEvents(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case ev := <-r.evq:
			err := r.d.Events.Deliver(ctx, ev)
			if err != nil && ctx.Err() == nil {
				r.d.Metrics.errors.WithLabelValues(ErrKindEvents).Inc()
				r.log.Warn().Err(err).Str("instance_id", ev.InstanceId).Msg("event publish failed")
			}
		}
	}
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
