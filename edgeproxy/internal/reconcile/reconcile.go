// Package reconcile is the edge's control loop: it watches livegate_routes, livegate_endpoints and
// livegate_edges, derives the routes this edge serves (claiming pool routes), programs HAProxy's
// map and the media plane, publishes what it assigned to livegate_endpoints and its heartbeat to
// livegate_edges. It is level-triggered: every pass starts from the KV state, and a periodic
// resync reads HAProxy's live map back and repairs drift.
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
	"github.com/livegate/livegate/edgeproxy/internal/routes"
	"github.com/livegate/livegate/pkg/events"
	"github.com/livegate/livegate/pkg/kvstore"
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
}

// Option changes a Reconciler's defaults.
type Option func(*Reconciler)

// WithMapFile keeps the map file HAProxy loads at start in line with the programmed map.
func WithMapFile(path string) Option { return func(r *Reconciler) { r.mapFile = path } }

// WithStartGate holds the first pass until ready is closed: a supervised HAProxy that is still
// starting is not a failure to report. The KV snapshot is read in the meantime.
func WithStartGate(ready <-chan struct{}) Option { return func(r *Reconciler) { r.gate = ready } }

// RouteStatus is one programmed route, as GET /v1/routes shows it.
type RouteStatus struct {
	InstanceID       string    `json:"instance_id"`
	SessionID        string    `json:"session_id"`
	SignalingBackend string    `json:"signaling_backend"`
	MediaBackends    []string  `json:"media_backends"`
	PublicUDPPorts   []uint16  `json:"public_udp_ports"`
	EdgeID           string    `json:"edge_id,omitempty"`
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
	routes     map[string]kvstore.Entry
	seen       map[string]time.Time
	endpoints  map[string]endpoint
	live       map[string]bool
	programmed map[string]string
	mapWritten map[string]string
	mediaWant  map[string][]media.Mapping
	served     map[string]servedRoute
	refused    map[string]string
	sched      *routes.Scheduler

	mu      sync.Mutex
	status  []RouteStatus
	lastErr error
	synced  bool
}

type endpoint struct {
	routes.Endpoint
	pb *livegatev1.Endpoint
}

type servedRoute struct {
	route routes.Route
	ports []uint16
	since time.Time
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
		routes: map[string]kvstore.Entry{}, seen: map[string]time.Time{}, endpoints: map[string]endpoint{},
		live: map[string]bool{}, served: map[string]servedRoute{}, refused: map[string]string{},
		sched: routes.NewScheduler(),
	}
	for _, o := range opts {
		o(r)
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

// Routes is what this edge has programmed, by instance id.
func (r *Reconciler) Routes() []RouteStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.status)
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
	defer cancel()
	in := make(chan input, 1024)
	var wg sync.WaitGroup
	for _, kv := range []jetstream.KeyValue{r.d.Buckets.Routes, r.d.Buckets.Endpoints, r.d.Buckets.Edges} {
		wg.Go(func() { r.watch(ctx, kv, in) })
	}
	wg.Go(func() { r.publishEvents(ctx) })
	defer wg.Wait()
	defer cancel()

	r.heartbeat(ctx)
	resync := time.NewTicker(r.cfg.Resync)
	defer resync.Stop()
	beat := time.NewTicker(r.cfg.Heartbeat)
	defer beat.Stop()
	wake := time.NewTimer(time.Hour)
	defer wake.Stop()
	synced := map[string]bool{}
	full := true
	gate := r.gate
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-gate:
			gate = nil
		case x := <-in:
			r.take(x, synced)
		drain:
			for {
				select {
				case x := <-in:
					r.take(x, synced)
				default:
					break drain
				}
			}
		case <-resync.C:
			full = true
		case <-r.kick:
			full = true
		case <-wake.C:
		case <-beat.C:
			r.heartbeat(ctx)
			continue
		}
		if len(synced) < 3 || gate != nil {
			continue
		}
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
		wake.Stop()
		if !next.IsZero() {
			wake.Reset(max(next.Sub(r.now()), time.Millisecond))
		}
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
		Error: func(err error) {
			r.d.Metrics.errors.WithLabelValues(ErrKindKV).Inc()
			r.log.Warn().Err(err).Str("bucket", bucket).Msg("kv watch broke; watching again")
		},
	})
}

