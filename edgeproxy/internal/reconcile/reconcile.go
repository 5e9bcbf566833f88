// Package reconcile runs the edge's control loop: it watches livegate_routes, livegate_endpoints
// and livegate_edges, hands what it sees to the pure core (package desired), and applies the
// core's plans through the drivers: HAProxy's map, the media plane, the endpoint and claim writes,
// the events, and the edge's heartbeat. It reports the drivers' results back to the core. It is
// level-triggered: every pass starts from the KV state, and a periodic resync reads HAProxy's live
// map back and repairs drift. A pass runs only when something it depends on changed (a route or
// endpoint revision, the set of live edges), when a resync or a claim falls due, or to retry; the
// echo of the edge's own heartbeat and endpoint writes is not a change.
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

	"github.com/livegate/livegate/edgeproxy/internal/desired"
	"github.com/livegate/livegate/edgeproxy/internal/haproxy"
	"github.com/livegate/livegate/edgeproxy/internal/media"
	"github.com/livegate/livegate/edgeproxy/internal/routes"
	"github.com/livegate/livegate/edgeproxy/internal/turnrelay"
	"github.com/livegate/livegate/pkg/events"
	"github.com/livegate/livegate/pkg/kvstore"
	"github.com/livegate/livegate/pkg/logging"
	"github.com/livegate/livegate/pkg/natsconn"
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
	if c.MaxClaimDelay < 0 || c.ClaimDelayStep < 0 {
		errs = append(errs, errors.New("claim delays must not be negative"))
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
	// written delivers the results of the endpoint writes under way (nil: none), and writes runs
	// them (see publish).
	written chan writeBatch
	writes  sync.WaitGroup

	// passErr is the last pass's failure.
	passErr error

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
	}
	var relay desired.Relay
	if d.Relay != nil {
		relay = d.Relay
	}
	r.core = desired.New(desired.Config{
		EdgeID: cfg.EdgeID, Pool: cfg.Pool, PublicHost: cfg.PublicHost, PublicIP: cfg.PublicIP, SignalingPort: cfg.SignalingPort,
		Policy: cfg.Policy, MaxRoutes: cfg.MaxRoutes, ClaimDelayStep: cfg.ClaimDelayStep, MaxClaimDelay: cfg.MaxClaimDelay,
		Recheck: cfg.Heartbeat,
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
	for _, k := range sortedKeys(served) {
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
	wg.Go(func() { r.publishEvents(ctx) })
	if r.files != nil {
		wg.Go(func() { r.files.Run(ctx) })
	}
	defer r.settle()
	defer wg.Wait()
	defer r.mediaSyncs.Wait()
	defer r.writes.Wait()
	defer cancel()

	r.heartbeat(ctx)
	resync := time.NewTicker(r.cfg.Resync)
	defer resync.Stop()
	beat := time.NewTicker(r.cfg.Heartbeat)
	defer beat.Stop()
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
		case b := <-r.written:
			r.takeWritten(b)
			continue
		case b := <-r.mediaDone:
			// Routes the batch made routable get their endpoints and events from a pass.
			due = r.mediaSynced(ctx, b) || due
			if r.mediaRetry {
				continue
			}
		case <-beat.C:
			r.heartbeat(ctx)
			continue
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
		r.awaitWritten()
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
	p := r.core.Plan(now)
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
	r.log.Debug().Bool("full", full).Int("routes", len(served)).Dur("plan_ms", tPlan.Sub(now)).Dur("program_ms", tProg.Sub(tPlan)).
		Dur("claims_ms", tClaim.Sub(tProg)).Dur("publish_ms", tPub.Sub(tClaim)).Dur("finish_ms", r.now().Sub(tPub)).Msg("reconcile pass")
	next := p.Next
	if !c.Next.IsZero() {
		next = earliest(next, c.Next)
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

// report logs, counts and emits the core's events.
func (r *Reconciler) report(evs []desired.Event) {
	for _, ev := range evs {
		switch ev.Kind {
		case desired.Refused:
			r.d.Metrics.errors.WithLabelValues(ErrKindRefused).Inc()
			// The key may be hostile: zerolog quotes it, and it goes no further.
			r.log.Warn().Str("instance_id", logging.Clip(ev.Key)).Uint64("revision", ev.Revision).Str("reason", ev.Reason).Msg("route refused")
			r.emit(&livegatev1.Event{Type: livegatev1.EventType_EVENT_TYPE_ROUTE_REFUSED, InstanceId: ev.Key, SessionId: ev.Session, Pool: ev.Pool,
				Details: &livegatev1.Event_RouteRefused{RouteRefused: &livegatev1.RouteRefused{EdgeId: r.cfg.EdgeID, Reason: ev.Reason}}})
		case desired.Removed:
			r.d.Metrics.removed.WithLabelValues(ev.RemovedAs).Inc()
			r.log.Info().Str("instance_id", ev.Key).Str("session_id", ev.Session).Str("reason", ev.Reason).Msg("route removed")
			r.emit(&livegatev1.Event{Type: livegatev1.EventType_EVENT_TYPE_ROUTE_REMOVED, InstanceId: ev.Key, SessionId: ev.Session, Pool: ev.Pool,
				Details: &livegatev1.Event_RouteRemoved{RouteRemoved: &livegatev1.RouteRemoved{EdgeId: r.cfg.EdgeID, Reason: ev.Reason}}})
		case desired.Programmed:
			if ev.HasLatency {
				r.d.Metrics.latency.Observe(ev.Latency.Seconds())
			}
			r.log.Info().Str("instance_id", ev.Key).Str("session_id", ev.Session).Str("backend", ev.Backend).
				Any("public_udp_ports", ev.Ports).Dur("latency", ev.Latency).Msg("route programmed")
			r.emit(&livegatev1.Event{Type: livegatev1.EventType_EVENT_TYPE_ROUTE_PROGRAMMED, InstanceId: ev.Key, SessionId: ev.Session, Pool: ev.Pool,
				Details: &livegatev1.Event_RouteProgrammed{RouteProgrammed: &livegatev1.RouteProgrammed{EdgeId: r.cfg.EdgeID, Latency: durationpb.New(ev.Latency)}}})
		}
	}
}

// program makes HAProxy's map hold p at once, hands p's media mappings to the media plane (see
// syncMedia), and hands the map to the map file writer. With full, it reads HAProxy's live map
// back first and syncs the media plane even when its mappings did not change (the plane decides
// itself when to read the kernel back).
func (r *Reconciler) program(ctx context.Context, p *desired.Plan, full bool) error {
	if full || p.MediaChanged || r.mediaErr != nil || r.mediaHeld == nil {
		r.syncMedia(ctx, p.Media)
	}
	if err := r.programHAProxy(ctx, p.Map, full); err != nil {
		return err
	}
	if r.files != nil && (full || !maps.Equal(p.Map, r.mapWritten)) {
		r.files.Offer(p.Map)
		r.mapWritten = p.Map
	}
	return nil
}

// mediaBatch is the outcome of one media plane sync.
type mediaBatch struct {
	want map[string][]media.Mapping
	err  error
}

// syncMedia has the media plane hold want. Its batches (kernel rules, conntrack) take far longer
// than a map change, so they run off the loop, one at a time: the loop goes on programming
// HAProxy for the routes that arrive meanwhile, and the mappings wanted while a batch runs wait
// for it and go as one, the latest replacing the others. A route is published (and reported)
// once a batch holding its mappings is done: see routable.
func (r *Reconciler) syncMedia(ctx context.Context, want map[string][]media.Mapping) {
	if r.mediaBusy {
		r.mediaQueued = want
		return
	}
	r.mediaBusy = true
	r.mediaSyncs.Go(func() { r.mediaDone <- mediaBatch{want: want, err: r.d.Media.Sync(ctx, want)} })
}

// mediaSynced takes in a finished media batch, starts the one queued, and reports whether a pass
// should follow (routes may have become routable).
func (r *Reconciler) mediaSynced(ctx context.Context, b mediaBatch) bool {
	r.mediaBusy = false
	if b.err != nil {
		r.mediaErr = fmt.Errorf("program media plane: %w", b.err)
		if ctx.Err() == nil {
			r.d.Metrics.errors.WithLabelValues(ErrKindMedia).Inc()
			r.log.Error().Err(r.mediaErr).Msg("media plane sync failed; retrying")
			r.mediaRetry = true
		}
	} else {
		r.mediaErr, r.mediaHeld = nil, b.want
	}
	if q := r.mediaQueued; q != nil {
		r.mediaQueued = nil
		r.syncMedia(ctx, q)
	}
	r.health()
	return b.err == nil
}

// awaitMedia waits until no media batch runs or is queued.
func (r *Reconciler) awaitMedia(ctx context.Context) {
	for r.mediaBusy {
		r.mediaSynced(ctx, <-r.mediaDone)
	}
}

// routable says which routes of p the media plane holds: those without media mappings, and those
// whose mappings the last successful batch held.
func (r *Reconciler) routable(p *desired.Plan) desired.Ready {
	return func(key string) bool {
		want, ok := p.Media[key]
		if !ok {
			return true
		}
		held, ok := r.mediaHeld[key]
		return ok && slices.Equal(held, want)
	}
}

// claimsRoutable reports whether the media plane already holds every route p claims.
func (r *Reconciler) claimsRoutable(p *desired.Plan) bool {
	ready := r.routable(p)
	for _, c := range p.Claims {
		if !ready(c.Key) {
			return false
		}
	}
	return true
}

// health publishes what Healthy reports: synced once a pass succeeded with the media plane
// holding its mappings, and the last failure of either.
func (r *Reconciler) health() {
	err := errors.Join(r.passErr, r.mediaErr)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.synced = r.synced || (err == nil && r.mediaHeld != nil && !r.mediaBusy)
	r.lastErr = err
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

// writeOutcome is a write's result for the core, with the error for the log.
type writeOutcome struct {
	desired.WriteResult
	err error
}

// writeBatch is the outcome of the endpoint writes of one pass; stopping says the loop was
// stopping, so that failures are not reported.
type writeBatch struct {
	outcomes []writeOutcome
	stopping bool
}

// runWrites applies ws to livegate_endpoints with bounded concurrency.
func (r *Reconciler) runWrites(ctx context.Context, ws []desired.Write) []writeOutcome {
	out := make([]writeOutcome, len(ws))
	sem := make(chan struct{}, parallelism)
	at := r.now()
	var wg sync.WaitGroup
	for i, w := range ws {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			out[i] = r.write(ctx, w, at)
		})
	}
	wg.Wait()
	return out
}

// write applies one write; the endpoint says it was assigned at.
func (r *Reconciler) write(ctx context.Context, w desired.Write, at time.Time) writeOutcome {
	kv := r.d.Buckets.Endpoints
	var rev uint64
	var err error
	if w.Op == desired.OpDelete {
		err = kv.Delete(ctx, w.Key, jetstream.LastRevision(w.Revision))
	} else {
		var data []byte
		if data, err = wire.Marshal(w.Endpoint.Proto(at)); err == nil {
			switch w.Op {
			case desired.OpCreate:
				rev, err = kv.Create(ctx, w.Key, data)
			case desired.OpUpdate:
				rev, err = kv.Update(ctx, w.Key, data, w.Revision)
			default:
				rev, err = kv.Put(ctx, w.Key, data)
			}
		}
	}
	res := desired.WriteResult{Write: w, Result: desired.Applied, Revision: rev}
	switch {
	case err == nil:
	case errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) || isWrongSequence(err):
		res.Result = desired.Conflict
	default:
		res.Result = desired.Failed
	}
	return writeOutcome{WriteResult: res, err: err}
}

func isWrongSequence(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence
}

// claim takes p's pool routes with their compare-and-set writes: exactly one edge wins each. It
// returns the keys this edge lost, which the core has taken out of p.
func (r *Reconciler) claim(ctx context.Context, p *desired.Plan) []string {
	if len(p.Claims) == 0 {
		return nil
	}
	outcomes := r.runWrites(ctx, p.Claims)
	results := make([]desired.WriteResult, len(outcomes))
	for i, o := range outcomes {
		results[i] = o.WriteResult
		if o.Result != desired.Applied {
			r.d.Metrics.claims.WithLabelValues("lost").Inc()
			if ctx.Err() == nil && o.Result == desired.Failed {
				r.d.Metrics.errors.WithLabelValues(ErrKindKV).Inc()
				r.log.Warn().Err(o.err).Str("instance_id", o.Write.Key).Msg("claim write failed")
			}
			continue
		}
		r.d.Metrics.claims.WithLabelValues("won").Inc()
		r.log.Info().Str("instance_id", o.Write.Key).Msg("pool route claimed")
	}
	return r.core.Claimed(p, results)
}

// publish starts the endpoint writes of p. They run while the loop goes on to its next pass,
// whose programming does not depend on them: the next publish, and a pass that must know whether
// an endpoint is gone (see desired.State.AwaitRemovals), first take their results in.
func (r *Reconciler) publish(ctx context.Context, p *desired.Plan, ready desired.Ready) {
	r.awaitWritten()
	ws := r.core.Publish(p, ready)
	if len(ws) == 0 {
		return
	}
	done := make(chan writeBatch, 1)
	r.written = done
	r.writes.Go(func() {
		outcomes := r.runWrites(ctx, ws)
		done <- writeBatch{outcomes: outcomes, stopping: ctx.Err() != nil}
	})
}

// awaitWritten takes in the results of the endpoint writes under way, if any.
func (r *Reconciler) awaitWritten() {
	if r.written != nil {
		r.takeWritten(<-r.written)
	}
}

// takeWritten hands the results of the endpoint writes to the core, and reports the failures other
// than a removal losing to another edge's write: the core writes those again after retryDelay.
func (r *Reconciler) takeWritten(b writeBatch) {
	r.written = nil
	results := make([]desired.WriteResult, len(b.outcomes))
	for i, o := range b.outcomes {
		results[i] = o.WriteResult
		deleted := o.Write.Op == desired.OpDelete
		if o.err != nil && !(deleted && isWrongSequence(o.err)) && !b.stopping {
			r.d.Metrics.errors.WithLabelValues(ErrKindKV).Inc()
			r.log.Warn().Err(o.err).Str("instance_id", o.Write.Key).Bool("delete", deleted).Msg("endpoint write failed")
		}
		if deleted && o.Result == desired.Conflict && !isWrongSequence(o.err) {
			results[i].Result = desired.Failed
		}
	}
	r.core.Written(results)
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
	_, free := r.d.Media.Capacity()
	st := &livegatev1.EdgeStatus{
		EdgeId: r.cfg.EdgeID, Pool: r.cfg.Pool, PublicHost: r.cfg.PublicHost,
		Capacity: uint32(r.cfg.MaxRoutes), FreePorts: uint32(max(free, 0)), Routes: uint32(len(r.core.Served())),
		Heartbeat: timestamppb.New(r.now()), Version: r.cfg.Version,
	}
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
