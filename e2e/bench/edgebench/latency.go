package edgebench

import (
	"context"
	"fmt"
	"math"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/livegate/livegate/e2e/bench/stats"
	"github.com/livegate/livegate/e2e/internal/netns"
	"github.com/livegate/livegate/pkg/kvstore"
)

// ChurnOptions shape the route latency run.
type ChurnOptions struct {
	Held     int           // routes live before and during the churn
	Rate     int           // new routes per second, and as many ended
	Duration time.Duration // length of the churn
	Timeout  time.Duration // a route not routable within this counts as failed
	// First is the index of the first route the run writes; a second run on the same edge
	// starts past the first's, so that no key is reused.
	First int
}

// ChurnResult holds, per new route, the time from the KV write until it was routable (map
// entry found and UDP probe echoed through the DNAT), and until its endpoint was published;
// per ended route that had been probed, the time from its KV delete until it was unroutable
// (map entry gone, and neither the DNAT map element nor the probed flow's conntrack entry left).
type ChurnResult struct {
	Routable, Endpoint stats.Durations
	Failures           int
	Added, Ended       int
	FirstErr           error
	Unroutable         stats.Durations
	UnroutableFailures int
	FirstUnroutableErr error
	// Next is the index after the last route the run wrote.
	Next int
	// EdgeP50 and EdgeP99 are the edge's own livegate_edge_programming_seconds over the churn
	// (bucket upper bounds, seconds; NaN when unavailable).
	EdgeP50, EdgeP99 float64
	// Breakdown is where the routes' time went; it needs the edge at log level debug.
	Breakdown Breakdown
}

// probed is a routable route's echoed flow, kept open until the route ends.
type probed struct {
	conn   *net.UDPConn
	public netip.AddrPort
}

// Churn keeps Held routes live while adding and ending Rate routes per second, then ends the
// routes still held, so that another run on the same edge starts from the same count.
func (e *Env) Churn(ctx context.Context, o ChurnOptions) (ChurnResult, error) {
	res := ChurnResult{Next: o.First}
	ttl := 5 * time.Minute
	eps := e.WatchEndpoints(ctx)
	for i := o.First; i < o.First+o.Held; i++ {
		if err := e.PutRoute(ctx, i, ttl); err != nil {
			return res, fmt.Errorf("seed route %d: %w", i, err)
		}
	}
	res.Next = o.First + o.Held
	seedDeadline := time.Now().Add(30 * time.Second)
	for i := o.First; i < o.First+o.Held; i++ {
		if _, _, err := eps.Wait(ctx, RouteKey(i), time.Until(seedDeadline)); err != nil {
			return res, fmt.Errorf("seed: %w", err)
		}
	}

	before, _ := e.Metrics(ctx)
	var mu sync.Mutex
	var wg sync.WaitGroup
	seen := map[string]routeTimes{}
	flows := map[int]probed{}
	kv := e.watchRoutes(ctx)
	record := func(i int, start time.Time, routable, endpoint time.Duration, flow probed, err error) {
		mu.Lock()
		defer mu.Unlock()
		if at, ok := kv.at(RouteKey(i)); ok && err == nil {
			seen[RouteKey(i)] = routeTimes{kvSeen: at.Sub(start), endpoint: endpoint, routable: routable}
		}
		if err != nil {
			countFailure(&res.Failures, &res.FirstErr, err)
			return
		}
		res.Routable = append(res.Routable, routable)
		res.Endpoint = append(res.Endpoint, endpoint)
		flows[i] = flow
	}
	recordEnd := func(d time.Duration, err error) {
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			countFailure(&res.UnroutableFailures, &res.FirstUnroutableErr, err)
			return
		}
		res.Unroutable = append(res.Unroutable, d)
	}
	end := func(i int) {
		mu.Lock()
		flow, ok := flows[i]
		delete(flows, i)
		mu.Unlock()
		start := time.Now()
		if err := e.DeleteRoute(ctx, i); err != nil {
			if ok {
				_ = flow.conn.Close()
			}
			return
		}
		res.Ended++
		if !ok {
			return
		}
		wg.Go(func() {
			defer flow.conn.Close()
			d, err := e.waitUnroutable(ctx, flow, i, start, o.Timeout)
			recordEnd(d, err)
		})
	}
	tick := time.NewTicker(time.Second / time.Duration(o.Rate))
	defer tick.Stop()
	oldest := o.First
	stop := time.Now().Add(o.Duration)
	for time.Now().Before(stop) && ctx.Err() == nil {
		<-tick.C
		i := res.Next
		res.Next++
		start := time.Now()
		if err := e.PutRoute(ctx, i, ttl); err != nil {
			record(i, start, 0, 0, probed{}, err)
			continue
		}
		res.Added++
		wg.Go(func() {
			r, ep, flow, err := e.waitRoutable(ctx, eps, i, start, o.Timeout)
			record(i, start, r, ep, flow, err)
		})
		end(oldest)
		oldest++
	}
	wg.Wait()
	after, err := e.Metrics(ctx)
	res.EdgeP50, res.EdgeP99 = math.NaN(), math.NaN()
	if err == nil {
		res.EdgeP50 = HistogramQuantile(programmingSeconds, before, after, 0.5)
		res.EdgeP99 = HistogramQuantile(programmingSeconds, before, after, 0.99)
	}
	if passes, err := parsePasses(strings.NewReader(e.EdgeP.Output())); err == nil {
		res.Breakdown = breakdown(seen, passes)
	}
	for _, f := range flows {
		_ = f.conn.Close()
	}
	for i := oldest; i < res.Next; i++ {
		_ = e.DeleteRoute(ctx, i)
	}
	return res, nil
}