// take folds one watch input into the loop state.
func (r *Reconciler) take(x input, synced map[string]bool) {
	entries := x.snapshot
	if entries != nil {
		synced[x.bucket] = true
		switch x.bucket {
		case kvstore.RoutesBucket:
			clear(r.routes)
		case kvstore.EndpointsBucket:
			clear(r.endpoints)
		case kvstore.EdgesBucket:
			clear(r.live)
		}
	} else {
		entries = map[string]kvstore.Entry{x.entry.Key: x.entry}
	}
	for k, e := range entries {
		switch x.bucket {
		case kvstore.RoutesBucket:
			if e.Deleted {
				delete(r.routes, k)
				delete(r.seen, k)
				continue
			}
			if old, ok := r.routes[k]; !ok || old.Revision != e.Revision {
				r.seen[k] = x.at
			}
			r.routes[k] = e
		case kvstore.EndpointsBucket:
			if e.Deleted {
				delete(r.endpoints, k)
				continue
			}
			r.endpoints[k] = decodeEndpoint(e)
		case kvstore.EdgesBucket:
			if e.Deleted {
				delete(r.live, k)
				continue
			}
			r.live[k] = true
		}
	}
	if x.snapshot != nil && x.bucket == kvstore.RoutesBucket {
		for k := range r.seen {
			if _, ok := r.routes[k]; !ok {
				delete(r.seen, k)
			}
		}
	}
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
	return endpoint{Endpoint: routes.Endpoint{EdgeID: pb.GetEdgeId(), Revision: e.Revision, Ports: ports}, pb: &pb}
}

// pass reconciles once. It returns when it wants to run again (a claim falling due), or zero.
func (r *Reconciler) pass(ctx context.Context, full bool) (time.Time, error) {
	now := r.now()
	valid := r.validRoutes()
	eps := make(map[string]routes.Endpoint, len(r.endpoints))
	for k, e := range r.endpoints {
		eps[k] = e.Endpoint
	}
	plan := routes.Derive(routes.Self{EdgeID: r.cfg.EdgeID, Pool: r.cfg.Pool}, valid, eps, r.live)
	for k, reason := range plan.Refused {
		r.refuse(k, valid[k].Revision, valid[k].SessionID, valid[k].Pool, reason)
	}

	// Pool claims: only with room left, and the busier this edge, the later.
	load := len(plan.Serve)
	_, freePorts := r.d.Media.Capacity()
	var claimable []string
	claimByKey := map[string]routes.Claim{}
	for _, c := range plan.Claims {
		if load+len(claimable) >= r.cfg.MaxRoutes || (len(c.Route.Media) > 0 && freePorts < len(c.Route.Media) && r.mediaOn()) {
			continue
		}
		claimable = append(claimable, c.Route.Key)
		claimByKey[c.Route.Key] = c
	}
	routes.ClaimOrder(r.cfg.EdgeID, claimable)
	due, next := r.sched.Update(now, claimable, func(i int) time.Duration {
		return routes.ClaimDelay(load+i, r.cfg.ClaimDelayStep, r.cfg.MaxClaimDelay)
	})

	want := map[string]servedRoute{}
	for k, rt := range plan.Serve {
		want[k] = servedRoute{route: rt}
	}
	claims := map[string]routes.Claim{}
	for _, k := range due {
		claims[k] = claimByKey[k]
		want[k] = servedRoute{route: claimByKey[k].Route}
	}
	r.assignPorts(want, claims)
	r.releaseGone(want)

	if err := r.program(ctx, want, full); err != nil {
		return time.Time{}, err
	}
	lost := r.writeClaims(ctx, want, claims)
	if len(lost) > 0 {
		for _, k := range lost {
			delete(want, k)
			r.d.Media.Release(k)
		}
		if err := r.program(ctx, want, false); err != nil {
			return time.Time{}, err
		}
	}
	r.writeEndpoints(ctx, want, claims)
	r.deleteStaleEndpoints(ctx, want)
	r.finish(want, now)
	return next, nil
}

