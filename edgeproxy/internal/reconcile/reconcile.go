// Package reconcile runs the edge's control loop: it watches livegate_routes, livegate_endpoints
// and livegate_edges, hands what it sees to the pure core (package desired), and applies the
// core's plans through the drivers: HAProxy's map, the media plane, the endpoint and claim writes,
// the events, and the edge's heartbeat. It reports the drivers' results back to the core. It is
// level-triggered: every pass starts from the KV state, and a periodic resync reads HAProxy's live
// map back and repairs drift. A pass runs only when something it depends on changed (a route or
// endpoint revision, the set of live edges), when a resync or a claim falls due, or to retry; the
// echo of the edge's own heartbeat and endpoint writes is not a change. The heartbeat is written
// on its own goroutine from the status the loop last recorded, so that a pass over many routes
// never lets the edge's key lapse and its pool take its routes over.
package reconcile

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/livegate/livegate/edgeproxy/internal/desired"
	"github.com/livegate/livegate/edgeproxy/internal/haproxy"
	"github.com/livegate/livegate/edgeproxy/internal/media"
	"github.com/livegate/livegate/edgeproxy/internal/placement"
	"github.com/livegate/livegate/edgeproxy/internal/routes"
	"github.com/livegate/livegate/edgeproxy/internal/turnrelay"
	"github.com/livegate/livegate/pkg/events"
	"github.com/livegate/livegate/pkg/kvstore"
	"github.com/livegate/livegate/pkg/natsconn"
	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// Config is what the loop needs to know about this edge.
