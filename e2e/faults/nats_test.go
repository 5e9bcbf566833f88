package faults

import (
	"errors"
	"fmt"
	"testing"
	"time"

	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
)

// TestNATSRestart restarts NATS (its JetStream store kept) twice under live sessions:
//
//   - briefly (SIGTERM, back within the lease): meanwhile one session ends and the next starts on
//     node 2. Node 1's websocket and media carry on; once NATS is back the agents and the edge
//     reconnect and converge: node 2's old session is gone with its public port, its new one
//     routed on a port of its own, and the events the agent held back arrive.
//   - for longer than the route lease (SIGKILL): the stored routes expire while nobody can
//     renew them. Node 1's live session must never be unrouted meanwhile, nor move from its
//     public port, while its agent reaches NATS only a while after the edge.
func TestNATSRestart(t *testing.T) {
	e := newEnv(t, config{nodes: []nodeConfig{{agent: true}, {agent: true}}})
	g := e.edges[0]
	s1, s2 := e.routed("node1", ""), e.routed("node2", "")
	w1, w2 := e.mustDial(g, s1.id), e.mustDial(g, s2.id)
	defer w1.Close()
	media := e.startFlow(g, s1.port, 8*time.Second)

	// Short outage; node 2's session ends and the next one starts while NATS is away.
	mark := e.obs.Mark()
	e.stopNATS(false)
	down := time.Now()
	if status, err := e.nodes[1].endSession(e.ctx, s2.id, true); err != nil || status != "COMPLETE" {
		t.Fatalf("endsession while NATS is down: %q %v", status, err)
	}
	w2.Close()
	// Down a while, well within the lease, so that node2's next session begins with NATS away.
	time.Sleep(2 * time.Second)
	if err := e.startNATS(); err != nil {
		t.Fatal(err)
	}
	up := time.Now()
	t.Logf("NATS stopped (SIGTERM) for %s; node2's session ended and the next began meanwhile", round(up.Sub(down)))
	var next session
	took := e.eventually(30*time.Second, "node2's next session routed after NATS came back", func() error {
		r, err := e.route("node2")
		if err != nil || r == nil || r.GetSessionId() == s2.id {
			return fmt.Errorf("node2's route %v %v", r, err)
		}
		got, err := e.endpoint("node2")
		if err != nil {
			return err
		}
		if got.id != r.GetSessionId() {
			return fmt.Errorf("node2's endpoint names session %s, want %s", got.id, r.GetSessionId())
		}
		m, err := g.showMap(e.ctx)
		if err != nil || m[got.id] == "" || m[s2.id] != "" || m[s1.id] == "" {
			return fmt.Errorf("map %v %v", m, err)
		}
		next = got
		return nil
	})
	t.Logf("figure: NATS back; node2's next session %s routed %s later (edge and agents reconnected and converged)", next.id, round(took))
	// A new session gets a public port of its own: the previous client may still be sending.
	if next.port == s2.port {
		t.Errorf("node2's next session inherited the previous session's udp %d", s2.port)
	}
	if rules, err := g.dnatPorts(e.ctx); err != nil || rules[s2.port] {
		t.Errorf("the previous session's udp %d still forwarded: %v %v", s2.port, rules, err)
	}
	ended := e.waitEvent(mark, "node2", livegatev1.EventType_EVENT_TYPE_SESSION_ENDED)
	if ended.Event.GetSessionId() != s2.id {
		t.Errorf("session_ended for %q, want %s", ended.Event.GetSessionId(), s2.id)
	}
	t.Logf("node2's session_ended, held back by the agent while NATS was down, arrived %s after NATS came back", round(ended.At.Sub(up)))
	e.refused(g, s2.id)
	w2 = e.mustDial(g, next.id)
	if err := e.echo(w2); err != nil {
		t.Error(err)
	}
	w2.Close()
	e.carriedOn("the NATS restart within the lease", s1, w1, media)
	e.eventually(20*time.Second, "edge heartbeat back", func() error {
		if back, err := e.heartbeat(g); !back {
			return fmt.Errorf("no heartbeat of %s (%v)", g.ID, err)
		}
		return nil
	})

	// Long outage: longer than the lease, so the stored routes expire while NATS is away.
	outage := leaseTTL + leaseTTL/2
	media = e.startFlow(g, s1.port, outage+12*time.Second)
	e.flowing(media)
	e.stopNATS(true)
	down = time.Now()
	time.Sleep(outage)
	// The agents come back a little after the edge, as reconnect back-off and jitter make
	// likely: the edge sees the store as NATS left it, before any lease is renewed.
	lateAgents := 3 * time.Second
	e.blockAgents(true)
	if err := e.startNATS(); err != nil {
		t.Fatal(err)
	}
	up = time.Now()
	t.Logf("NATS killed (SIGKILL) for %s (lease TTL %s); agents reach it again %s after the edge can", round(up.Sub(down)), leaseTTL, lateAgents)
	unblock := time.AfterFunc(lateAgents, func() { e.blockAgents(false) })
	defer unblock.Stop()
	tl := e.watchSession(s1, 12*time.Second)
	t.Logf("figure: after the long outage, node1's live session: %s", tl)
	if tl.errored > 0 {
		t.Logf("%d of %d samples inconclusive, for %s at most in a row; the last: %v", tl.errored, tl.samples, round(tl.blind), tl.lastErr)
	}
	// An unrouting can hide only in a run of inconclusive samples. The one this guards against
	// (routes whose lease lapsed, dropped until their agents renew them) lasts at least until
	// the agents are back, lateAgents; a run shorter than half that could not hide it.
	if tl.blind >= lateAgents/2 {
		t.Errorf("node1's routing after the long outage went unseen for %s in a row: cannot tell whether it was unrouted", round(tl.blind))
	}
	if err := e.echo(w1); err != nil {
		t.Errorf("node1's websocket across the long outage: %v", err)
	}
	// The stored routes expired with NATS away; the edge holds the live session's route after
	// its re-watch until the agent, back later, renews it (docs/faults.md): never unrouted, on
	// the same public port, where its client's media still goes.
	if tl.gap > 0 {
		t.Errorf("node1's live session was unrouted after the long outage: %s", tl)
	}
	waitFlow(t, media, "NATS outage longer than the lease", 0.05)
	if tl.finalPort != s1.port {
		t.Errorf("node1's live session moved from udp %d to udp %d after the outage: its client's media is lost", s1.port, tl.finalPort)
	}
	if err := e.probe(g, s1.port); err != nil {
		t.Errorf("node1's media after the long outage: %v", err)
	}
	w1.Close()
	stopAgents(t, e)
	e.clean()
}

