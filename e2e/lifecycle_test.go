package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/livegate/livegate/e2e/internal/netns"
	"github.com/livegate/livegate/e2e/internal/observer"
	"github.com/livegate/livegate/e2e/internal/stack"
	"github.com/livegate/livegate/e2e/internal/wsclient"
	"github.com/livegate/livegate/pkg/events"
	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
)

// prefix starts every namespace and veth the test creates; the demo uses "lged", so neither
// sweeps the other.
const prefix = "lget"

// The /v1/streaming/ready answers (docs/agent.md, GET /v1/streaming/ready).
var (
	readyAppNotReady    = stack.Ready{Code: 503, Message: "Status: App not ready"}
	readyRtxNotReady    = stack.Ready{Code: 503, Message: "Status: Rtx not ready"}
	readyWaitingClient  = stack.Ready{Code: 503, Message: "Status: Waiting for previous client to disconnect"}
	readyEnded          = stack.Ready{Code: 503, Message: "Status: Streaming session ended (recycle instance)"}
	readyAwaitingResume = stack.Ready{Code: 200, Message: "Status: Awaiting session resume (keep alive)"}
	readyActive         = stack.Ready{Code: 200, Message: "Status: Streaming session active (keep alive)"}
	readyForConnection  = stack.Ready{Code: 200, Message: "Status: Ready for connection"}
)

const (
	edgeID = "edge1"
	pool   = "e2e"
	// Short, so the test waits little for the window and the lease to run out; long enough that
	// the test reconnects inside the window on two busy cores.
	resumeTimeoutSeconds = 6
	leaseTTL             = 4 * time.Second
)

var built stack.Built

func TestMain(m *testing.M) { built.Main(m) }

// binaries builds the agent, the edge and the demo app once per test binary.
func binaries(t *testing.T) stack.Binaries { return built.For(t) }

