package scalebench

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/livegate/livegate/e2e/bench/edgebench"
	"github.com/livegate/livegate/e2e/internal/stack"
	"github.com/livegate/livegate/pkg/kvstore"
	"github.com/livegate/livegate/pkg/natsconn"
	"github.com/livegate/livegate/pkg/wire"
	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// The agent's publisher: a write times out after callTimeout and is retried after routeRetry.
const (
	callTimeout = 5 * time.Second
	routeRetry  = time.Second
)

// leaseTTL outlasts the whole benchmark, so no simulated session needs renewing: a renewal is a
// route write of the same size, and its cost follows from the traffic per route change.
const leaseTTL = 10 * time.Minute

// routeValue is what an agent's publisher writes for session i: a pool route (no edge named), so
// the pool's edges claim it; its backends are on the node, where the echo answers.
func routeValue(i int) ([]byte, error) {
	return edgebench.RouteValue(i, nodeLAN, "", pool, leaseTTL)
}

// agents are the simulated agents' NATS connections, one per server of the deployment as agents
// spread over a cluster; session i writes through agents[i%len].
type agents struct {
	conns  []*nats.Conn
	js     []jetstream.JetStream
	routes []jetstream.KeyValue
}

func (d *deployment) agents(ctx context.Context) (*agents, error) {
	a := &agents{}
	for _, s := range d.servers {
		nc, err := d.connect(ctx, "livegate-agent/sim-"+s.Name, s)
		if err != nil {
			a.close()
			return nil, err
		}
		a.conns = append(a.conns, nc)
		js, err := jetstream.New(nc)
		if err != nil {
			a.close()
			return nil, err
		}
		a.js = append(a.js, js)
		kv, err := js.KeyValue(ctx, kvstore.RoutesBucket)
		if err != nil {
			a.close()
			return nil, fmt.Errorf("routes bucket: %w", err)
		}
		a.routes = append(a.routes, kv)
	}
	return a, nil
}

func (a *agents) close() {
	for _, nc := range a.conns {
		nc.Close()
	}
}

// put writes session i's route as the publisher does, retrying until it lands or giveUp passes.
func (a *agents) put(ctx context.Context, i int, giveUp time.Time) error {
	val, err := routeValue(i)
	if err != nil {
		return err
	}
	return retry(ctx, giveUp, func(cctx context.Context) error {
		_, err := kvstore.PutTTL(cctx, a.js[i%len(a.js)], kvstore.RoutesBucket, edgebench.RouteKey(i), val, leaseTTL)
		return err
	})
}

// del ends session i's route, retrying likewise.
func (a *agents) del(ctx context.Context, i int, giveUp time.Time) error {
	return retry(ctx, giveUp, func(cctx context.Context) error {
		err := a.routes[i%len(a.routes)].Delete(cctx, edgebench.RouteKey(i))
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return nil
		}
		return err
	})
}

func retry(ctx context.Context, giveUp time.Time, f func(context.Context) error) error {
	for {
		cctx, cancel := context.WithTimeout(ctx, callTimeout)
		err := f(cctx)
		cancel()
		if err == nil || ctx.Err() != nil || time.Now().Add(routeRetry).After(giveUp) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(routeRetry):
		}
	}
}

// endpoint is a route's published endpoint as the bench first saw it.
type endpoint struct {
	edge string
	port uint16
	at   time.Time
}

// endpoints follows livegate_endpoints from the bench's own connection.
type endpoints struct {
	kv      jetstream.KeyValue
	mu      sync.Mutex
	seen    map[string]endpoint
	perEdge map[string]int
	// last is when each edge's latest new endpoint was seen.
	last map[string]time.Time
	// moved counts endpoints of a live route that changed edge: a route served twice in turn.
	moved   int
	waiters map[string][]chan endpoint
	// lapsed counts, per edge, its heartbeat key expiring or deleted in livegate_edges: the pool's
	// other edges then take it for gone and may claim its routes over.
	lapsed map[string]int
}

func (d *deployment) watchEndpoints(ctx context.Context) *endpoints {
	w := &endpoints{kv: d.kv.Endpoints, seen: map[string]endpoint{}, perEdge: map[string]int{}, last: map[string]time.Time{}, waiters: map[string][]chan endpoint{}, lapsed: map[string]int{}}
	go func() {
		_ = kvstore.Watch(ctx, d.kv.Edges, ">", kvstore.Handler{
			Snapshot: func(map[string]kvstore.Entry) {},
			Update: func(en kvstore.Entry) {
				if en.Deleted {
					w.mu.Lock()
					w.lapsed[en.Key]++
					w.mu.Unlock()
				}
			},
			Restart: natsconn.Reconnects(d.nc),
		})
	}()
	go func() {
		_ = kvstore.Watch(ctx, d.kv.Endpoints, ">", kvstore.Handler{
			Snapshot: func(m map[string]kvstore.Entry) {
				for _, en := range m {
					w.take(en)
				}
			},
			Update:  w.take,
			Restart: natsconn.Reconnects(d.nc),
		})
	}()
	return w
}

