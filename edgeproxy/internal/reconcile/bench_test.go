package reconcile_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/livegate/livegate/edgeproxy/internal/haproxy/haproxytest"
	"github.com/livegate/livegate/edgeproxy/internal/media"
	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
)

// BenchmarkColdStart measures an edge starting with 9,500 routes already in KV: the time until
// all are in HAProxy's map (routable) and until all their endpoints are published.
// Run: go test -run '^$' -bench ColdStart -benchtime 1x ./internal/reconcile/
func BenchmarkColdStart(b *testing.B) {
	for _, mode := range []string{"edge", "pool"} {
		b.Run(mode, func(b *testing.B) {
			for range b.N {
				routable, published := coldStart(b, mode == "pool")
				b.ReportMetric(routable.Seconds(), "s-routable")
				b.ReportMetric(published.Seconds(), "s-published")
			}
		})
	}
}

func coldStart(b *testing.B, pooled bool) (routable, published time.Duration) {
	b.StopTimer()
	e := newEnv(b)
	h := haproxytest.StartNew(b)
	const n = 9500
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for i := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			r := &livegatev1.Route{SessionId: fmt.Sprintf("s%05d", i), SignalingBackend: fmt.Sprintf("127.0.%d.%d:%d", i/250, i%250+1, 30000+i%2000), EdgeId: "edge-a"}
			if pooled {
				r.EdgeId, r.Pool = "", "default"
			}
			putRoute(b, e, fmt.Sprintf("i%05d", i), r)
		})
	}
	wg.Wait()
	b.StartTimer()
	began := time.Now()
	startEdge(b, e, config("edge-a", "default"), h, media.Off{})
	waitFor(b, "9500 routable", func() bool { return mapSize(b, h) == n })
	routable = time.Since(began)
	waitFor(b, "9500 endpoints", func() bool {
		st, err := e.kv.Endpoints.Status(context.Background())
		return err == nil && st.Values() >= n
	})
	return routable, time.Since(began)
}