func (r *Reconciler) mediaOn() bool {
	total, _ := r.d.Media.Capacity()
	return total > 0
}

// validRoutes parses every route; it reports the refused ones that concern this edge.
func (r *Reconciler) validRoutes() map[string]routes.Route {
	valid := make(map[string]routes.Route, len(r.routes))
	for k, e := range r.routes {
		rt, err := r.cfg.Policy.Parse(k, e.Value, e.Revision)
		if err == nil {
			valid[k] = rt
			continue
		}
		var pb livegatev1.Route
		if wire.Unmarshal(e.Value, &pb) == nil {
			mine := pb.GetEdgeId() == r.cfg.EdgeID || (pb.GetEdgeId() == "" && (pb.GetPool() == r.cfg.Pool || pb.GetPool() == ""))
			if !mine {
				continue
			}
		}
		r.refuse(k, e.Revision, pb.GetSessionId(), pb.GetPool(), err.Error())
	}
	for k := range r.refused {
		if _, ok := r.routes[k]; !ok {
			delete(r.refused, k)
		}
	}
	return valid
}

// refuse logs and reports a route this edge will not program, once per key and revision.
func (r *Reconciler) refuse(key string, revision uint64, session, pool, reason string) {
	mark := fmt.Sprintf("%d %s", revision, reason)
	if r.refused[key] == mark {
		return
	}
	r.refused[key] = mark
	r.d.Metrics.errors.WithLabelValues(ErrKindRefused).Inc()
	// The key and session id may be hostile: zerolog quotes them, and they go no further.
	r.log.Warn().Str("instance_id", key).Uint64("revision", revision).Str("reason", reason).Msg("route refused")
	if sessionid.Validate(session) != nil {
		session = ""
	}
	r.emit(&livegatev1.Event{Type: livegatev1.EventType_EVENT_TYPE_ROUTE_REFUSED, InstanceId: key, SessionId: session, Pool: pool,
		Details: &livegatev1.Event_RouteRefused{RouteRefused: &livegatev1.RouteRefused{EdgeId: r.cfg.EdgeID, Reason: reason}}})
}

// assignPorts gives each wanted route its public media ports, keeping those it holds, else those
// its endpoint recorded (a restarted edge). A route that gets none is refused and dropped.
func (r *Reconciler) assignPorts(want map[string]servedRoute, claims map[string]routes.Claim) {
	for _, k := range sortedKeys(want) {
		w := want[k]
		if cur, ok := r.served[k]; ok && slices.Equal(cur.route.Media, w.route.Media) {
			w.ports, w.since = cur.ports, cur.since
			want[k] = w
			continue
		}
		var preferred []uint16
		if ep, ok := r.endpoints[k]; ok && ep.EdgeID == r.cfg.EdgeID {
			preferred = ep.Ports
		}
		ports, err := r.d.Media.Assign(k, w.route.Media, preferred)
		if err != nil {
			r.d.Metrics.errors.WithLabelValues(ErrKindMedia).Inc()
			r.refuse(k, w.route.Revision, w.route.SessionID, w.route.Pool, fmt.Sprintf("media ports: %v", err))
			delete(want, k)
			delete(claims, k)
			continue
		}
		if cur, ok := r.served[k]; ok {
			w.since = cur.since
		}
		w.ports = ports
		want[k] = w
	}
}

// releaseGone gives back the media ports of routes no longer served.
func (r *Reconciler) releaseGone(want map[string]servedRoute) {
	for k := range r.served {
		if _, ok := want[k]; !ok {
			r.d.Media.Release(k)
		}
	}
}