type Config struct {
	EdgeID        string
	Pool          string
	PublicHost    string
	SignalingPort uint16
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

// Relay is what the loop needs of the edge's TURN relay (turnrelay.Relay): the credentials its
// endpoints publish, and which sessions it serves.
type Relay interface {
	desired.Relay
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

// Reconciler runs the loop: it feeds the core and applies its plans.
type Reconciler struct {
	cfg     Config
	d       Deps
	log     zerolog.Logger
	mapFile string
	gate    <-chan struct{}
	now     func() time.Time
	kick    chan struct{}
	evq     chan *livegatev1.Event

	// Owned by Run's goroutine.
	core  *desired.State
	files *fileWriter
	// programmed is what HAProxy's map holds as far as this edge knows (nil: unknown, read it
	// back); mapWritten is what was last handed to the map file writer.
	programmed map[string]string
	mapWritten map[string]string
	// The media plane's batches run off the loop (see syncMedia): mediaBusy is whether one runs,
	// mediaQueued the mappings wanted next (nil: none), mediaHeld what the plane holds (after
	// the last batch that succeeded), mediaErr the last batch's failure, and mediaRetry asks the
	// loop for a full pass after retryDelay.
	mediaBusy   bool
	mediaQueued map[string][]media.Mapping
	mediaHeld   map[string][]media.Mapping
	mediaErr    error
	mediaRetry  bool
	mediaDone   chan mediaBatch
	mediaSyncs  sync.WaitGroup
	// written delivers the results of the endpoint write batches under way (writesUnderWay of
	// them), and writes runs them (see publish).
	written        chan writeBatch
	writesUnderWay int
	writes         sync.WaitGroup
	// replan is set when write results taken in call for a pass (see takeWritten).
	replan bool
	// planMedia are the media mappings of the last plan, which a finished media batch is
	// compared with (see publishRoutable).
	planMedia map[string][]media.Mapping
	// traces follows new routes at log level debug (see trace.go).
	traces map[string]*routeTrace

	// passErr is the last pass's failure.
	passErr error
	// beatDrain is the drain state last handed to the heartbeat.
	beatDrain placement.Drain
	// beat is what the heartbeat publishes (see updateBeat); beatNow asks for one at once.
	beatMu  sync.Mutex
	beat    beatStatus
	beatNow chan struct{}

	mu     sync.Mutex
	status map[string]desired.Served
	// lastErr and synced are what Healthy reports.
	lastErr error
	synced  bool
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
		kick: make(chan struct{}, 1), evq: make(chan *livegatev1.Event, 1<<16), mediaDone: make(chan mediaBatch, 1),
		beatNow: make(chan struct{}, 1), written: make(chan writeBatch, maxWriteBatches),
	}
	if d.Log.GetLevel() <= zerolog.DebugLevel {
		r.traces = map[string]*routeTrace{}
	}
	var relay desired.Relay
	if d.Relay != nil {
		relay = d.Relay
	}
	r.core = desired.New(desired.Config{
		EdgeID: cfg.EdgeID, Pool: cfg.Pool, PublicHost: cfg.PublicHost, PublicIP: cfg.PublicIP, SignalingPort: cfg.SignalingPort,
		Policy: cfg.Policy, MaxRoutes: cfg.MaxRoutes, ClaimDelayStep: cfg.ClaimDelayStep, MaxClaimDelay: cfg.MaxClaimDelay,
		Recheck: cfg.Heartbeat, PortReserve: cfg.PortReserve, ClaimFallback: cfg.ClaimFallback,
	}, d.Media, relay, d.Log)
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
	for _, k := range slices.Sorted(maps.Keys(served)) {
		w := served[k]
		status = append(status, RouteStatus{
			InstanceID: k, SessionID: w.Route.SessionID, SignalingBackend: w.Route.Signaling.String(),
			MediaBackends: addrStrings(w.Route.Media), PublicUDPPorts: append([]uint16{}, w.Ports...),
			EdgeID: r.cfg.EdgeID, Pool: w.Route.Pool, ProgrammedAt: w.Since,
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
	wg.Go(func() { r.deliverEvents(ctx) })
	r.updateBeat(r.drainState(), true)
	wg.Go(func() { r.beats(ctx) })
	if r.files != nil {
		wg.Go(func() { r.files.Run(ctx) })
	}
	defer r.settle()
	defer wg.Wait()
	defer r.mediaSyncs.Wait()
	defer r.writes.Wait()
	defer cancel()

	resync := time.NewTicker(r.cfg.Resync)
	defer resync.Stop()
	// Between passes the free ports still change (quarantined ones come free) and so may the
	// drain state: the heartbeat's status is refreshed at its period.
	refresh := time.NewTicker(r.cfg.Heartbeat)
	defer refresh.Stop()
	wake := time.NewTimer(time.Hour)
	defer wake.Stop()
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
		if r.core.Retry() {
			setWake(earliest(wakeAt, r.now().Add(retryDelay)))
		}
		if r.mediaRetry {
			r.mediaRetry, full = false, true
			setWake(earliest(wakeAt, r.now().Add(retryDelay)))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-gate:
			gate = nil
		case x := <-in:
			due = r.takeAll(x, in) || due
		case <-resync.C:
			full = true
		case <-r.kick:
			full = true
		case <-wake.C:
			wakeAt, due = time.Time{}, true
		case <-refresh.C:
			r.updateBeat(r.drainState(), true)
			continue
		case b := <-r.written:
			r.takeWritten(b)
		case b := <-r.mediaDone:
			// Routes the batch made routable get their endpoints and events at once, without a
			// pass.
			if r.mediaSynced(ctx, b) {
				r.publishRoutable(ctx)
			}
			if r.mediaRetry {
				continue
			}
		}
		if r.replan {
			r.replan, due = false, true
		}
		if !r.core.Synced() || gate != nil || !(due || full) {
			continue
		}
		due = false
		next, err := r.pass(ctx, full)
		if ctx.Err() != nil {
			return nil
		}
		if full = r.passed(err); full {
			next = r.now().Add(retryDelay)
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

var buckets = map[string]desired.Bucket{
	kvstore.RoutesBucket: desired.RoutesBucket, kvstore.EndpointsBucket: desired.EndpointsBucket, kvstore.EdgesBucket: desired.EdgesBucket,
}

func entryOf(e kvstore.Entry) desired.Entry {
	return desired.Entry{Key: e.Key, Value: e.Value, Revision: e.Revision, Deleted: e.Deleted, Purged: e.Purged}
}

// passed records a pass's outcome, and reports whether the next pass must be a full one, after
// retryDelay.
func (r *Reconciler) passed(err error) bool {
	r.passErr = err
	r.health()
	if err != nil {
		r.log.Error().Err(err).Msg("reconcile pass failed; retrying")
	}
	return err != nil
}

// takeAll hands x and the inputs queued behind it to the core, so that one pass sees them all,
// and reports whether a pass must see them.
func (r *Reconciler) takeAll(x input, in <-chan input) bool {
	changed := r.take(x)
	for {
		select {
		case x := <-in:
			changed = r.take(x) || changed
		default:
			return changed
		}
	}
}

// take hands one watch input to the core and reports whether a pass must see it.
func (r *Reconciler) take(x input) bool {
	in := desired.Input{Bucket: buckets[x.bucket], At: x.at}
	if x.snapshot != nil {
		in.Snapshot = make(map[string]desired.Entry, len(x.snapshot))
		for k, e := range x.snapshot {
			in.Snapshot[k] = entryOf(e)
		}
	} else {
		in.Entry = entryOf(x.entry)
	}
	if r.core.NeedsWritten(in) {
		if in.Snapshot != nil {
			r.awaitWritten()
		} else {
			r.awaitWrite(in.Entry.Key)
		}
	}
	return r.core.Observe(in)
}

// pass plans once and applies the plan: HAProxy's map at once and the media plane's batch started,
// then the claims (a lost claim programs again without its route), then the endpoints of the
// routes the media plane holds, which say a route is routable. It returns when it wants to run
// again, or zero.
func (r *Reconciler) pass(ctx context.Context, full bool) (time.Time, error) {
	now := r.now()
	if r.core.AwaitRemovals() {
		r.awaitWritten()
	}
	drain := r.drainState()
	if full {
		r.core.PlanAll()
	}
	p := r.core.Plan(now, drain)
	r.updateBeat(drain, false)
	r.d.Metrics.conflicts.Add(float64(p.Conflicts))
	r.d.Metrics.errors.WithLabelValues(ErrKindMedia).Add(float64(p.MediaErrors))
	r.report(p.Events)
	tPlan := r.now()
	if err := r.program(ctx, p, full); err != nil {
		return time.Time{}, err
	}
	tProg := r.now()
	if len(p.Claims) > 0 && !r.claimsRoutable(p) {
		// A claim writes the route's endpoint: it waits for the media plane to hold the route.
		r.awaitMedia(ctx)
		if r.mediaErr != nil {
			return time.Time{}, r.mediaErr
		}
	}
	if lost := r.claim(ctx, p); len(lost) > 0 {
		if err := r.program(ctx, p, false); err != nil {
			return time.Time{}, err
		}
	}
	tClaim := r.now()
	ready := r.routable(p)
	r.publish(ctx, p, ready)
	tPub := r.now()
	c := r.core.Commit(p, r.now(), ready)
	r.planMedia = p.Media
	r.tracePass(c, now, tProg, tClaim)
	r.report(c.Events)
	if c.Relay != nil {
		sessions := make(map[string]turnrelay.Media, len(c.Relay))
		for s, m := range c.Relay {
			sessions[s] = turnrelay.Media{Ports: m.Ports, Backends: m.Backends}
		}
		r.d.Relay.Serve(sessions)
	}
	served := r.core.Served()
	r.d.Metrics.routes.Set(float64(len(served)))
	r.mu.Lock()
	r.status = served
	r.mu.Unlock()
	r.updateBeat(drain, false)
	r.log.Debug().Bool("full", full).Bool("changes_only", p.Changed()).Int("routes", len(served)).Dur("plan_ms", tPlan.Sub(now)).Dur("program_ms", tProg.Sub(tPlan)).
		Dur("claims_ms", tClaim.Sub(tProg)).Dur("publish_ms", tPub.Sub(tClaim)).Dur("finish_ms", r.now().Sub(tPub)).Msg("reconcile pass")
	next := p.Next
	if !c.Next.IsZero() {
		next = earliest(next, c.Next)
	}
	return next, nil
}

// drainState is this edge's drain state (never draining without Deps.Drain).
func (r *Reconciler) drainState() placement.Drain {
	if r.d.Drain == nil {
		return placement.Drain{}
	}
	return r.d.Drain()
}

// earliest is the earlier of two times, zero meaning none.
func earliest(a, b time.Time) time.Time {
	if a.IsZero() || b.Before(a) {
		return b
	}
	return a
}

// health publishes what Healthy reports: synced once a pass succeeded and a media batch did, and
// the last failure of either.
func (r *Reconciler) health() {
	err := errors.Join(r.passErr, r.mediaErr)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.synced = r.synced || (err == nil && r.mediaHeld != nil)
	r.lastErr = err
}

func addrStrings(as []netip.AddrPort) []string {
	out := make([]string, len(as))
	for i, a := range as {
		out[i] = a.String()
	}
	return out
}
