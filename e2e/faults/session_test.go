package faults

import (
	"fmt"
	"testing"
	"time"
)

// TestNextSessionFreshPort ends a session whose client is still sending media, and the agent
// (which outlives its sessions) becomes ready under a new session id on the same instance: the
// next session gets a public port of its own, and the previous session's port loses its DNAT
// rule and its conntrack entries, so the previous client's packets never reach the next user.
func TestNextSessionFreshPort(t *testing.T) {
	e := newEnv(t, config{nodes: []nodeConfig{{agent: true}}})
	g := e.edges[0]
	s1 := e.routed("node1", "")
	w1 := e.mustDial(g, s1.id)
	// The previous client keeps sending across the change of session.
	media := e.startFlow(g, s1.port, 4*time.Second)
	e.flowing(media)
	e.eventually(10*time.Second, "a translated conntrack entry of the session's port", func() error {
		if ct, err := g.conntrackPorts(e.ctx); err != nil || ct[s1.port] == 0 {
			return fmt.Errorf("conntrack of udp %d: %v %v", s1.port, ct, err)
		}
		return nil
	})
	if status, err := e.nodes[0].endSession(e.ctx, s1.id, true); err != nil || status != "COMPLETE" {
		t.Fatalf("endsession: %q %v", status, err)
	}
	w1.Close()
	var next session
	took := e.eventually(20*time.Second, "node1's next session routed", func() error {
		got, err := e.endpoint("node1")
		if err != nil || got.id == s1.id {
			return fmt.Errorf("node1's endpoint %s %v", got, err)
		}
		next = got
		return nil
	})
	t.Logf("figure: node1's next session %s routed %s after the previous one ended, on udp %d (was %d)", next.id, round(took), next.port, s1.port)
	if next.port == s1.port {
		t.Fatalf("the next session inherited the previous session's public port udp %d", s1.port)
	}
	e.eventually(10*time.Second, "the previous session's port unforwarded and flushed", func() error {
		rules, err := g.dnatPorts(e.ctx)
		if err != nil || rules[s1.port] {
			return fmt.Errorf("DNAT map ports %v %v", rules, err)
		}
		if ct, err := g.conntrackPorts(e.ctx); err != nil || ct[s1.port] > 0 {
			return fmt.Errorf("translated conntrack entries of udp %d: %v %v", s1.port, ct, err)
		}
		return nil
	})
	// What the previous client sent after the change went nowhere; its flow's loss is expected.
	<-media.Done()
	e.refused(g, s1.id)
	// The client stays connected while its media is probed: without a resume window its
	// leaving ends the session.
	w := e.mustDial(g, next.id)
	if err := e.echo(w); err != nil {
		t.Error(err)
	}
	if err := e.probe(g, next.port); err != nil {
		t.Errorf("the next session's media: %v", err)
	}
	w.Close()
	stopAgents(t, e)
	e.clean()
}
