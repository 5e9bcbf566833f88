package reconcile_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/livegate/livegate/edgeproxy/internal/haproxy/haproxytest"
	"github.com/livegate/livegate/edgeproxy/internal/media"
	"github.com/livegate/livegate/edgeproxy/internal/placement"
	"github.com/livegate/livegate/pkg/wire"
	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
	"github.com/prometheus/client_golang/prometheus"
)

// drainVar is a drain state the test sets, as drainstate.Store is set through the admin endpoint.
type drainVar struct {
	mu sync.Mutex
	d  placement.Drain
}

func (v *drainVar) get() placement.Drain  { v.mu.Lock(); defer v.mu.Unlock(); return v.d }
func (v *drainVar) set(d placement.Drain) { v.mu.Lock(); v.d = d; v.mu.Unlock() }

func heartbeatOf(t *testing.T, e env, id string) *livegatev1.EdgeStatus {
	t.Helper()
	ent, err := e.kv.Edges.Get(context.Background(), id)
	if err != nil {
		return nil
	}
	var st livegatev1.EdgeStatus
	if err := wire.Unmarshal(ent.Value(), &st); err != nil {
		t.Fatal(err)
	}
	return &st
}

// servedBy counts the endpoints of keys by edge; a key without one counts under "".
func servedBy(t *testing.T, e env, keys []string) map[string]int {
	t.Helper()
	n := map[string]int{}
	for _, k := range keys {
		n[endpointOf(t, e, k).GetEdgeId()]++
	}
	return n
}

func TestDrainTakesNothingNewAndHandsOverAtTheDeadline(t *testing.T) {
	e := newEnv(t)
	h1, h2 := haproxytest.StartNew(t), haproxytest.StartNew(t)
	reg1 := prometheus.NewRegistry()
	dv := &drainVar{}
	c1, c2 := config("edge-1", "pool-a"), config("edge-2", "pool-a")
	c1.ClaimFallback, c2.ClaimFallback = 100*time.Millisecond, 100*time.Millisecond
	e1 := startEdgeWith(t, e, c1, h1, media.Off{}, reg1, dv.get)
	startEdgeWith(t, e, c2, h2, media.Off{}, prometheus.NewRegistry(), nil)
	b := haproxytest.StartBackend(t, "app", false)
	put := func(keys ...string) {
		for _, k := range keys {
			putRoute(t, e, k, &livegatev1.Route{SessionId: "s-" + k, SignalingBackend: b.Addr.String(), Pool: "pool-a"})
		}
	}
	var old []string
	for i := range 10 {
		old = append(old, fmt.Sprintf("old%02d", i))
	}
	put(old...)
	waitFor(t, "the old routes served", func() bool { return servedBy(t, e, old)[""] == 0 && mapSize(t, h1)+mapSize(t, h2) == len(old) })
	held := servedBy(t, e, old)["edge-1"]
	if held == 0 {
		t.Fatalf("edge-1 took none of %d routes: %v", len(old), servedBy(t, e, old))
	}

	dv.set(placement.Drain{Draining: true, Since: time.Now()})
	e1.r.Resync()
	waitFor(t, "edge-1's heartbeat says draining", func() bool { st := heartbeatOf(t, e, "edge-1"); return st.GetDraining() && !st.GetClaiming() })
	if got := value(t, reg1, "livegate_edge_draining"); got != 1 {
		t.Errorf("livegate_edge_draining %v", got)
	}
	var fresh []string
	for i := range 6 {
		fresh = append(fresh, fmt.Sprintf("new%02d", i))
	}
	put(fresh...)
	waitFor(t, "the new routes served", func() bool { return servedBy(t, e, fresh)[""] == 0 })
	if n := servedBy(t, e, fresh); n["edge-2"] != len(fresh) {
		t.Errorf("new routes while edge-1 drains: %v, want all on edge-2", n)
	}
	if n := servedBy(t, e, old); n["edge-1"] != held || mapSize(t, h1) != held {
		t.Errorf("a draining edge without a deadline kept %v of its %d routes (map %d)", n, held, mapSize(t, h1))
	}

	// The deadline passes: edge-1 hands its routes to edge-2.
	dv.set(placement.Drain{Draining: true, Since: time.Now(), Deadline: time.Now()})
	e1.r.Resync()
	all := append(append([]string{}, old...), fresh...)
	waitFor(t, "every route on edge-2", func() bool {
		return servedBy(t, e, all)["edge-2"] == len(all) && mapSize(t, h1) == 0 && mapSize(t, h2) == len(all)
	})
	removed := metricVec(t, reg1, "livegate_edge_routes_removed_total", "drained")
	if removed != float64(held) {
		t.Errorf("routes_removed_total{reason=drained} %v, want %d", removed, held)
	}
	var drained int
	for _, k := range old {
		ev := lastEvent(t, e, "pool-a", k, livegatev1.EventType_EVENT_TYPE_ROUTE_REMOVED)
		if ev != nil && strings.Contains(ev.GetRouteRemoved().GetReason(), "edge drained") && ev.GetRouteRemoved().GetEdgeId() == "edge-1" {
			drained++
		}
	}
	if drained != held {
		t.Errorf("%d route_removed events say drained, want %d", drained, held)
	}
}

