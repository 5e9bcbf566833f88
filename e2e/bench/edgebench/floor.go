package edgebench

import (
	"context"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/livegate/livegate/e2e/bench/stats"
	"github.com/livegate/livegate/e2e/internal/netns"
	"github.com/livegate/livegate/pkg/kvstore"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// FloorResult is the measure's own floor: per sample, what the churn's route would cost if the
// edge did nothing but write the endpoint, by phase.
type FloorResult struct {
	Total, KV, Write, Watch, Probe stats.Durations
	Failures                       int
	FirstErr                       error
}

// String prints the floor and its phases as p50/p99.
func (f FloorResult) String() string {
	pp := func(d stats.Durations) string {
		return stats.FormatDuration(d.Percentile(50)) + "/" + stats.FormatDuration(d.Percentile(99))
	}
	s := fmt.Sprintf("p50=%s p99=%s (n=%d, failed %d; p50/p99 kv watch %s, endpoint write %s, endpoint watch %s, probe %s)",
		stats.FormatDuration(f.Total.Percentile(50)), stats.FormatDuration(f.Total.Percentile(99)), len(f.Total), f.Failures,
		pp(f.KV), pp(f.Write), pp(f.Watch), pp(f.Probe))
	if f.FirstErr != nil {
		s += "; first failure: " + f.FirstErr.Error()
	}
	return s
}

// floorBucket names the floor's buckets: livegate's own, with this prefix.
const floorBucket = "lgbfloor_"

// Floor measures what the churn's figure of a route costs before the edge does any work of its
// own, on the same NATS server, namespaces and probe path: the bench writes a key the way it
// writes a route; a stand-in edge, dialled from the edge namespace like the edge, writes an
// endpoint the moment its watch delivers that key, the way the edge writes a route's endpoint;
// once the bench's watch delivers the endpoint it probes a public port the edge already
// forwards (route index held). Two KV round trips and the probe, n times at rate per second.
func (e *Env) Floor(ctx context.Context, held, n, rate int) (FloorResult, error) {
	var res FloorResult
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if err := e.PutRoute(ctx, held, 5*time.Minute); err != nil {
		return res, fmt.Errorf("floor: route to probe: %w", err)
	}
	defer func() { _ = e.DeleteRoute(context.WithoutCancel(ctx), held) }()
	port, _, err := e.WatchEndpoints(ctx).Wait(ctx, RouteKey(held), 30*time.Second)
	if err != nil {
		return res, fmt.Errorf("floor: route to probe: %w", err)
	}
	public := netip.AddrPortFrom(netns.EdgePublic, port)

	cfgs := kvstore.Configs()
	routesCfg, endpointsCfg := cfgs[0], cfgs[1]
	routesCfg.Bucket, endpointsCfg.Bucket = floorBucket+"routes", floorBucket+"endpoints"
	if _, err := e.JS.CreateOrUpdateKeyValue(ctx, routesCfg); err != nil {
		return res, fmt.Errorf("floor: bucket: %w", err)
	}
	defer func() { _ = e.JS.DeleteKeyValue(context.WithoutCancel(ctx), routesCfg.Bucket) }()
	endpoints, err := e.JS.CreateOrUpdateKeyValue(ctx, endpointsCfg)
	if err != nil {
		return res, fmt.Errorf("floor: bucket: %w", err)
	}
	defer func() { _ = e.JS.DeleteKeyValue(context.WithoutCancel(ctx), endpointsCfg.Bucket) }()

	standIn, err := nats.Connect(natsURL, nats.SetCustomDialer(e.Topo.Edge.Dialer(2*time.Second)), nats.Name("livegate-bench-floor"))
	if err != nil {
		return res, fmt.Errorf("floor: stand-in edge: %w", err)
	}
	defer standIn.Close()
	sjs, err := jetstream.New(standIn)
	if err != nil {
		return res, fmt.Errorf("floor: stand-in edge: %w", err)
	}
	sroutes, err := sjs.KeyValue(ctx, routesCfg.Bucket)
	if err != nil {
		return res, fmt.Errorf("floor: stand-in edge: %w", err)
	}
	sendpoints, err := sjs.KeyValue(ctx, endpointsCfg.Bucket)
	if err != nil {
		return res, fmt.Errorf("floor: stand-in edge: %w", err)
	}

	// The stand-in reports when its watch delivered each key and when its endpoint write
	// returned; the bench's watch when it delivered the endpoint.
	type times struct {
		standIn  chan [2]time.Time
		endpoint chan time.Time
	}
	var mu sync.Mutex
	waiting := map[string]times{}
	lookup := func(key string) times {
		mu.Lock()
		defer mu.Unlock()
		return waiting[key]
	}
	value := make([]byte, 160) // about an endpoint's size
	ready := make(chan struct{}, 2)
	go func() {
		_ = kvstore.Watch(ctx, sroutes, ">", kvstore.Handler{
			Snapshot: func(map[string]kvstore.Entry) { ready <- struct{}{} },
			Update: func(en kvstore.Entry) {
				if en.Deleted {
					return
				}
				at := time.Now()
				_, err := sendpoints.Create(ctx, en.Key, value)
				done := time.Now()
				if w := lookup(en.Key); err == nil && w.standIn != nil {
					w.standIn <- [2]time.Time{at, done}
				}
			},
		})
	}()
	go func() {
		_ = kvstore.Watch(ctx, endpoints, ">", kvstore.Handler{
			Snapshot: func(map[string]kvstore.Entry) { ready <- struct{}{} },
			Update: func(en kvstore.Entry) {
				if en.Deleted {
					return
				}
				at := time.Now()
				if w := lookup(en.Key); w.endpoint != nil {
					w.endpoint <- at
				}
			},
		})
	}()
	for range 2 {
		select {
		case <-ready:
		case <-time.After(10 * time.Second):
			return res, fmt.Errorf("floor: watches not started within 10s")
		case <-ctx.Done():
			return res, ctx.Err()
		}
	}

	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	fail := func(err error) { countFailure(&res.Failures, &res.FirstErr, err) }
	for i := range n {
		<-tick.C
		key := "f" + strconv.Itoa(i)
		w := times{standIn: make(chan [2]time.Time, 1), endpoint: make(chan time.Time, 1)}
		mu.Lock()
		waiting[key] = w
		mu.Unlock()
		start := time.Now()
		if _, err := kvstore.PutTTL(ctx, e.JS, routesCfg.Bucket, key, value, 5*time.Minute); err != nil {
			fail(err)
			continue
		}
		var epAt time.Time
		select {
		case epAt = <-w.endpoint:
		case <-time.After(5 * time.Second):
			fail(fmt.Errorf("floor key %s: no endpoint within 5s", key))
			continue
		}
		c, err := probeFrom(ctx, e.Topo.Client, public, time.Now().Add(5*time.Second))
		if err != nil {
			fail(err)
			continue
		}
		end := time.Now()
		_ = c.Close()
		var si [2]time.Time
		select {
		case si = <-w.standIn:
		case <-time.After(5 * time.Second):
			fail(fmt.Errorf("floor key %s: the stand-in's write did not return within 5s", key))
			continue
		}
		mu.Lock()
		delete(waiting, key)
		mu.Unlock()
		seen, written := si[0], si[1]
		res.Total = append(res.Total, end.Sub(start))
		res.KV = append(res.KV, seen.Sub(start))
		res.Write = append(res.Write, written.Sub(seen))
		res.Watch = append(res.Watch, max(epAt.Sub(written), 0))
		res.Probe = append(res.Probe, end.Sub(epAt))
	}
	if len(res.Total) == 0 {
		return res, fmt.Errorf("floor: no sample: %s", strings.TrimSpace(fmt.Sprint(res.FirstErr)))
	}
	return res, nil
}
