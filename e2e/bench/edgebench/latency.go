package edgebench

import (
	"context"
	"fmt"
	"math"
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
}

// ChurnResult holds, per new route, the time from the KV write until it was routable (map
// entry found and UDP probe echoed through the DNAT), and until its endpoint was published.
type ChurnResult struct {
	Routable, Endpoint stats.Durations
	Failures           int
	Added, Ended       int
	FirstErr           error
	// EdgeP50 and EdgeP99 are the edge's own livegate_edge_programming_seconds over the churn
	// (bucket upper bounds, seconds; NaN when unavailable).
	EdgeP50, EdgeP99 float64
	// Breakdown is where the routes' time went; it needs the edge at log level debug.
	Breakdown Breakdown
}

// Churn keeps Held routes live while adding and ending Rate routes per second.
func (e *Env) Churn(ctx context.Context, o ChurnOptions) (ChurnResult, error) {
	var res ChurnResult
	ttl := 5 * time.Minute
	eps := e.WatchEndpoints(ctx)
	for i := range o.Held {
		if err := e.PutRoute(ctx, i, ttl); err != nil {
			return res, fmt.Errorf("seed route %d: %w", i, err)
		}
	}
	seedDeadline := time.Now().Add(30 * time.Second)
	for eps.Count() < o.Held {
		if time.Now().After(seedDeadline) {
			return res, fmt.Errorf("seed: %d of %d endpoints published after 30s", eps.Count(), o.Held)
		}
		time.Sleep(20 * time.Millisecond)
	}

	before, _ := e.Metrics(ctx)
	var mu sync.Mutex
	var wg sync.WaitGroup
	seen := map[string]routeTimes{}
	kv := e.watchRoutes(ctx)
	record := func(i int, start time.Time, routable, endpoint time.Duration, err error) {
		mu.Lock()
		defer mu.Unlock()
		if at, ok := kv.at(RouteKey(i)); ok && err == nil {
			seen[RouteKey(i)] = routeTimes{kvSeen: at.Sub(start), endpoint: endpoint, routable: routable}
		}
		if err != nil {
			res.Failures++
			if res.FirstErr == nil {
				res.FirstErr = err
			}
			return
		}
		res.Routable = append(res.Routable, routable)
		res.Endpoint = append(res.Endpoint, endpoint)
	}
	tick := time.NewTicker(time.Second / time.Duration(o.Rate))
	defer tick.Stop()
	oldest, next := 0, o.Held
	end := time.Now().Add(o.Duration)
	for time.Now().Before(end) && ctx.Err() == nil {
		<-tick.C
		i := next
		next++
		start := time.Now()
		if err := e.PutRoute(ctx, i, ttl); err != nil {
			record(i, start, 0, 0, err)
			continue
		}
		res.Added++
		wg.Go(func() {
			r, ep, err := e.waitRoutable(ctx, eps, i, start, o.Timeout)
			record(i, start, r, ep, err)
		})
		if err := e.DeleteRoute(ctx, oldest); err == nil {
			res.Ended++
		}
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
	return res, nil
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
// port, probes the DNAT; the route is routable when both hold.
func (e *Env) waitRoutable(ctx context.Context, eps *Endpoints, i int, start time.Time, timeout time.Duration) (routable, endpoint time.Duration, err error) {
	key := RouteKey(i)
	deadline := start.Add(timeout)
	var mapAt time.Time
	mapDone := make(chan error, 1)
	go func() {
		for {
			ok, err := e.MapHas(ctx, SessionID(i))
			if err == nil && ok {
				mapAt = time.Now()
				mapDone <- nil
				return
			}
			if time.Now().After(deadline) {
				mapDone <- fmt.Errorf("route %s: not in HAProxy's map within %s (last error %v)", key, timeout, err)
				return
			}
			// Every in-flight route polls the same runtime socket the edge programs through:
			// polling faster would mostly measure the bench's own load on HAProxy and the cores.
			time.Sleep(mapPollInterval)
		}
	}()
	port, epAt, err := eps.Wait(ctx, key, time.Until(deadline))
	if err != nil {
		<-mapDone
		return 0, 0, err
	}
	if err := e.Probe(ctx, netip.AddrPortFrom(netns.EdgePublic, port), time.Until(deadline)); err != nil {
		<-mapDone
		return 0, 0, fmt.Errorf("route %s: %w", key, err)
	}
	udpAt := time.Now()
	if err := <-mapDone; err != nil {
		return 0, 0, err
	}
	last := udpAt
	if mapAt.After(last) {
		last = mapAt
	}
	return last.Sub(start), epAt.Sub(start), nil
}