// program makes HAProxy's map, the map file and the media plane hold want. With full, it first
// reads HAProxy's live map back instead of trusting what it last wrote.
func (r *Reconciler) program(ctx context.Context, want map[string]servedRoute, full bool) error {
	entries := make(map[string]string, len(want))
	mediaWant := make(map[string][]media.Mapping, len(want))
	for k, w := range want {
		entries[w.route.SessionID] = w.route.Signaling.String()
		if len(w.ports) == len(w.route.Media) && len(w.ports) > 0 {
			ms := make([]media.Mapping, len(w.ports))
			for i, p := range w.ports {
				ms[i] = media.Mapping{PublicPort: p, Backend: w.route.Media[i]}
			}
			mediaWant[k] = ms
		}
	}
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
		if err := r.d.Driver.Apply(ctx, set, del); err != nil {
			r.programmed = nil
			r.d.Metrics.errors.WithLabelValues(ErrKindHAProxy).Inc()
			return fmt.Errorf("program haproxy map (%d set, %d deleted): %w", len(set), len(del), err)
		}
		r.programmed = entries
		r.log.Debug().Int("set", len(set)).Int("deleted", len(del)).Dur("took", r.now().Sub(began)).Msg("haproxy map programmed")
	}
	if full || !maps.Equal(entries, r.mapWritten) {
		if r.mapFile != "" {
			if err := haproxy.WriteMapFile(r.mapFile, entries); err != nil {
				r.d.Metrics.errors.WithLabelValues(ErrKindMapFile).Inc()
				return err
			}
		}
		r.mapWritten = entries
	}
	if full || !maps.EqualFunc(mediaWant, r.mediaWant, slices.Equal) {
		if err := r.d.Media.Sync(ctx, mediaWant); err != nil {
			r.d.Metrics.errors.WithLabelValues(ErrKindMedia).Inc()
			r.mediaWant = nil
			return fmt.Errorf("program media plane: %w", err)
		}
		r.mediaWant = mediaWant
	}
	return nil
}

// parallelism bounds concurrent KV writes.
const parallelism = 32

type writeResult struct {
	key string
	rev uint64
	pb  *livegatev1.Endpoint
	err error
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
		PublicHost: r.cfg.PublicHost, SignalingPort: r.cfg.SignalingPort, AssignedAt: timestamppb.New(r.now()),
	}
	for i, m := range w.route.Media {
		ep.MediaBackends = append(ep.MediaBackends, m.String())
		if i < len(w.ports) {
			ep.PublicUdpPorts = append(ep.PublicUdpPorts, uint32(w.ports[i]))
		}
	}
	return ep
}

func sameEndpoint(a, b *livegatev1.Endpoint) bool {
	return a != nil && b != nil && a.GetInstanceId() == b.GetInstanceId() && a.GetSessionId() == b.GetSessionId() &&
		a.GetEdgeId() == b.GetEdgeId() && a.GetPublicHost() == b.GetPublicHost() && a.GetSignalingPort() == b.GetSignalingPort() &&
		slices.Equal(a.GetPublicUdpPorts(), b.GetPublicUdpPorts()) && slices.Equal(a.GetMediaBackends(), b.GetMediaBackends())
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
			return writeResult{key: k, rev: rev, pb: pb, err: err}
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
		r.endpoints[res.key] = endpoint{Endpoint: routes.Endpoint{EdgeID: r.cfg.EdgeID, Revision: res.rev, Ports: want[res.key].ports}, pb: res.pb}
		r.log.Info().Str("instance_id", res.key).Msg("pool route claimed")
	}
	return lost
}

func isWrongSequence(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence
}

