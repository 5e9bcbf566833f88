package faults

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/livegate/livegate/e2e/internal/stack"
	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
)

// TestPortRangeExhausted: an edge with three public ports gets a fourth route. It refuses it
// with a route_refused event that says the range is exhausted, programs nothing of it and
// publishes no endpoint; once one route ends and its port has rested, the refused route is
// admitted on that port.
func TestPortRangeExhausted(t *testing.T) {
	const portQuarantine = time.Second
	e := newEnv(t, config{nodes: []nodeConfig{{}}, mediaPorts: fmt.Sprintf("%d-%d", mediaFirst, mediaFirst+2), portQuarantine: portQuarantine})
	backend := stack.LabNodeLAN(1)
	var held []session
	for i := 1; i <= 3; i++ {
		key := fmt.Sprintf("x%d", i)
		if err := e.kv.putRoute(e.ctx, key, "sess-"+key, backend); err != nil {
			t.Fatal(err)
		}
		held = append(held, e.routed(key, "sess-"+key))
	}
	mark := e.obs.Mark()
	if err := e.kv.putRoute(e.ctx, "x4", "sess-x4", backend); err != nil {
		t.Fatal(err)
	}
	ev := e.waitEvent(mark, "x4", livegatev1.EventType_EVENT_TYPE_ROUTE_REFUSED)
	reason := ev.Event.GetRouteRefused().GetReason()
	t.Logf("fourth route refused: %q", reason)
	if !strings.Contains(reason, "exhausted") || ev.Event.GetRouteRefused().GetEdgeId() != "edge1" || ev.Event.GetSessionId() != "sess-x4" {
		t.Errorf("route_refused %v: want edge1, session sess-x4 and a reason naming the exhausted range", ev.Event)
	}
	g := e.edges[0]
	if got, err := e.endpoint("x4"); err == nil {
		t.Errorf("refused route has an endpoint: %s", got)
	} else if !errors.Is(err, errNoEndpoint) {
		t.Error(err)
	}
	if m, err := g.showMap(e.ctx); err != nil || m["sess-x4"] != "" || len(m) != 3 {
		t.Errorf("HAProxy map with a refused route: %v %v", m, err)
	}
	e.refused(g, "sess-x4")

	freed := held[0]
	if err := e.kv.deleteRoute(e.ctx, freed.instance); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	admitted := e.routed("x4", "sess-x4")
	took := time.Since(start)
	t.Logf("figure: refused route admitted %s after another route was deleted (port quarantine %s, resync %s)", round(took), portQuarantine, resync)
	if admitted.port != freed.port {
		t.Errorf("admitted on udp %d, want the freed udp %d (the only one)", admitted.port, freed.port)
	}
	w := e.mustDial(g, admitted.id)
	if err := e.echo(w); err != nil {
		t.Error(err)
	}
	w.Close()
	if err := e.probe(g, admitted.port); err != nil {
		t.Error(err)
	}
	for _, k := range []string{"x2", "x3", "x4"} {
		if err := e.kv.deleteRoute(e.ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	e.clean()
}