// fixedPlane reports a fixed number of free ports out of 100, whatever it hands out.
type fixedPlane struct {
	*portPlane
	free int
}

func (p fixedPlane) Capacity() (int, int) { return 100, p.free }

func TestNewRoutesGoToTheEdgeWithMostRoom(t *testing.T) {
	for _, c := range []struct {
		name     string
		free     int
		fallback time.Duration
	}{
		// edge-2 has room, less than edge-1: it would claim only after the fallback, which is
		// long enough for edge-1 to claim first.
		{"less room", 30, 10 * time.Second},
		// edge-2 is at its reserve (2 of 100): it claims nothing, however short the fallback.
		{"at the reserve", 2, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			h1, h2 := haproxytest.StartNew(t), haproxytest.StartNew(t)
			c1, c2 := config("edge-1", "pool-a"), config("edge-2", "pool-a")
			c1.ClaimFallback, c2.ClaimFallback = c.fallback, c.fallback
			c1.PortReserve, c2.PortReserve = 0.02, 0.02
			startEdgeWith(t, e, c1, h1, newPortPlane(10500), prometheus.NewRegistry(), nil)
			reg2 := prometheus.NewRegistry()
			startEdgeWith(t, e, c2, h2, fixedPlane{portPlane: newPortPlane(10500), free: c.free}, reg2, nil)
			waitFor(t, "both heartbeats", func() bool {
				return heartbeatOf(t, e, "edge-1").GetClaiming() && heartbeatOf(t, e, "edge-2").GetFreePorts() == uint32(c.free)
			})
			if claiming := heartbeatOf(t, e, "edge-2").GetClaiming(); claiming != (c.free > 2) {
				t.Errorf("edge-2 with %d free ports says claiming %t", c.free, claiming)
			}
			b := haproxytest.StartBackend(t, "app", false)
			var keys []string
			for i := range 8 {
				k := fmt.Sprintf("r%02d", i)
				keys = append(keys, k)
				putRoute(t, e, k, &livegatev1.Route{SessionId: "s-" + k, SignalingBackend: b.Addr.String(), MediaBackends: []string{"127.0.0.1:31000"}, Pool: "pool-a"})
			}
			waitFor(t, "routes served", func() bool { return servedBy(t, e, keys)[""] == 0 })
			if n := servedBy(t, e, keys); n["edge-1"] != len(keys) {
				t.Errorf("served %v, want all on edge-1 (100 free ports against %d)", n, c.free)
			}
			if got, want := value(t, reg2, "livegate_edge_claiming") == 1, c.free > 2; got != want {
				t.Errorf("edge-2 livegate_edge_claiming %v", got)
			}
		})
	}
}

// value is the value of a registered gauge or counter without labels.
func value(t *testing.T, g prometheus.Gatherer, name string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			m := mf.GetMetric()[0]
			return m.GetGauge().GetValue() + m.GetCounter().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

// metricVec is the value of a counter vector's reason label.
func metricVec(t *testing.T, g prometheus.Gatherer, name, reason string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "reason" && l.GetValue() == reason {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no metric %s{reason=%q}", name, reason)
	return 0
}