func (w *endpoints) take(en kvstore.Entry) {
	now := time.Now()
	w.mu.Lock()
	defer w.mu.Unlock()
	old, had := w.seen[en.Key]
	if en.Deleted {
		if had {
			w.perEdge[old.edge]--
			delete(w.seen, en.Key)
		}
		return
	}
	var ep livegatev1.Endpoint
	if err := wire.Unmarshal(en.Value, &ep); err != nil || len(ep.GetPublicUdpPorts()) == 0 {
		return
	}
	if had {
		if old.edge != ep.GetEdgeId() {
			w.moved++
			w.perEdge[old.edge]--
			w.perEdge[ep.GetEdgeId()]++
			w.seen[en.Key] = endpoint{edge: ep.GetEdgeId(), port: uint16(ep.GetPublicUdpPorts()[0]), at: old.at}
		}
		return
	}
	e := endpoint{edge: ep.GetEdgeId(), port: uint16(ep.GetPublicUdpPorts()[0]), at: now}
	w.seen[en.Key] = e
	w.perEdge[e.edge]++
	w.last[e.edge] = now
	for _, ch := range w.waiters[en.Key] {
		ch <- e
	}
	delete(w.waiters, en.Key)
}

func (w *endpoints) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.seen)
}

// snapshot copies the per-edge counts, the time of each edge's latest new endpoint and the
// lapses of each edge's heartbeat.
func (w *endpoints) snapshot() (per map[string]int, last map[string]time.Time, lapsed map[string]int, moved int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return maps.Clone(w.perEdge), maps.Clone(w.last), maps.Clone(w.lapsed), w.moved
}

// fallbackPoll is how often a route still waiting reads its endpoint directly: the bench's own
// watch stalls like any other while a stream's leader is re-elected, and must not be what the
// figure measures. A route seen this way is timed at most this late.
const fallbackPoll = 500 * time.Millisecond

// wait returns key's endpoint, from the watch or by reading it.
func (w *endpoints) wait(ctx context.Context, key string, deadline time.Time) (endpoint, error) {
	w.mu.Lock()
	if e, ok := w.seen[key]; ok {
		w.mu.Unlock()
		return e, nil
	}
	ch := make(chan endpoint, 1)
	w.waiters[key] = append(w.waiters[key], ch)
	w.mu.Unlock()
	tick := time.NewTicker(fallbackPoll)
	defer tick.Stop()
	for {
		select {
		case e := <-ch:
			return e, nil
		case <-tick.C:
			if time.Now().After(deadline) {
				return endpoint{}, fmt.Errorf("endpoint %s: none by the deadline", key)
			}
			cctx, cancel := context.WithTimeout(ctx, fallbackPoll)
			en, err := w.kv.Get(cctx, key)
			cancel()
			if err != nil {
				continue
			}
			var ep livegatev1.Endpoint
			if wire.Unmarshal(en.Value(), &ep) == nil && len(ep.GetPublicUdpPorts()) > 0 {
				return endpoint{edge: ep.GetEdgeId(), port: uint16(ep.GetPublicUdpPorts()[0]), at: time.Now()}, nil
			}
		case <-ctx.Done():
			return endpoint{}, ctx.Err()
		}
	}
}

func (d *deployment) edgeByID(id string) *edge {
	for _, g := range d.edges {
		if g.ID == id {
			return g
		}
	}
	return nil
}

// dnatPorts counts the public ports the edge's DNAT map forwards.
func (g *edge) dnatPorts(ctx context.Context) (int, error) {
	m, err := stack.DNATMap(ctx, g.NS)
	return len(m), err
}

// metrics reads the edge's /metrics.
func (g *edge) metrics(ctx context.Context) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+stack.AdminAddr+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := g.NS.HTTPClient(5 * time.Second).Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s metrics: %w", g.ID, err)
	}
	defer resp.Body.Close()
	return edgebench.ParseMetrics(resp.Body)
}

// probe sends UDP packets from the client namespace to the edge's public port until the node's
// echo answers through the DNAT.
func (d *deployment) probe(ctx context.Context, g *edge, port uint16, deadline time.Time) error {
	return edgebench.Probe(ctx, d.client, netip.AddrPortFrom(edgePublic(g.k), port), deadline)
}

// routable waits for session i's endpoint, then for its session in that edge's HAProxy map and
// its echo through that edge's public port, checked in that order: routable is when both held
// (edgebench's definition; the edge publishes the endpoint after programming both).
func (d *deployment) routable(ctx context.Context, eps *endpoints, i int, deadline time.Time) (ep endpoint, at time.Time, err error) {
	ep, err = eps.wait(ctx, edgebench.RouteKey(i), deadline)
	if err != nil {
		return ep, at, err
	}
	g := d.edgeByID(ep.edge)
	if g == nil {
		return ep, at, fmt.Errorf("route %s: endpoint names edge %q, none of the deployment's", edgebench.RouteKey(i), ep.edge)
	}
	for {
		ok, err := g.HAProxy().MapHas(ctx, edgebench.SessionID(i))
		if err == nil && ok {
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return ep, at, fmt.Errorf("route %s: not in %s's map (last error %v)", edgebench.RouteKey(i), g.ID, err)
		}
		time.Sleep(time.Millisecond)
	}
	if err := d.probe(ctx, g, ep.port, deadline); err != nil {
		return ep, at, fmt.Errorf("route %s on %s: %w", edgebench.RouteKey(i), g.ID, err)
	}
	return ep, time.Now(), nil
}