// TestSessionLifecycle walks whole sessions through a real edge (embedded NATS, supervised
// HAProxy, iptables and conntrack in its own namespace), with agents and demo apps in node
// namespaces and the client in a client namespace:
//
//	node1: quitOnSessionEnded on  — ends by resume timeout, the agent exits.
//	node2: quitOnSessionEnded off — ends by a graceful endsession, then serves the next session,
//	       until its agent crashes and the route's lease runs out.
func TestSessionLifecycle(t *testing.T) {
	stack.RequireRoot(t, "sudo make test")
	start := time.Now()
	b := binaries(t)
	t.Logf("binaries built in %s", time.Since(start).Round(time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	d := stack.StartFor(ctx, t, stack.Options{
		Prefix:   prefix,
		Bins:     b,
		Dir:      t.TempDir(),
		EdgeID:   edgeID,
		Pool:     pool,
		LeaseTTL: leaseTTL,
		Nodes: []stack.NodeOptions{
			{QuitOnSessionEnded: true, ResumeTimeoutSeconds: resumeTimeoutSeconds},
			{QuitOnSessionEnded: false, ResumeTimeoutSeconds: resumeTimeoutSeconds},
		},
	})

	t.Run("group", func(t *testing.T) {
		t.Run("quit_on_session_ended", func(t *testing.T) {
			t.Parallel()
			w := &walk{t: t, ctx: ctx, d: d, n: d.Nodes[0]}
			s := w.firstSession()
			w.disconnectAndResume(&s)
			w.endByResumeTimeout(s)
			w.agentEventsInOrder(
				"app_ready", "rtx_ready", "ready_for_connection", "endpoint_assigned", "client_connected",
				"client_disconnected", "session_awaiting_resume", "client_connected", "session_resumed",
				"client_disconnected", "session_awaiting_resume", "session_ended")
		})
		t.Run("serve_next_session", func(t *testing.T) {
			t.Parallel()
			w := &walk{t: t, ctx: ctx, d: d, n: d.Nodes[1]}
			s := w.firstSession()
			w.disconnectAndResume(&s)
			next := w.endGracefullyThenNext(s)
			w.connectAndProbe(&next)
			_ = next.ws.Close()
			w.probeCommand(&next)
			w.crashAndExpire(next)
		})
	})
	if t.Failed() {
		return
	}
	// An orchestrator that was not listening replays the same history from the stream.
	deadline := time.Now().Add(10 * time.Second)
	for {
		stored, err := d.Obs.Stored(ctx)
		seen := d.Obs.DistinctIDs()
		if err == nil && stored == uint64(seen) {
			t.Logf("LIVEGATE_EVENTS keeps all %d events the observer received", seen)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("LIVEGATE_EVENTS keeps %d events (%v), the observer received %d", stored, err, seen)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// walk drives one node through its sessions.
type walk struct {
	t   *testing.T
	ctx context.Context
	d   *stack.Deployment
	n   *stack.Node
	// translatedOnly makes gone count only the conntrack entries DNATed to an app: a browser's
	// last packets after the rule went may leave an untranslated one, which reaches no app and
	// expires by itself.
	translatedOnly bool
}

// session is what a client learnt about one session.
type session struct {
	id       string
	endpoint *livegatev1.Endpoint
	ws       *wsclient.Conn
	// readyAt is when the agent said the session was ready (its ready_for_connection).
	readyAt time.Time
}

func (w *walk) logf(format string, args ...any) {
	w.t.Helper()
	w.t.Logf("%s: "+format, append([]any{w.n.InstanceID}, args...)...)
}

// firstSession: the app starts, the agent becomes ready and publishes its route, the edge
// programs it and assigns an endpoint, and a client connects through it.
func (w *walk) firstSession() session {
	t := w.t
	t.Helper()
	if r, err := w.n.Startup(w.ctx); err != nil || r != (stack.Ready{Code: 200, Message: "Status: Startup endpoint OK"}) {
		t.Errorf("/v1/streaming/startup: %s, %v", r, err)
	}
	// Before the app reports, the agent may already answer: only the start-up answers are allowed.
	w.waitReady(readyForConnection, readyAppNotReady, readyRtxNotReady)
	mark := 0
	w.event(mark, livegatev1.EventType_EVENT_TYPE_APP_READY)
	w.event(mark, livegatev1.EventType_EVENT_TYPE_RTX_READY)
	s := w.readySession(mark)
	w.connectAndProbe(&s)
	return s
}

// readySession waits for the node's ready_for_connection after mark and for its session to be
// routed (see routed).
func (w *walk) readySession(mark int) session {
	w.t.Helper()
	rfc := w.event(mark, livegatev1.EventType_EVENT_TYPE_READY_FOR_CONNECTION)
	s := session{id: rfc.Event.GetSessionId(), readyAt: rfc.Event.GetTime().AsTime()}
	if s.id == "" {
		w.t.Fatalf("ready_for_connection carries no session id: %v", rfc.Event)
	}
	s.endpoint = w.routed(mark, s.id, rfc.At)
	return s
}

// routed checks the desired route, the edge's route_programmed event and the assigned endpoint.
func (w *walk) routed(mark int, sessionID string, readyAt time.Time) *livegatev1.Endpoint {
	t := w.t
	t.Helper()
	prog := w.event(mark, livegatev1.EventType_EVENT_TYPE_ROUTE_PROGRAMMED)
	if got := prog.Event.GetRouteProgrammed().GetEdgeId(); got != edgeID {
		t.Errorf("route_programmed edge %q, want %q", got, edgeID)
	}
	w.logf("session %s routed %s after ready_for_connection (edge reports %s)", sessionID,
		prog.At.Sub(readyAt).Round(time.Millisecond), prog.Event.GetRouteProgrammed().GetLatency().AsDuration())
	route, err := w.d.Obs.Route(w.ctx, w.n.InstanceID)
	if err != nil || route == nil {
		t.Fatalf("route of %s: %v, %v", w.n.InstanceID, route, err)
	}
	wantSig := net.JoinHostPort(netns.NodeAddr(w.n.Index).String(), strconv.Itoa(stack.AppSignalingPort))
	wantMedia := net.JoinHostPort(netns.NodeAddr(w.n.Index).String(), strconv.Itoa(stack.AppMediaPort))
	if route.GetSessionId() != sessionID || route.GetSignalingBackend() != wantSig ||
		len(route.GetMediaBackends()) != 1 || route.GetMediaBackends()[0] != wantMedia || route.GetPool() != pool {
		t.Fatalf("route %v, want session %s, signaling %s, media [%s], pool %s", route, sessionID, wantSig, wantMedia, pool)
	}
	if m, err := w.d.HAProxyMap(w.ctx); err != nil || m[sessionID] != wantSig {
		t.Fatalf("HAProxy map entry of %s: %q (%v), want %s", sessionID, m[sessionID], err, wantSig)
	}
	assigned := w.event(mark, livegatev1.EventType_EVENT_TYPE_ENDPOINT_ASSIGNED)
	ep := w.endpoint(sessionID)
	if got := assigned.Event.GetEndpointAssigned(); got.GetSessionId() != sessionID || !slices.Equal(got.GetPublicUdpPorts(), ep.GetPublicUdpPorts()) {
		t.Errorf("endpoint_assigned %v, KV endpoint %v", got, ep)
	}
	return ep
}

// endpoint waits for the edge's endpoint of sessionID in livegate_endpoints and checks it.
func (w *walk) endpoint(sessionID string) *livegatev1.Endpoint {
	t := w.t
	t.Helper()
	var ep *livegatev1.Endpoint
	w.eventually("endpoint of "+sessionID, func() error {
		var err error
		ep, err = w.d.Obs.Endpoint(w.ctx, w.n.InstanceID)
		if err != nil {
			return err
		}
		if ep == nil || ep.GetSessionId() != sessionID {
			return fmt.Errorf("endpoint %v", ep)
		}
		return nil
	})
	if ep.GetEdgeId() != edgeID || ep.GetPublicHost() != netns.EdgePublic.String() || ep.GetSignalingPort() != stack.SignalingPort {
		t.Fatalf("endpoint %v: want edge %s, host %s, port %d", ep, edgeID, netns.EdgePublic, stack.SignalingPort)
	}
	if len(ep.GetPublicUdpPorts()) != 1 || ep.GetPublicUdpPorts()[0] < 10500 || ep.GetPublicUdpPorts()[0] > 10599 {
		t.Fatalf("endpoint %v: want one public UDP port in %s", ep, stack.MediaPorts)
	}
	return ep
}

// connectAndProbe opens the client's websocket through the edge (the app sees its client
// connect), then probes DTLS-SRTP media through the session's public UDP port.
func (w *walk) connectAndProbe(s *session) {
	t := w.t
	t.Helper()
	mark := w.d.Obs.Mark()
	s.ws = w.dial(s.id)
	w.logf("signaling: websocket through %s upgraded in %s (subprotocol %s echoed)", w.d.PublicSignaling(), s.ws.Handshake.Round(time.Millisecond), s.ws.Protocol)
	w.event(mark, livegatev1.EventType_EVENT_TYPE_CLIENT_CONNECTED)
	w.waitReady(readyActive)
	w.probeMedia(s)
}

// leave closes the client's websocket, the client going away, and returns the observer's mark
// from just before, for the events that follow.
func (w *walk) leave(ws *wsclient.Conn) int {
	w.t.Helper()
	mark := w.d.Obs.Mark()
	if err := ws.Close(); err != nil {
		w.t.Fatalf("close websocket: %v", err)
	}
	return mark
}

func (w *walk) dial(sessionID string) *wsclient.Conn {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(w.ctx, 10*time.Second)
	defer cancel()
	c, err := wsclient.Dial(ctx, w.d.Topo.Client.Dial, w.d.PublicSignaling(), sessionID)
	if err != nil {
		w.t.Fatalf("client websocket for session %s: %v", sessionID, err)
	}
	return c
}

// refused checks that the edge answers 404 for a session it no longer routes.
func (w *walk) refused(sessionID string) {
	w.t.Helper()
	w.eventually("edge refuses session "+sessionID, func() error {
		ctx, cancel := context.WithTimeout(w.ctx, 5*time.Second)
		defer cancel()
		c, err := wsclient.Dial(ctx, w.d.Topo.Client.Dial, w.d.PublicSignaling(), sessionID)
		if err == nil {
			c.Abort()
			return errors.New("websocket still upgraded")
		}
		var se *wsclient.StatusError
		if !errors.As(err, &se) || se.Code != 404 {
			return fmt.Errorf("want HTTP 404, got %w", err)
		}
		return nil
	})
}

// probeMedia handshakes DTLS-SRTP from the client namespace through the session's public UDP
// port and checks that the kernel forwarded it: the echoes came back, the edge's DNAT map sends
// the port to the node's app and conntrack holds entries for the flow.
func (w *walk) probeMedia(s *session) {
	t := w.t
	t.Helper()
	port := s.endpoint.GetPublicUdpPorts()[0]
	target := fmt.Sprintf("%s:%d", netns.EdgePublic, port)
	ctx, cancel := context.WithTimeout(w.ctx, 30*time.Second)
	defer cancel()
	rep, err := w.d.ProbeMedia(ctx, target, 50)
	if err != nil {
		t.Fatalf("media probe through %s: %v", target, err)
	}
	// Loopback-like veths lose nothing, but two busy cores may drop a packet now and then.
	if rep.Received == 0 || rep.Loss > 0.2 {
		t.Fatalf("media through %s: %d of %d echoed", target, rep.Received, rep.Sent)
	}
	w.logf("media through %s: handshake %s, %d/%d echoed, rtt p50 %s", target, rep.Handshake.Round(time.Microsecond), rep.Received, rep.Sent, rep.RTTp50)
	if got, want := w.dnatBackend(port), netip.AddrPortFrom(netns.NodeAddr(w.n.Index), stack.AppMediaPort); got != want {
		t.Errorf("DNAT map: public port %d -> %s, want %s", port, got, want)
	}
	if n := w.conntrack(port, false); n == 0 {
		t.Errorf("no conntrack entry for public port %d after the probe", port)
	}
}

// probeCommand runs `livegate-edgeproxy probe` in the client namespace, as an operator would: a
// websocket of its own, marked as the probe's so the app does not take it for the client, and
// DTLS-SRTP media.
func (w *walk) probeCommand(s *session) {
	t := w.t
	t.Helper()
	ctx, cancel := context.WithTimeout(w.ctx, 30*time.Second)
	defer cancel()
	out, err := w.d.Probe(ctx, "--insecure",
		"--signaling", "wss://"+w.d.PublicSignaling()+"/sign_in", "--session-id", s.id,
		"--media", fmt.Sprintf("udp://%s:%d", netns.EdgePublic, s.endpoint.GetPublicUdpPorts()[0]),
		"--count", "50", "--rate", "100")
	if err != nil {
		t.Fatalf("livegate-edgeproxy probe: %v", err)
	}
	if !strings.Contains(out, "all 2 checks passed") {
		t.Fatalf("livegate-edgeproxy probe: %s", out)
	}
	w.logf("livegate-edgeproxy probe: %s", strings.ReplaceAll(strings.TrimSpace(out), "\n", " | "))
}

// disconnectAndResume: the client leaves (the session waits for it), then comes back on the
// same public endpoint.
func (w *walk) disconnectAndResume(s *session) {
	t := w.t
	t.Helper()
	mark := w.leave(s.ws)
	w.event(mark, livegatev1.EventType_EVENT_TYPE_CLIENT_DISCONNECTED)
	ar := w.event(mark, livegatev1.EventType_EVENT_TYPE_SESSION_AWAITING_RESUME)
	if got := ar.Event.GetAwaitingResume().GetResumeTimeout().AsDuration(); got != time.Duration(resumeTimeoutSeconds)*time.Second {
		t.Errorf("awaiting_resume timeout %s, want %ds", got, resumeTimeoutSeconds)
	}
	w.waitReady(readyAwaitingResume)
	// The route stays while the session waits: same session, same public port.
	ep := w.endpoint(s.id)
	if ep.GetPublicUdpPorts()[0] != s.endpoint.GetPublicUdpPorts()[0] {
		t.Fatalf("public port changed while awaiting resume: %v, was %v", ep, s.endpoint)
	}
	mark = w.d.Obs.Mark()
	s.ws = w.dial(s.id)
	w.event(mark, livegatev1.EventType_EVENT_TYPE_SESSION_RESUMED)
	w.waitReady(readyActive)
	w.logf("session %s resumed on %s and udp %d", s.id, w.d.PublicSignaling(), s.endpoint.GetPublicUdpPorts()[0])
	w.probeMedia(s)
}

// endByResumeTimeout: the client leaves for good; the resume window runs out, the session ends
// with recycle, the agent exits and the edge removes everything.
func (w *walk) endByResumeTimeout(s session) {
	t := w.t
	t.Helper()
	mark := w.leave(s.ws)
	w.event(mark, livegatev1.EventType_EVENT_TYPE_SESSION_AWAITING_RESUME)
	w.waitReady(readyAwaitingResume, readyActive)
	ended := w.event(mark, livegatev1.EventType_EVENT_TYPE_SESSION_ENDED)
	if se := ended.Event.GetSessionEnded(); se.GetReason() != "resume_timeout" || !se.GetRecycle() {
		t.Errorf("session_ended %v, want reason resume_timeout with recycle", se)
	}
	// Until it has quit, the agent tells session managers to recycle the instance.
	if r, err := w.n.Ready(w.ctx); err == nil && r != readyEnded {
		t.Errorf("/v1/streaming/ready after the session ended: %s, want %s", r, readyEnded)
	}
	if err := w.n.Agent.Wait(15 * time.Second); err != nil {
		t.Fatalf("agent did not exit after the session ended (quitOnSessionEnded): %v", err)
	}
	if code := w.n.Agent.ExitCode(); code != 0 {
		t.Errorf("agent exit code %d, want 0", code)
	}
	w.logf("session %s ended (resume_timeout); agent exited with code 0", s.id)
	w.gone(mark, s)
}

// endGracefullyThenNext: endsession while the client is still connected; the instance waits for
// the client to leave, then is ready for the next session with a fresh id and route.
func (w *walk) endGracefullyThenNext(s session) session {
	t := w.t
	t.Helper()
	mark := w.d.Obs.Mark()
	status, err := w.n.EndSession(w.ctx, s.id, true)
	if err != nil || status != "COMPLETE" {
		t.Fatalf("endsession graceful: %q, %v; want COMPLETE", status, err)
	}
	ended := w.event(mark, livegatev1.EventType_EVENT_TYPE_SESSION_ENDED)
	if se := ended.Event.GetSessionEnded(); se.GetReason() != "graceful" || se.GetRecycle() {
		t.Errorf("session_ended %v, want reason graceful without recycle", se)
	}
	w.waitReady(readyWaitingClient)
	w.gone(mark, s)
	if n := w.n.Agent; n.Exited() {
		t.Fatalf("agent exited with quitOnSessionEnded off: %v", n.Err())
	}
	mark = w.leave(s.ws)
	w.waitReady(readyForConnection, readyWaitingClient)
	next := w.readySession(mark)
	if next.id == s.id {
		t.Fatalf("next session id %q is the previous one's", next.id)
	}
	w.logf("session %s ended (graceful); next session %s ready", s.id, next.id)
	w.refused(s.id)
	return next
}

// crashAndExpire kills the agent with SIGKILL: nobody deletes the route, so its lease must run
// out and the edge must remove everything by itself.
func (w *walk) crashAndExpire(s session) {
	w.t.Helper()
	mark := w.d.Obs.Mark()
	w.n.Agent.Kill()
	w.logf("agent killed (SIGKILL); waiting for the route's %s lease to run out", leaseTTL)
	w.gone(mark, s)
}

// gone checks that the edge removed the session: route_removed, no route or endpoint keys, no
// HAProxy map entry (the edge answers 404), no DNAT map element, no conntrack entry.
func (w *walk) gone(mark int, s session) {
	t := w.t
	t.Helper()
	w.event(mark, livegatev1.EventType_EVENT_TYPE_ROUTE_REMOVED)
	port := s.endpoint.GetPublicUdpPorts()[0]
	w.eventually("session "+s.id+" removed everywhere", func() error {
		if r, err := w.d.Obs.Route(w.ctx, w.n.InstanceID); err != nil || (r != nil && r.GetSessionId() == s.id) {
			return fmt.Errorf("route still there: %v %v", r, err)
		}
		if ep, err := w.d.Obs.Endpoint(w.ctx, w.n.InstanceID); err != nil || (ep != nil && ep.GetSessionId() == s.id) {
			return fmt.Errorf("endpoint still there: %v %v", ep, err)
		}
		if m, err := w.d.HAProxyMap(w.ctx); err != nil || m[s.id] != "" {
			return fmt.Errorf("HAProxy map entry left: %q %v", m[s.id], err)
		}
		if b := w.dnatBackend(port); b.IsValid() {
			return fmt.Errorf("DNAT map still maps port %d to %s", port, b)
		}
		if n := w.conntrack(port, w.translatedOnly); n != 0 {
			return fmt.Errorf("%d conntrack entries left for port %d", n, port)
		}
		return nil
	})
	w.refused(s.id)
	// The real edge knows its flows from the kernel's conntrack events: no deletion walked the
	// kernel's table.
	if all, byFilter := edgeMetric(w.ctx, t, w.d, "livegate_edge_conntrack_deletions_total"),
		edgeMetric(w.ctx, t, w.d, "livegate_edge_conntrack_filter_deletions_total"); all == 0 || byFilter != 0 {
		t.Errorf("conntrack deletions: %v, %v of them by filter; want some, none by filter", all, byFilter)
	}
	w.logf("session %s: route, endpoint, map entry, DNAT map element and conntrack entries of udp %d gone", s.id, port)
}

// dnatBackend is where the edge's DNAT map sends a public port; not valid when it has no element
// for the port.
func (w *walk) dnatBackend(port uint32) netip.AddrPort {
	m, err := stack.DNATMap(w.ctx, w.d.Topo.Edge)
	if err != nil {
		w.t.Fatal(err)
	}
	return m[int(port)]
}

// conntrack counts the edge's UDP conntrack entries addressed to a public port, only those DNATed
// to an app when translated.
func (w *walk) conntrack(port uint32, translated bool) int {
	n, err := stack.Conntrack(w.ctx, w.d.Topo.Edge, int(port), translated)
	if err != nil {
		w.t.Fatal(err)
	}
	return n
}

// agentEventsInOrder checks that the agent's events, as an orchestrator received them, contain
// want in this order. The edge's events interleave freely, so only the agent's are compared.
func (w *walk) agentEventsInOrder(want ...string) {
	w.t.Helper()
	var got []string
	for _, r := range w.d.Obs.Events() {
		if r.Event.GetInstanceId() == w.n.InstanceID && strings.HasPrefix(r.Event.GetSource(), "livegate-agent/") {
			got = append(got, events.TypeToken(r.Event.GetType()))
		}
	}
	i := 0
	for _, g := range got {
		if i < len(want) && g == want[i] {
			i++
		}
	}
	if i < len(want) {
		w.t.Errorf("agent events %v: want %v in this order (missing from %q on)", got, want, want[i])
	}
}

// event waits for the node's first event of type et after mark.
func (w *walk) event(mark int, et livegatev1.EventType) observer.Received {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(w.ctx, 20*time.Second)
	defer cancel()
	r, err := w.d.Obs.Wait(ctx, mark, w.n.InstanceID, et)
	if err != nil {
		w.t.Fatal(err)
	}
	if err := r.CheckEnvelope(); err != nil {
		w.t.Errorf("%s event: %v", et, err)
	}
	if r.Event.GetPool() != pool {
		w.t.Errorf("%s event pool %q, want %q", et, r.Event.GetPool(), pool)
	}
	return r
}

// waitReady polls /v1/streaming/ready until it answers want; any answer outside want and
// allowed on the way fails the test.
func (w *walk) waitReady(want stack.Ready, allowed ...stack.Ready) {
	t := w.t
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	var last stack.Ready
	var lastErr error
	for time.Now().Before(deadline) {
		r, err := w.n.Ready(w.ctx)
		last, lastErr = r, err
		if err == nil {
			if r == want {
				return
			}
			ok := false
			for _, a := range allowed {
				ok = ok || r == a
			}
			if !ok {
				t.Fatalf("/v1/streaming/ready answered %s while waiting for %s", r, want)
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("/v1/streaming/ready: want %s, last %s (%v)", want, last, lastErr)
}

// eventually retries check for up to 20 s.
func (w *walk) eventually(what string, check func() error) {
	w.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	var err error
	for time.Now().Before(deadline) {
		if err = check(); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	w.t.Fatalf("%s: %v", what, err)
}
