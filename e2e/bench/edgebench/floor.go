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
	if n < 1 || rate < 1 {
		return res, fmt.Errorf("floor: %d samples at %d a second", n, rate)
	}
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
	// returned, or how it failed; the bench's watch when it delivered the endpoint.
	type written struct {
		seen, done time.Time
		err        error
	}
	type times struct {
		standIn  chan written
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
	// A watch may deliver its snapshot again after a re-watch: each signals its first only.
	ready := make(chan struct{}, 2)
	started := func() func(map[string]kvstore.Entry) {
		var once sync.Once
		return func(map[string]kvstore.Entry) { once.Do(func() { ready <- struct{}{} }) }
	}
	// The watches end before the stand-in's connection closes and the buckets go.
	wctx, stopWatches := context.WithCancel(ctx)
	var watches sync.WaitGroup
	defer func() {
		stopWatches()
		watches.Wait()
	}()
	// puts runs fn on each key put in kv, with when the watch delivered it.
	puts := func(kv jetstream.KeyValue, fn func(key string, at time.Time)) {
		watches.Go(func() {
			_ = kvstore.Watch(wctx, kv, ">", kvstore.Handler{
				Snapshot: started(),
				Update: func(en kvstore.Entry) {
					if !en.Deleted {
						fn(en.Key, time.Now())
					}
				},
			})
		})
	}
	puts(sroutes, func(key string, at time.Time) {
		_, err := sendpoints.Create(wctx, key, value)
		if w := lookup(key); w.standIn != nil {
			w.standIn <- written{seen: at, done: time.Now(), err: err}
		}
	})
	puts(endpoints, func(key string, at time.Time) {
		if w := lookup(key); w.endpoint != nil {
			w.endpoint <- at
		}
	})
	for range 2 {
		select {
		case <-ready:
		case <-time.After(10 * time.Second):
			return res, fmt.Errorf("floor: watches not started within 10s")
		case <-ctx.Done():
			return res, ctx.Err()
		}
	}

	// A floor that keeps failing says why and stops, rather than waiting out every sample.
	const maxFailuresInARow = 10
	inARow := 0
	fail := func(err error) {
		countFailure(&res.Failures, &res.FirstErr, err)
		inARow++
	}
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	for i := 0; i < n && inARow < maxFailuresInARow; i++ {
		select {
		case <-tick.C:
		case <-ctx.Done():
			return res, ctx.Err()
		}
		// Keys are the call's own: a bucket left by an earlier call cannot refuse them.
		key := "f" + strconv.Itoa(held) + "-" + strconv.Itoa(i)
		w := times{standIn: make(chan written, 1), endpoint: make(chan time.Time, 1)}
		mu.Lock()
		waiting[key] = w
		mu.Unlock()
		sample := func() error {
			defer func() {
				mu.Lock()
				delete(waiting, key)
				mu.Unlock()
			}()
			start := time.Now()
			if _, err := kvstore.PutTTL(ctx, e.JS, routesCfg.Bucket, key, value, 5*time.Minute); err != nil {
				return err
			}
			var epAt time.Time
			select {
			case epAt = <-w.endpoint:
			case si := <-w.standIn:
				if si.err != nil {
					return fmt.Errorf("floor key %s: the stand-in's endpoint write: %w", key, si.err)
				}
				w.standIn <- si
				select {
				case epAt = <-w.endpoint:
				case <-time.After(5 * time.Second):
					return fmt.Errorf("floor key %s: no endpoint within 5s of its write", key)
				}
			case <-time.After(5 * time.Second):
				return fmt.Errorf("floor key %s: no endpoint within 5s", key)
			}
			c, err := probeFrom(ctx, e.Topo.Client, public, time.Now().Add(5*time.Second))
			if err != nil {
				return err
			}
			end := time.Now()
			_ = c.Close()
			var si written
			select {
			case si = <-w.standIn:
			case <-time.After(5 * time.Second):
				return fmt.Errorf("floor key %s: the stand-in's write did not return within 5s", key)
			}
			res.Total = append(res.Total, end.Sub(start))
			res.KV = append(res.KV, si.seen.Sub(start))
			res.Write = append(res.Write, si.done.Sub(si.seen))
			res.Watch = append(res.Watch, max(epAt.Sub(si.done), 0))
			res.Probe = append(res.Probe, end.Sub(epAt))
			return nil
		}
		if err := sample(); err != nil {
			fail(err)
			continue
		}
		inARow = 0
	}
	if len(res.Total) == 0 {
		return res, fmt.Errorf("floor: no sample: %s", strings.TrimSpace(fmt.Sprint(res.FirstErr)))
	}
	return res, nil
}
