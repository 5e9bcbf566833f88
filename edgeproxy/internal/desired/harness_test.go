package desired

import (
	"net/netip"
	"testing"
	"time"

	"github.com/livegate/livegate/edgeproxy/internal/placement"
	"github.com/livegate/livegate/edgeproxy/internal/portalloc"
	"github.com/livegate/livegate/pkg/wire"
	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
	"github.com/rs/zerolog"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
)

// store is an in-memory KV with the compare-and-set rules of JetStream's key-value buckets: one
// revision counter for all keys, Create fails on a live key, Update and Delete at a revision fail
// when the key moved on. Every change is logged, and each edge reads the log as its watches would.
type store struct {
	rev  uint64
	live map[Bucket]map[string]Entry
	log  []change
}

type change struct {
	bucket Bucket
	entry  Entry
}

func newStore() *store {
	return &store{live: map[Bucket]map[string]Entry{RoutesBucket: {}, EndpointsBucket: {}, EdgesBucket: {}}}
}

func (s *store) set(b Bucket, key string, value []byte) Entry {
	s.rev++
	e := Entry{Key: key, Value: value, Revision: s.rev}
	s.live[b][key] = e
	s.log = append(s.log, change{b, e})
	return e
}

// remove deletes key (purged: its lease lapsed).
func (s *store) remove(b Bucket, key string, purged bool) {
	s.rev++
	delete(s.live[b], key)
	s.log = append(s.log, change{b, Entry{Key: key, Revision: s.rev, Deleted: true, Purged: purged}})
}

// apply runs an endpoint write as JetStream would.
func (s *store) apply(t *testing.T, w Write) WriteResult {
	t.Helper()
	cur, exists := s.live[EndpointsBucket][w.Key]
	res := WriteResult{Write: w, Result: Applied}
	switch w.Op {
	case OpCreate:
		if exists {
			res.Result = Conflict
			return res
		}
	case OpUpdate, OpDelete:
		if !exists || cur.Revision != w.Revision {
			res.Result = Conflict
			return res
		}
	}
	if w.Op == OpDelete {
		s.remove(EndpointsBucket, w.Key, false)
		return res
	}
	data, err := wire.Marshal(w.Endpoint.Proto(time.Unix(1, 0)))
	if err != nil {
		t.Fatal(err)
	}
	res.Revision = s.set(EndpointsBucket, w.Key, data).Revision
	return res
}

// allocPorts is the media plane's port allocator, as the core sees it.
type allocPorts struct{ *portalloc.Allocator }

func (a allocPorts) Assign(key string, backends []netip.AddrPort, preferred []uint16) ([]uint16, error) {
	return a.Allocate(key, len(backends), preferred)
}

// edge is one edge's core with what an executor would do around it, on a clock the test moves.
type edge struct {
	t     *testing.T
	kv    *store
	s     *State
	ports allocPorts
	read  int
	// fail makes the endpoint writes (not the claims) of the next passes fail.
	fail bool
	// drain is the edge's drain state, as the executor reads it at each pass.
	drain placement.Drain
}

func newEdge(t *testing.T, kv *store, cfg Config, ports portalloc.Range, relay Relay, now *time.Time) *edge {
	t.Helper()
	a, err := portalloc.New(ports, 10*time.Second, func() time.Time { return *now })
	if err != nil {
		t.Fatal(err)
	}
	e := &edge{t: t, kv: kv, ports: allocPorts{a}}
	e.s = New(cfg, e.ports, relay, zerolog.Nop())
	for _, b := range []Bucket{RoutesBucket, EndpointsBucket, EdgesBucket} {
		snap := map[string]Entry{}
		for k, en := range kv.live[b] {
			snap[k] = en
		}
		e.s.Observe(Input{Bucket: b, Snapshot: snap, At: *now})
	}
	e.read = len(kv.log)
	return e
}

// watch delivers the changes since the last call, and reports whether one calls for a pass.
func (e *edge) watch(at time.Time) bool {
	changed := false
	for ; e.read < len(e.kv.log); e.read++ {
		c := e.kv.log[e.read]
		changed = e.s.Observe(Input{Bucket: c.bucket, Entry: c.entry, At: at}) || changed
	}
	return changed
}

// passResult is what one pass planned, wrote and reported.
type passResult struct {
	plan   *Plan
	lost   []string
	writes []Write
	commit Commit
}

// events are the pass's events of kind k, by key.
func (r passResult) events(k EventKind) map[string]Event {
	out := map[string]Event{}
	for _, ev := range append(append([]Event{}, r.plan.Events...), r.commit.Events...) {
		if ev.Kind == k {
			out[ev.Key] = ev
		}
	}
	return out
}

// pass runs one pass at now the way the executor does, with the claims written before the
// endpoints and the endpoint writes' results handed back at once.
func (e *edge) pass(now time.Time) passResult {
	e.watch(now)
	p := e.s.Plan(now, e.drain)
	return e.finish(p)
}

func (e *edge) finish(p *Plan) passResult {
	var claims []WriteResult
	for _, w := range p.Claims {
		claims = append(claims, e.kv.apply(e.t, w))
	}
	r := passResult{plan: p, lost: e.s.Claimed(p, claims)}
	r.writes = e.s.Publish(p, nil)
	var results []WriteResult
	for _, w := range r.writes {
		if e.fail {
			results = append(results, WriteResult{Write: w, Result: Failed})
			continue
		}
		results = append(results, e.kv.apply(e.t, w))
	}
	r.commit = e.s.Commit(p, p.now, nil)
	e.s.Written(results)
	return r
}

func encode(t *testing.T, m proto.Message) []byte {
	t.Helper()
	v, err := wire.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func poolRoute(session string, media ...string) *livegatev1.Route {
	return &livegatev1.Route{SessionId: session, SignalingBackend: "127.0.0.1:30000", MediaBackends: media, Pool: "default"}
}

func edgeRoute(edgeID, session string, media ...string) *livegatev1.Route {
	return &livegatev1.Route{SessionId: session, SignalingBackend: "127.0.0.1:30000", MediaBackends: media, EdgeId: edgeID}
}

func leased(r *livegatev1.Route, lease time.Duration) *livegatev1.Route {
	r.LeaseTtl = durationpb.New(lease)
	return r
}

func edgeConfig(id string) Config {
	c := testConfig()
	c.EdgeID, c.PublicHost, c.PublicIP, c.SignalingPort = id, id+".example.test", "198.18.1.1", 48322
	return c
}

// endpointIn reads key's endpoint from the store (nil: none).
func endpointIn(t *testing.T, kv *store, key string) *livegatev1.Endpoint {
	t.Helper()
	e, ok := kv.live[EndpointsBucket][key]
	if !ok {
		return nil
	}
	var pb livegatev1.Endpoint
	if err := wire.Unmarshal(e.Value, &pb); err != nil {
		t.Fatal(err)
	}
	return &pb
}