// writeEndpoints publishes the endpoint of each served route whose KV entry is missing or stale.
func (r *Reconciler) writeEndpoints(ctx context.Context, want map[string]servedRoute, claims map[string]routes.Claim) {
	var fns []func() writeResult
	for _, k := range sortedKeys(want) {
		if _, claimed := claims[k]; claimed {
			continue
		}
		w := want[k]
		pb := r.endpointFor(w)
		cur, ok := r.endpoints[k]
		if ok && sameEndpoint(cur.pb, pb) {
			continue
		}
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
			return writeResult{key: k, rev: rev, pb: pb, err: err}
		})
	}
	for _, res := range runWrites(fns) {
		if res.err != nil {
			if ctx.Err() == nil {
				r.d.Metrics.errors.WithLabelValues(ErrKindKV).Inc()
				r.log.Warn().Err(res.err).Str("instance_id", res.key).Msg("endpoint write failed")
			}
			continue
		}
		r.endpoints[res.key] = endpoint{Endpoint: routes.Endpoint{EdgeID: r.cfg.EdgeID, Revision: res.rev, Ports: want[res.key].ports}, pb: res.pb}
	}
}

// deleteStaleEndpoints removes this edge's endpoints of routes it no longer serves, at their
// revision, so an endpoint another edge has just written is never removed.
func (r *Reconciler) deleteStaleEndpoints(ctx context.Context, want map[string]servedRoute) {
	var fns []func() writeResult
	for k, ep := range r.endpoints {
		if _, ok := want[k]; ok || ep.EdgeID != r.cfg.EdgeID {
			continue
		}
		rev := ep.Revision
		fns = append(fns, func() writeResult {
			return writeResult{key: k, err: r.d.Buckets.Endpoints.Delete(ctx, k, jetstream.LastRevision(rev))}
		})
	}
	for _, res := range runWrites(fns) {
		if res.err != nil {
			if ctx.Err() == nil && !isWrongSequence(res.err) {
				r.d.Metrics.errors.WithLabelValues(ErrKindKV).Inc()
				r.log.Warn().Err(res.err).Str("instance_id", res.key).Msg("endpoint delete failed")
			}
			continue
		}
		delete(r.endpoints, res.key)
	}
}

// finish records what is served, reports programmed and removed routes and refreshes the status.
func (r *Reconciler) finish(want map[string]servedRoute, now time.Time) {
	for k, old := range r.served {
		if _, ok := want[k]; ok {
			continue
		}
		reason := "route deleted"
		if _, ok := r.routes[k]; ok {
			reason = "route no longer served by this edge"
		}
		r.log.Info().Str("instance_id", k).Str("session_id", old.route.SessionID).Str("reason", reason).Msg("route removed")
		r.emit(&livegatev1.Event{Type: livegatev1.EventType_EVENT_TYPE_ROUTE_REMOVED, InstanceId: k, SessionId: old.route.SessionID, Pool: old.route.Pool,
			Details: &livegatev1.Event_RouteRemoved{RouteRemoved: &livegatev1.RouteRemoved{EdgeId: r.cfg.EdgeID, Reason: reason}}})
	}
	served := make(map[string]servedRoute, len(want))
	status := make([]RouteStatus, 0, len(want))
	for _, k := range sortedKeys(want) {
		w := want[k]
		old, had := r.served[k]
		if !had || old.route.Revision != w.route.Revision {
			if w.since.IsZero() {
				w.since = now
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
		served[k] = w
		status = append(status, RouteStatus{
			InstanceID: k, SessionID: w.route.SessionID, SignalingBackend: w.route.Signaling.String(),
			MediaBackends: addrStrings(w.route.Media), PublicUDPPorts: slices.Clone(w.ports),
			EdgeID: w.route.EdgeID, Pool: w.route.Pool, ProgrammedAt: w.since,
		})
	}
	r.served = served
	r.d.Metrics.routes.Set(float64(len(served)))
	r.mu.Lock()
	r.status = status
	r.mu.Unlock()
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
		Capacity: uint32(r.cfg.MaxRoutes), FreePorts: uint32(max(free, 0)), Routes: uint32(len(r.served)),
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
			pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			err := r.d.Events.Publish(pctx, ev)
			cancel()
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
