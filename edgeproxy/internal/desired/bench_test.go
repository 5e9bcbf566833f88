package desired

import (
	"fmt"
	"testing"
	"time"

	"github.com/livegate/livegate/edgeproxy/internal/portalloc"
)

// BenchmarkPassUnderChurn measures one pass of the churn the route benchmark runs (one route
// added and one ended per pass) against the number of routes held: a pass that costs O(changes)
// stays flat as held grows.
// Run: go test -run '^$' -bench PassUnderChurn ./internal/desired/
func BenchmarkPassUnderChurn(b *testing.B) {
	for _, held := range []int{100, 1000, 9500} {
		b.Run(fmt.Sprintf("held=%d", held), func(b *testing.B) {
			t := &testing.T{}
			now := time.Unix(1000, 0)
			kv := newStore()
			cfg := edgeConfig("edge-a")
			cfg.MaxRoutes = 20000
			route := func(i int) []byte {
				return encode(t, edgeRoute("edge-a", fmt.Sprintf("s%d", i), fmt.Sprintf("127.0.%d.%d:%d", i/250%250, i%250+1, 31000+i%2000)))
			}
			for i := range held {
				kv.set(RoutesBucket, fmt.Sprintf("i%d", i), route(i))
			}
			e := newEdge(t, kv, cfg, portalloc.Range{First: 10000, Last: 40000}, nil, &now)
			e.pass(now)
			b.ResetTimer()
			for n := range b.N {
				now = now.Add(time.Millisecond)
				kv.set(RoutesBucket, fmt.Sprintf("i%d", held+n), route(held+n))
				kv.remove(RoutesBucket, fmt.Sprintf("i%d", n), false)
				e.pass(now)
			}
		})
	}
}