// waitUnroutable waits until HAProxy's map no longer has route i's session and its probed flow
// goes unanswered; the route is unroutable when both hold.
func (e *Env) waitUnroutable(ctx context.Context, flow probed, i int, start time.Time, timeout time.Duration) (time.Duration, error) {
	deadline := start.Add(timeout)
	mapDone := e.pollMap(ctx, i, false, deadline, timeout)
	udpAt, udpErr := udpGone(ctx, flow.conn, flow.public, deadline)
	m := <-mapDone
	if m.err != nil {
		return 0, m.err
	}
	if udpErr != nil {
		return 0, fmt.Errorf("route %s: %w", RouteKey(i), udpErr)
	}
	return later(udpAt, m.at).Sub(start), nil
}

// mapSeen is when HAProxy's map was seen to hold (or no longer hold) a session, or why not.
type mapSeen struct {
	at  time.Time
	err error
}

// pollMap polls HAProxy's map until it holds route i's session (present) or no longer does
// (!present), and answers once on the returned channel: the time it saw it, or an error at the
// deadline or when ctx ends.
func (e *Env) pollMap(ctx context.Context, i int, present bool, deadline time.Time, timeout time.Duration) <-chan mapSeen {
	done := make(chan mapSeen, 1)
	go func() {
		for {
			ok, err := e.MapHas(ctx, SessionID(i))
			if err == nil && ok == present {
				done <- mapSeen{at: time.Now()}
				return
			}
			if time.Now().After(deadline) || ctx.Err() != nil {
				if present {
					err = fmt.Errorf("route %s: not in HAProxy's map within %s (last error %v)", RouteKey(i), timeout, err)
				} else {
					err = fmt.Errorf("route %s: still in HAProxy's map %s after it ended (last error %v)", RouteKey(i), timeout, err)
				}
				done <- mapSeen{err: err}
				return
			}
			// Every in-flight route polls the same runtime socket the edge programs through:
			// polling faster would mostly measure the bench's own load on HAProxy and the cores.
			time.Sleep(mapPollInterval)
		}
	}()
	return done
}

// later is the later of two times.
func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// countFailure counts a failed measure and keeps the first error.
func countFailure(n *int, first *error, err error) {
	*n++
	if *first == nil {
		*first = err
	}
}

// routeWatch remembers when the bench's own watch of the routes bucket first saw each key.
type routeWatch struct {
	mu   sync.Mutex
	seen map[string]time.Time
}

func (e *Env) watchRoutes(ctx context.Context) *routeWatch {
	w := &routeWatch{seen: map[string]time.Time{}}
	take := func(en kvstore.Entry) {
		now := time.Now()
		w.mu.Lock()
		defer w.mu.Unlock()
		if _, ok := w.seen[en.Key]; !ok && !en.Deleted {
			w.seen[en.Key] = now
		}
	}
	go func() {
		_ = kvstore.Watch(ctx, e.Buckets.Routes, ">", kvstore.Handler{
			Snapshot: func(m map[string]kvstore.Entry) {
				for _, en := range m {
					take(en)
				}
			},
			Update: take,
		})
	}()
	return w
}

func (w *routeWatch) at(key string) (time.Time, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	t, ok := w.seen[key]
	return t, ok
}

const programmingSeconds = "livegate_edge_programming_seconds"

// mapPollInterval is how often a route waiting to be routable asks HAProxy for it: the figures
// are at most this much late.
const mapPollInterval = time.Millisecond

// waitRoutable polls HAProxy's map for the session and, once the endpoint names the public
// port, probes the DNAT; the route is routable when both hold. The echoed flow is returned
// open, for the measure of the route's end.
func (e *Env) waitRoutable(ctx context.Context, eps *Endpoints, i int, start time.Time, timeout time.Duration) (routable, endpoint time.Duration, flow probed, err error) {
	key := RouteKey(i)
	deadline := start.Add(timeout)
	mapDone := e.pollMap(ctx, i, true, deadline, timeout)
	port, epAt, err := eps.Wait(ctx, key, time.Until(deadline))
	if err != nil {
		<-mapDone
		return 0, 0, probed{}, err
	}
	public := netip.AddrPortFrom(netns.EdgePublic, port)
	c, err := e.probeConn(ctx, public, time.Until(deadline))
	if err != nil {
		<-mapDone
		return 0, 0, probed{}, fmt.Errorf("route %s: %w", key, err)
	}
	udpAt := time.Now()
	m := <-mapDone
	if m.err != nil {
		_ = c.Close()
		return 0, 0, probed{}, m.err
	}
	return later(udpAt, m.at).Sub(start), epAt.Sub(start), probed{conn: c, public: public}, nil
}
