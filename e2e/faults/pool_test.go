package faults

import (
	"fmt"
	"testing"
	"time"

	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
)

// TestTwoEdgesOnePool: two edges serve one pool. Each session is claimed (a compare-and-set of
// its endpoint) and served by exactly one of them. When the edge serving the agent's session
// dies (the whole host: edge and HAProxy), its heartbeat expires and the other edge claims its
// sessions, publishing new public ports; the agent learns its new endpoint and the session is
// reachable through the survivor. The dead edge, restarted, takes nothing back and removes what
// it had left programmed.
func TestTwoEdgesOnePool(t *testing.T) {
	// The client of node 1 loses its websocket with the dead edge and comes back through the
	// survivor within the resume window.
	e := newEnv(t, twoEdgePool())
	const routes = 8
	all, dead, survivor := e.poolSessions("p", routes)
	s := all["node1"]
	w, code, err := e.dial(e.ctx, survivor, s.id)
	if err == nil {
		w.Close()
		t.Fatalf("%s upgraded a websocket for %s, which %s serves", survivor.ID, s.id, dead.ID)
	} else if code != 404 {
		t.Fatalf("%s for a session it does not serve: %v", survivor.ID, err)
	}
	w = e.mustDial(dead, s.id)
	if err := e.echo(w); err != nil {
		t.Fatal(err)
	}
	w.Close()

	mark := e.obs.Mark()
	if err := dead.killAll(e.ctx); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	took := e.eventually(30*time.Second, "survivor claimed every session", func() error {
		if err := e.allOn(all, survivor); err != nil {
			return err
		}
		m, err := survivor.showMap(e.ctx)
		if err != nil || len(m) != len(all) {
			return fmt.Errorf("%s map has %d entries (%v), want %d", survivor.ID, len(m), err, len(all))
		}
		return nil
	})
	t.Logf("figure: %s died (SIGKILL, edge and HAProxy); %s served all %d sessions %s later (edge TTL %s, heartbeat %s)",
		dead.ID, survivor.ID, len(all), round(took), edgeTTL, heartbeat)
	moved := e.routed("node1", s.id)
	if moved.edge != survivor {
		t.Fatalf("node1 routed on %s after the takeover", moved.edge.ID)
	}
	assigned := e.waitEvent(mark, "node1", livegatev1.EventType_EVENT_TYPE_ENDPOINT_ASSIGNED)
	t.Logf("node1's agent learnt its new endpoint (%s udp %d) %s after the kill",
		survivor.ID, moved.port, round(assigned.At.Sub(killed)))
	if got := assigned.Event.GetEndpointAssigned(); got.GetEdgeId() != survivor.ID {
		t.Errorf("endpoint_assigned %v, want edge %s", got, survivor.ID)
	}
	w = e.mustDial(survivor, s.id)
	if err := e.echo(w); err != nil {
		t.Error(err)
	}
	resumed := e.waitEvent(mark, "node1", livegatev1.EventType_EVENT_TYPE_SESSION_RESUMED)
	t.Logf("node1's client came back through %s; session %s resumed", survivor.ID, resumed.Event.GetSessionId())
	w.Close()
	if err := e.probe(survivor, moved.port); err != nil {
		t.Error(err)
	}
	if served := e.exactlyOnce(all); served[survivor.ID] != len(all) {
		t.Errorf("after the takeover: %v", served)
	}

	// The dead edge comes back: the sessions stay where they are, and it clears what it left.
	restart := time.Now()
	if err := dead.start(); err != nil {
		t.Fatal(err)
	}
	took = e.eventually(20*time.Second, "restarted edge cleared its leftovers", func() error {
		m, err := dead.showMap(e.ctx)
		if err != nil || len(m) > 0 {
			return fmt.Errorf("%s map %v %v", dead.ID, m, err)
		}
		ports, err := dead.dnatPorts(e.ctx)
		if err != nil || len(ports) > 0 {
			return fmt.Errorf("%s DNAT ports %v %v", dead.ID, ports, err)
		}
		return nil
	})
	t.Logf("figure: %s restarted; its stale HAProxy and DNAT map entries were gone %s later, no session taken back", dead.ID, since(restart))
	if served := e.exactlyOnce(all); served[survivor.ID] != len(all) {
		t.Errorf("after the restart of %s: %v", dead.ID, served)
	}
	for i := 1; i <= routes; i++ {
		if err := e.kv.deleteRoute(e.ctx, fmt.Sprintf("p%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	stopAgents(t, e)
	e.clean()
}
