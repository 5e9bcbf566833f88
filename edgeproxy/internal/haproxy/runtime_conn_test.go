package haproxy_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/livegate/livegate/edgeproxy/internal/haproxy"
	"github.com/livegate/livegate/edgeproxy/internal/haproxy/haproxytest"
	"github.com/livegate/livegate/pkg/freeport"
)

// mapValue is the value HAProxy's map holds for key, asked on a connection of its own (so the
// answer is the current worker's), or "" when it has none.
func mapValue(t *testing.T, h *haproxytest.Instance, key string) string {
	t.Helper()
	c, err := haproxy.NewCommand("show", "map", h.MapFile)
	if err != nil {
		t.Fatal(err)
	}
	fresh := haproxy.NewClient(h.Socket, 5*time.Second)
	defer fresh.Close()
	out, err := fresh.Exec(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(out, "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[1] == key {
			return f[2]
		}
	}
	return ""
}

// TestRuntimeClientAcrossRestartAndReload applies a route, restarts HAProxy (or reloads it), and
// applies another: the kept connection is dead (restart) or held by the stopping worker
// (reload), and the second Apply must reach the new HAProxy over a fresh connection.
func TestRuntimeClientAcrossRestartAndReload(t *testing.T) {
	ctx := context.Background()
	for _, tt := range []struct {
		name  string
		cycle func(t *testing.T, h *haproxytest.Instance)
	}{
		{"restart", func(t *testing.T, h *haproxytest.Instance) {
			if err := syscall.Kill(h.Supervisor.Pid(), syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			h.WaitReady(t)
		}},
		{"reload", func(t *testing.T, h *haproxytest.Instance) {
			if err := h.Supervisor.Reload(ctx); err != nil {
				t.Fatal(err)
			}
			h.WaitReady(t)
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := haproxytest.NewFiles(t, haproxytest.Dir(t))
			cfg := f.ConfigFor(freeport.TCP(t))
			// A connection left on the stopping worker would hold it until hard-stop-after: far
			// beyond the bound below, however slow the machine.
			cfg.HardStopAfter = 2 * time.Minute
			h := haproxytest.Start(t, cfg, f)
			if err := h.Driver.Apply(ctx, map[string]string{"first": "198.18.0.1:30000"}, nil); err != nil {
				t.Fatal(err)
			}
			if got := mapValue(t, h, "first"); got != "198.18.0.1:30000" {
				t.Fatalf("first = %q before the %s", got, tt.name)
			}
			start := time.Now()
			tt.cycle(t, h)
			if err := h.Driver.Apply(ctx, map[string]string{"second": "198.18.0.2:30000"}, nil); err != nil {
				t.Fatalf("apply after %s: %v", tt.name, err)
			}
			if got := mapValue(t, h, "second"); got != "198.18.0.2:30000" {
				t.Fatalf("second = %q in the HAProxy after the %s", got, tt.name)
			}
			if took := time.Since(start); took > time.Minute {
				t.Fatalf("%s and apply took %s", tt.name, took)
			}
			// The known-key path (a pipeline of del+add) must reach it too.
			if err := h.Driver.ApplyKnown(ctx, map[string]string{"third": "198.18.0.3:30000"}, nil, map[string]string{}); err != nil {
				t.Fatal(err)
			}
			if got := mapValue(t, h, "third"); got != "198.18.0.3:30000" {
				t.Fatalf("third = %q after the %s", got, tt.name)
			}
		})
	}
}

// TestRuntimeClientConcurrentApplies has many goroutines apply, replace and read routes at once
// through one client: each gets its own answers, and the map ends as they left it.
func TestRuntimeClientConcurrentApplies(t *testing.T) {
	ctx := context.Background()
	h := haproxytest.StartNew(t)
	const workers, rounds = 16, 25
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			for r := range rounds {
				key := fmt.Sprintf("w%d-r%d", w, r)
				var err error
				if r%2 == 0 {
					err = h.Driver.ApplyKnown(ctx, map[string]string{key: fmt.Sprintf("198.18.%d.%d:30000", w, r)}, nil, map[string]string{})
				} else {
					err = h.Driver.Apply(ctx, map[string]string{key: fmt.Sprintf("198.18.%d.%d:30000", w, r)}, nil)
				}
				if err == nil && r > 0 {
					// Replace the previous round's key and read it back.
					prev := fmt.Sprintf("w%d-r%d", w, r-1)
					err = h.Driver.Apply(ctx, map[string]string{prev: fmt.Sprintf("198.19.%d.%d:31000", w, r-1)}, nil)
				}
				if err == nil {
					var m map[string]string
					if m, err = h.Driver.List(ctx); err == nil && m[key] != fmt.Sprintf("198.18.%d.%d:30000", w, r) {
						err = fmt.Errorf("%s = %q after its apply", key, m[key])
					}
				}
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	m, err := h.Driver.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for w := range workers {
		for r := range rounds {
			want := fmt.Sprintf("198.19.%d.%d:31000", w, r)
			if r == rounds-1 {
				want = fmt.Sprintf("198.18.%d.%d:30000", w, r)
			}
			if key := fmt.Sprintf("w%d-r%d", w, r); m[key] != want {
				t.Errorf("%s = %q, want %q", key, m[key], want)
			}
		}
	}
}

// BenchmarkRuntimeApplyConnection compares, in the same run on real HAProxy, one route's Apply
// on a new connection (dial and prompt each time, as every exchange did before connections were
// kept) against the kept connection, and the fresh-key pipeline (del+add) against a bare add.
func BenchmarkRuntimeApplyConnection(b *testing.B) {
	ctx := context.Background()
	h := haproxytest.StartNew(b)
	var oneShot, kept, delAdd, add time.Duration
	for i := 0; b.Loop(); i++ {
		key := fmt.Sprintf("s-%d", i)
		set := map[string]string{key: "198.18.0.1:30000"}
		start := time.Now()
		h.Client.Close()
		if err := h.Driver.Apply(ctx, set, nil); err != nil {
			b.Fatal(err)
		}
		mid := time.Now()
		if err := h.Driver.Apply(ctx, set, nil); err != nil {
			b.Fatal(err)
		}
		oneShot, kept = oneShot+mid.Sub(start), kept+time.Since(mid)
		fresh := map[string]string{key + "-f": "198.18.0.2:30000"}
		start = time.Now()
		if err := h.Driver.ApplyKnown(ctx, fresh, nil, map[string]string{}); err != nil {
			b.Fatal(err)
		}
		mid = time.Now()
		c, err := haproxy.NewCommand("add", "map", h.MapFile, key+"-a", "198.18.0.3:30000")
		if err != nil {
			b.Fatal(err)
		}
		if _, err := h.Client.Pipeline(ctx, []haproxy.Command{c}); err != nil {
			b.Fatal(err)
		}
		delAdd, add = delAdd+mid.Sub(start), add+time.Since(mid)
	}
	n := float64(b.N)
	b.ReportMetric(float64(oneShot.Nanoseconds())/n, "oneshot-ns/apply")
	b.ReportMetric(float64(kept.Nanoseconds())/n, "kept-ns/apply")
	b.ReportMetric(float64(oneShot)/float64(kept), "oneshot/kept")
	b.ReportMetric(float64(delAdd.Nanoseconds())/n, "deladd-ns/fresh")
	b.ReportMetric(float64(add.Nanoseconds())/n, "add-ns/fresh")
	b.ReportMetric(0, "ns/op")
}

// TestRuntimeClientKeepsItsConnectionPastItsTimeout: the timeout bounds one exchange, not the
// connection's life (HAProxy's stats timeout does), so a quiet spell longer than it costs no
// new connection.
func TestRuntimeClientKeepsItsConnectionPastItsTimeout(t *testing.T) {
	h := haproxytest.StartNew(t)
	c := haproxy.NewClient(h.Socket, 300*time.Millisecond)
	defer c.Close()
	info, err := haproxy.NewCommand("show", "info")
	if err != nil {
		t.Fatal(err)
	}
	conns := func() string {
		t.Helper()
		out, err := c.Exec(context.Background(), info)
		if err != nil {
			t.Fatal(err)
		}
		for line := range strings.SplitSeq(out, "\n") {
			if v, ok := strings.CutPrefix(line, "CumConns: "); ok {
				return v
			}
		}
		t.Fatalf("no CumConns in show info:\n%s", out)
		return ""
	}
	before := conns()
	time.Sleep(time.Second)
	if after := conns(); after != before {
		t.Errorf("connections accepted: %s, then %s after a quiet second: the client dialled again", before, after)
	}
}
