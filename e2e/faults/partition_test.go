package faults

import (
	"fmt"
	"testing"
	"time"
)

// TestEdgePartitionedFromNATS: the edge's link to NATS goes down (the agents still reach NATS)
// for longer than the edge's heartbeat TTL, then comes back. Meanwhile the data plane goes on:
// the established websocket and the media flow are untouched, and a session that ends and the
// next that starts on node 2 wait in KV. Once healed, the edge reconnects, applies them, and
// its heartbeat is back.
func TestEdgePartitionedFromNATS(t *testing.T) {
	e := newEnv(t, config{nodes: []nodeConfig{{agent: true}, {agent: true}}})
	g := e.edges[0]
	s1, s2 := e.routed("node1", ""), e.routed("node2", "")
	w1 := e.mustDial(g, s1.id)
	defer w1.Close()
	const partition = 8 * time.Second
	media := e.startFlow(g, s1.port, partition+6*time.Second)
	e.flowing(media)

	link := e.id + "e1c"
	if err := g.NS.Run(e.ctx, "ip", "link", "set", link, "down"); err != nil {
		t.Fatal(err)
	}
	cut := time.Now()
	if status, err := e.nodes[1].endSession(e.ctx, s2.id, true); err != nil || status != "COMPLETE" {
		t.Fatalf("endsession during the partition: %q %v", status, err)
	}
	lost := e.eventually(20*time.Second, "edge heartbeat expired during the partition", func() error {
		if there, err := e.heartbeat(g); there || err != nil {
			return fmt.Errorf("heartbeat of %s still there (%v)", g.ID, err)
		}
		return nil
	})
	t.Logf("partition: %s's heartbeat expired %s after its NATS link went down (edge TTL %s)", g.ID, round(lost), edgeTTL)
	next := ""
	e.eventually(20*time.Second, "node2's next route written during the partition", func() error {
		r, err := e.route("node2")
		if err != nil || r == nil || r.GetSessionId() == s2.id {
			return fmt.Errorf("node2's route %v %v", r, err)
		}
		next = r.GetSessionId()
		return nil
	})
	if err := e.echo(w1); err != nil {
		t.Errorf("websocket during the partition: %v", err)
	}
	if m, err := g.showMap(e.ctx); err != nil || m[s1.id] == "" {
		t.Errorf("the partitioned edge dropped a live session from its map: %v %v", m, err)
	}
	// The partition lasts its full length whatever the checks above took: well past the edge TTL.
	time.Sleep(max(0, partition-time.Since(cut)))
	if err := g.NS.Run(e.ctx, "ip", "link", "set", link, "up"); err != nil {
		t.Fatal(err)
	}
	healed := time.Now()
	t.Logf("partition healed after %s", round(healed.Sub(cut)))
	s2next := e.routed("node2", next)
	took := time.Since(healed)
	e.eventually(20*time.Second, "heartbeat back", func() error {
		if back, err := e.heartbeat(g); !back {
			return fmt.Errorf("no heartbeat of %s (%v)", g.ID, err)
		}
		return nil
	})
	t.Logf("figure: healed; node2's session that started during the partition routed %s later, heartbeat back %s after healing",
		round(took), since(healed))
	e.refused(g, s2.id)
	w2 := e.mustDial(g, s2next.id)
	if err := e.echo(w2); err != nil {
		t.Error(err)
	}
	w2.Close()
	e.carriedOn("the edge's partition from NATS", s1, w1, media)
	w1.Close()
	stopAgents(t, e)
	e.clean()
}