// timeline is how one session fared after a fault: how long it was missing from the map or the
// kernel, on which public port it ended, and how much of it could not be seen.
type timeline struct {
	gap       time.Duration
	firstGone time.Duration
	finalPort int
	portMoves int
	samples   int
	// errored counts the samples a failed read left inconclusive; blind is their longest run.
	errored int
	blind   time.Duration
	lastErr error
	// When sampling began, and when the unrouted spell and the inconclusive run under way began
	// (zero when none is).
	start, goneAt, blindAt time.Time
}

func (tl timeline) String() string {
	if tl.gap == 0 {
		return fmt.Sprintf("never unrouted (%d samples, %d inconclusive), public port udp %d", tl.samples, tl.errored, tl.finalPort)
	}
	return fmt.Sprintf("unrouted from +%s for %s (%d samples, %d inconclusive); public port changed %d times, finally udp %d",
		round(tl.firstGone), round(tl.gap), tl.samples, tl.errored, tl.portMoves, tl.finalPort)
}

// add records the sample taken at at. An inconclusive one leaves the session as it was last
// seen: only a sample that finds it unrouted starts a gap.
func (tl *timeline) add(at time.Time, port int, routed bool, err error) {
	tl.samples++
	if err != nil {
		tl.errored++
		tl.lastErr = err
		if tl.blindAt.IsZero() {
			tl.blindAt = at
		}
		return
	}
	if !tl.blindAt.IsZero() {
		tl.blind = max(tl.blind, at.Sub(tl.blindAt))
		tl.blindAt = time.Time{}
	}
	if !routed {
		if tl.goneAt.IsZero() {
			tl.goneAt = at
		}
		if tl.firstGone == 0 {
			tl.firstGone = at.Sub(tl.start)
		}
		return
	}
	if port != tl.finalPort {
		tl.portMoves++
		tl.finalPort = port
	}
	if !tl.goneAt.IsZero() {
		tl.gap += at.Sub(tl.goneAt)
		tl.goneAt = time.Time{}
	}
}

// end closes the spells still open at at.
func (tl *timeline) end(at time.Time) {
	if !tl.goneAt.IsZero() {
		tl.gap += at.Sub(tl.goneAt)
	}
	if !tl.blindAt.IsZero() {
		tl.blind = max(tl.blind, at.Sub(tl.blindAt))
	}
}

// watchSession samples, every 100 ms for d, whether s is routed and on which public port.
func (e *env) watchSession(s session, d time.Duration) timeline {
	tl := timeline{finalPort: s.port, start: time.Now()}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for ; time.Since(tl.start) < d && e.ctx.Err() == nil; <-tick.C {
		at := time.Now()
		port, routed, err := e.sample(s)
		tl.add(at, port, routed, err)
	}
	tl.end(time.Now())
	return tl
}

// sample looks once at whether s is routed where its client's media goes: in its edge's map,
// its endpoint there with a DNAT map element for its public port. It returns that port; an
// error means a read failed before the sample could conclude.
func (e *env) sample(s session) (port int, routed bool, err error) {
	m, err := s.edge.showMap(e.ctx)
	if err != nil || m[s.id] == "" {
		return 0, false, err
	}
	got, err := e.endpoint(s.instance)
	if errors.Is(err, errNoEndpoint) {
		return 0, false, nil
	}
	if err != nil || got.id != s.id || got.edge != s.edge {
		return 0, false, err
	}
	ports, err := s.edge.dnatPorts(e.ctx)
	return got.port, err == nil && ports[got.port], err
}
