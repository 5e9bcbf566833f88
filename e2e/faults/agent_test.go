package faults

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/livegate/livegate/e2e/internal/proc"
	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
)

// TestAgentKilled: an agent dies with SIGKILL, so nobody deletes its route. Its lease runs out
// and the edge removes everything of the session (map entry, DNAT map element, conntrack entries,
// endpoint) by itself; the other node's session is untouched.
func TestAgentKilled(t *testing.T) {
	e := newEnv(t, config{nodes: []nodeConfig{{agent: true}, {agent: true}}})
	start := time.Now()
	s1, s2 := e.routed("node1", ""), e.routed("node2", "")
	w1, w2 := e.mustDial(s1.edge, s1.id), e.mustDial(s2.edge, s2.id)
	defer w2.Close()
	// Media leaves conntrack entries behind: the removal must delete them.
	for _, s := range []session{s1, s2} {
		if err := e.probe(s.edge, s.port); err != nil {
			t.Fatal(err)
		}
	}
	mark := e.obs.Mark()
	e.nodes[0].agent.Kill()
	killed := time.Now()
	t.Logf("agent1 killed (SIGKILL) while %s was active; lease TTL %s", s1, leaseTTL)
	took := e.gone(s1)
	ev := e.waitEvent(mark, "node1", livegatev1.EventType_EVENT_TYPE_ROUTE_REMOVED)
	t.Logf("figure: route of the killed agent removed everywhere %s after SIGKILL (lease TTL %s, edge saw it at +%s: %q)",
		round(took), leaseTTL, round(ev.At.Sub(killed)), ev.Event.GetRouteRemoved().GetReason())
	w1.Close()
	if err := e.echo(w2); err != nil {
		t.Errorf("node2's websocket after node1's agent died: %v", err)
	}
	if err := e.probe(s2.edge, s2.port); err != nil {
		t.Errorf("node2's media after node1's agent died: %v", err)
	}
	if err := e.unchanged(s2); err != nil {
		t.Errorf("after node1's agent died: %v", err)
	}
	w2.Close()
	// A retried publish arrives twice under one id: count ids, not messages.
	programmed := map[string]bool{}
	for _, r := range e.obs.Events() {
		if r.Event.GetInstanceId() == "node2" && r.Event.GetType() == livegatev1.EventType_EVENT_TYPE_ROUTE_PROGRAMMED && r.Event.GetSessionId() == s2.id {
			programmed[r.Event.GetId()] = true
		}
	}
	// Its lease was renewed every third of the TTL meanwhile; a renewal programs nothing new.
	if len(programmed) != 1 {
		t.Errorf("node2's one route got %d route_programmed events in %s (lease renewed every %s), want 1", len(programmed), since(start), leaseTTL/3)
	}
	stopAgents(t, e)
	e.clean()
}

// gone waits until session s is removed everywhere: route and endpoint keys, the serving edge's
// map entry, DNAT map element and conntrack entries. It returns how long that took.
func (e *env) gone(s session) time.Duration {
	e.t.Helper()
	took := e.eventually(30*time.Second, "session "+s.id+" removed", func() error {
		return e.isGone(s)
	})
	e.refused(s.edge, s.id)
	return took
}

func (e *env) isGone(s session) error {
	if r, err := e.route(s.instance); err != nil || (r != nil && r.GetSessionId() == s.id) {
		return fmt.Errorf("route still there: %v %v", r, err)
	}
	switch got, err := e.endpoint(s.instance); {
	case errors.Is(err, errNoEndpoint):
	case err != nil:
		return err
	case got.id == s.id:
		return fmt.Errorf("endpoint still there: %s", got)
	}
	if m, err := s.edge.showMap(e.ctx); err != nil || m[s.id] != "" {
		return fmt.Errorf("map entry left: %q %v", m[s.id], err)
	}
	if ports, err := s.edge.dnatPorts(e.ctx); err != nil || ports[s.port] {
		return fmt.Errorf("DNAT map element of udp %d left (%v)", s.port, err)
	}
	if ports, err := s.edge.conntrackPorts(e.ctx); err != nil || ports[s.port] > 0 {
		return fmt.Errorf("%d conntrack entries of udp %d left (%v)", ports[s.port], s.port, err)
	}
	return nil
}

// stopAgents stops every agent politely: each deletes its route on the way out.
func stopAgents(t *testing.T, e *env) {
	t.Helper()
	var ps []*proc.Proc
	for _, n := range e.nodes {
		if n.agent != nil && !n.agent.Exited() {
			ps = append(ps, n.agent)
		}
	}
	for _, p := range ps {
		if err := p.Stop(10 * time.Second); err != nil && !strings.Contains(err.Error(), "signal") {
			t.Errorf("stop %s: %v", p.Name, err)
		}
	}
}
