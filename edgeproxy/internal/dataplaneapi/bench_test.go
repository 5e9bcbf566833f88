package dataplaneapi_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/livegate/livegate/edgeproxy/internal/dataplaneapi/dpatest"
)

// BenchmarkDataplaneAPIChurn measures what a map change costs through the Data Plane API as the
// map grows, with the fake's force_sync rewriting the whole map file as the real server's does.
// make bench runs it (e2e/bench/suite) and prints each figure against a baseline of the same run:
//
//   - one change at a time, on a map of 6 entries (baseline) and of 9,500;
//   - a churn of 100 changes/s on 9,500 entries, applied as the edge's reconcile loop does (what
//     arrived while a pass ran is the next pass's batch, one force_sync per batch), against the
//     same churn with one force_sync per change (what the driver did before batching).
//
// LIVEGATE_DPA_BENCH_SECONDS sets the churn's duration (default 10).
func BenchmarkDataplaneAPIChurn(b *testing.B) {
	secs := 10
	if v, err := strconv.Atoi(os.Getenv("LIVEGATE_DPA_BENCH_SECONDS")); err == nil && v > 0 {
		secs = v
	}
	const big = 9500
	for b.Loop() {
		small := singleChanges(b, 6, 200)
		large := singleChanges(b, big, 200)
		b.ReportMetric(ms(pct(small, 50)), "single-6-p50-ms")
		b.ReportMetric(ms(pct(small, 99)), "single-6-p99-ms")
		b.ReportMetric(ms(pct(large, 50)), "single-9500-p50-ms")
		b.ReportMetric(ms(pct(large, 99)), "single-9500-p99-ms")
		for _, mode := range []struct {
			name    string
			batched bool
		}{{"batched", true}, {"per-change", false}} {
			lat, backlog, syncs := churn(b, big, 100, time.Duration(secs)*time.Second, mode.batched)
			b.ReportMetric(ms(pct(lat, 50)), mode.name+"-p50-ms")
			b.ReportMetric(ms(pct(lat, 99)), mode.name+"-p99-ms")
			b.ReportMetric(float64(backlog), mode.name+"-backlog-max")
			b.ReportMetric(float64(syncs)/float64(len(lat)), mode.name+"-syncs-per-change")
		}
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func pct(l []time.Duration, p int) time.Duration {
	if len(l) == 0 {
		return 0
	}
	s := slices.Clone(l)
	slices.Sort(s)
	return s[min(len(s)-1, len(s)*p/100)]
}

// benchMap starts the fake with a map of n entries whose force_sync writes the map file.
func benchMap(b *testing.B, n int) (*dpatest.MemoryMaps, *dpatest.Server) {
	maps := dpatest.NewMemoryMaps(mapName)
	maps.WriteFiles(b.TempDir())
	ctx := context.Background()
	for k, v := range routes("s", n) {
		if err := maps.Add(ctx, mapName, k, v); err != nil {
			b.Fatal(err)
		}
	}
	return maps, startAPI(b, dpatest.Options{Maps: maps})
}

// singleChanges re-points one entry after another, each its own Apply.
func singleChanges(b *testing.B, n, changes int) []time.Duration {
	_, srv := benchMap(b, n)
	d := newDriver(b, srv, nil)
	ctx := context.Background()
	out := make([]time.Duration, 0, changes)
	for i := range changes {
		k := fmt.Sprintf("s%05d", i%n)
		began := time.Now()
		if err := d.Apply(ctx, map[string]string{k: fmt.Sprintf("10.1.0.%d:%d", i%250, 30000+i%2000)}, nil); err != nil {
			b.Fatal(err)
		}
		out = append(out, time.Since(began))
	}
	return out
}

// churn offers rate changes per second for d, half adds of new keys and half deletes of keys
// the map holds, and applies them in passes: what waits when a pass starts, in one Apply
// (batched) or one Apply per change. It returns each change's time from arrival to the end of its
// Apply, the largest number of changes waiting at the start of a pass, and the force_syncs made.
func churn(b *testing.B, n, rate int, d time.Duration, batched bool) ([]time.Duration, int, int) {
	maps, srv := benchMap(b, n)
	drv := newDriver(b, srv, nil)
	ctx := context.Background()
	type change struct {
		key, value string
		del        bool
		at         time.Time
	}
	var (
		mu      sync.Mutex
		waiting []change
		wake    = make(chan struct{}, 1)
		done    = make(chan struct{})
	)
	go func() {
		defer close(done)
		tick := time.NewTicker(time.Second / time.Duration(rate))
		defer tick.Stop()
		for i := range rate * int(d/time.Second) {
			<-tick.C
			c := change{key: fmt.Sprintf("n%05d", i/2), value: fmt.Sprintf("10.2.%d.%d:%d", i>>8&255, i&255, 30000+i%2000), at: time.Now()}
			if i%2 == 1 {
				c = change{key: fmt.Sprintf("s%05d", i/2), del: true, at: time.Now()}
			}
			mu.Lock()
			waiting = append(waiting, c)
			mu.Unlock()
			select {
			case wake <- struct{}{}:
			default:
			}
		}
	}()
	syncs0 := maps.Syncs(mapName)
	var lat []time.Duration
	backlog := 0
	apply := func(cs []change) {
		set, del := map[string]string{}, []string{}
		for _, c := range cs {
			if c.del {
				del = append(del, c.key)
			} else {
				set[c.key] = c.value
			}
		}
		if err := drv.Apply(ctx, set, del); err != nil {
			b.Fatal(err)
		}
		now := time.Now()
		for _, c := range cs {
			lat = append(lat, now.Sub(c.at))
		}
	}
	for {
		select {
		case <-wake:
		case <-done:
		}
		mu.Lock()
		batch := waiting
		waiting = nil
		mu.Unlock()
		if len(batch) == 0 {
			select {
			case <-done:
				return lat, backlog, maps.Syncs(mapName) - syncs0
			default:
				continue
			}
		}
		backlog = max(backlog, len(batch))
		if batched {
			apply(batch)
			continue
		}
		for _, c := range batch {
			apply([]change{c})
		}
	}
}
