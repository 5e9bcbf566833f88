package faults

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/livegate/livegate/e2e/internal/netns"
	"github.com/livegate/livegate/e2e/internal/observer"
	"github.com/livegate/livegate/e2e/internal/proc"
	"github.com/livegate/livegate/e2e/internal/stack"
	"github.com/livegate/livegate/e2e/internal/wsclient"
	"github.com/livegate/livegate/pkg/dtlssrtp"
	"github.com/livegate/livegate/pkg/kvstore"
	"github.com/livegate/livegate/pkg/wire"
	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// prefix starts every namespace and interface this package creates; the lifecycle test uses
// "lget" and the demo "lged", so none sweeps another's.
const prefix = "lgf"

const (
	pool = "faults"
	// mediaFirst..mediaLast is the edges' public UDP range: small, so a leak shows quickly.
	mediaFirst = 10500
	mediaLast  = 10599
	// Short timings keep the cases fast; every wait on them is a generous poll, never an assert.
	resync     = 2 * time.Second
	heartbeat  = time.Second
	edgeTTL    = 3 * time.Second
	quarantine = 30 * time.Second
	leaseTTL   = 4 * time.Second
	// kvTimeout bounds each KV call of the test's own, so a wait around one keeps its own bound
	// while NATS is away.
	kvTimeout = 5 * time.Second
)

// The faults topology is a stack.Lab's: the hub holds the public, ctl and lan bridges and the
// NATS server (on ctl for the edges, on lan for the agents, so the two can be cut apart); node
// i's app listens at stack.LabNodeLAN(i).

var built stack.Built

func TestMain(m *testing.M) { built.Main(m) }

// config describes one case's deployment.
type config struct {
	edges int
	// attached runs edge 1 against an HAProxy the test runs itself (--haproxy-socket).
	attached bool
	// nodes: an agent beside the demo app when agent is set, else the app alone (a backend for
	// routes the test writes to KV itself).
	nodes []nodeConfig
	// mediaPorts and portQuarantine override the edges' defaults when set.
	mediaPorts     string
	portQuarantine time.Duration
}

type nodeConfig struct {
	agent bool
	// resume is the agent's resume window; zero ends a session as soon as its client leaves.
	resume time.Duration
}

// twoEdgePool is two edges of one pool in front of node 1, whose agent's client may resume within
// 30 s (through the other edge, when its own goes), and node 2, the backend of the routes the
// test writes itself.
func twoEdgePool() config {
	return config{edges: 2, nodes: []nodeConfig{{agent: true, resume: 30 * time.Second}, {}}}
}

// env is one case's running deployment.
type env struct {
	t      *testing.T
	ctx    context.Context
	id     string
	dir    string
	bins   stack.Binaries
	lab    *stack.Lab
	hub    *netns.Namespace
	client *netns.Namespace
	edges  []*edge
	nodes  []*node
	nats   *stack.NATSServer
	obs    *observer.Observer
	kv     *kvClient
	cfg    config
}

// edge is edge k (from 1), started with args.
type edge struct {
	k int
	*stack.LabEdge
	args    []string
	haproxy *proc.Proc // attached mode: the HAProxy the test runs
	e       *env
}

type node struct {
	i        int
	instance string
	ns       *netns.Namespace
	agent    *proc.Proc
	app      *proc.Proc
}

// newEnv builds the topology and starts NATS, the edges and the nodes. Everything is torn down
// by t.Cleanup, on failure too; the leftovers of a run killed before it could clean up are swept
// first.
func newEnv(t *testing.T, cfg config) *env {
	t.Helper()
	stack.RequireRoot(t, "sudo go test ./e2e/faults/")
	b := built.For(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	// Made before the Lab, so it is removed after the Lab's processes stopped (cleanups run last
	// first): an edge still running could write into it while it goes.
	dir := t.TempDir()
	lab := stack.LabFor(ctx, t, prefix, "LIVEGATE_FAULTS_LOGS")
	e := &env{t: t, ctx: ctx, id: lab.ID, dir: dir, bins: b, lab: lab, hub: lab.Hub, cfg: cfg}
	start := time.Now()
	t.Cleanup(func() {
		// The test's own connections go first: the processes stop after them.
		if e.obs != nil {
			e.obs.Close()
		}
		if e.kv != nil {
			e.kv.Close()
		}
	})
	if err := e.build(); err != nil {
		t.Fatal(err)
	}
	t.Logf("deployment %s (%d edges, %d nodes) up in %s", e.id, len(e.edges), len(e.nodes), since(start))
	return e
}

func (e *env) build() error {
	ctx := e.ctx
	for _, br := range []struct {
		name string
		addr netip.Addr
	}{{"bp", netip.Addr{}}, {"bc", stack.LabHubCtl}, {"bl", stack.LabHubLAN}} {
		if err := e.lab.Bridge(ctx, br.name, br.addr); err != nil {
			return err
		}
	}
	var err error
	if e.client, err = e.lab.AddNS(ctx, "c"); err != nil {
		return err
	}
	if err := e.lab.Link(ctx, e.client, "c", "p", "bp", stack.LabClient); err != nil {
		return err
	}
	if err := e.startNATS(); err != nil {
		return err
	}
	if e.obs, err = observer.Connect(ctx, e.natsURL(), e.natsOpts()...); err != nil {
		return err
	}
	for k := 1; k <= max(e.cfg.edges, 1); k++ {
		g, err := e.addEdge(k)
		if err != nil {
			return err
		}
		if err := g.start(); err != nil {
			return err
		}
	}
	if e.kv, err = e.dialKV(); err != nil {
		return err
	}
	for i, nc := range e.cfg.nodes {
		if err := e.addNode(i+1, nc); err != nil {
			return err
		}
	}
	return nil
}

// NATS ---------------------------------------------------------------------------------------

func (e *env) natsURL() string { return fmt.Sprintf("nats://127.0.0.1:%d", stack.NATSPort) }

// natsOpts are the test's own connections' options: from inside the hub, reconnecting at once
// and forever, so a restart of the server costs the observer nothing.
func (e *env) natsOpts() []nats.Option {
	return []nats.Option{
		nats.SetCustomDialer(e.hub.Dialer(2 * time.Second)),
		nats.MaxReconnects(-1), nats.ReconnectWait(100 * time.Millisecond), nats.ReconnectJitter(0, 0),
	}
}

// startNATS starts nats-server with JetStream in the hub (again, after stopNATS), on a store
// that survives restarts, pinging clients every second: a partitioned edge is noticed in seconds.
func (e *env) startNATS() error {
	var err error
	if e.nats == nil {
		e.nats, err = e.lab.Procs.StartNATS(e.ctx, e.hub, stack.NATSConfig{Name: e.id, Dir: filepath.Join(e.dir, "nats"), FastPings: true})
	} else {
		err = e.nats.Start(e.ctx)
	}
	if err != nil {
		return err
	}
	return e.nats.Ready(e.ctx)
}

// stopNATS stops the server: SIGKILL when crash is set, else SIGTERM (an orderly restart).
func (e *env) stopNATS(crash bool) { e.nats.Stop(crash) }

// blockAgents makes NATS refuse (or accept again) connections on the agents' side (the lan
// bridge): the edge's side (ctl) is untouched.
func (e *env) blockAgents(block bool) {
	op := "-D"
	if block {
		op = "-I"
	}
	if err := e.hub.Run(e.ctx, "iptables", op, "INPUT", "-d", stack.LabHubLAN.String(), "-p", "tcp", "--dport", strconv.Itoa(stack.NATSPort),
		"-j", "REJECT", "--reject-with", "tcp-reset"); err != nil {
		e.t.Errorf("block agents %t: %v", block, err)
	}
}

// kvClient is the test's own handle on the buckets: it writes routes as an agent would.
type kvClient struct{ *stack.KV }

func (e *env) dialKV() (*kvClient, error) {
	kv, err := stack.DialKV(e.ctx, e.natsURL(), kvTimeout, nil, append(e.natsOpts(), nats.Name("livegate-faults-kv"))...)
	if err != nil {
		return nil, err
	}
	return &kvClient{kv}, nil
}

// putRoute writes a pool route for key to node's app, as its agent would.
func (c *kvClient) putRoute(ctx context.Context, key, session string, backend netip.Addr) error {
	data, err := wire.Marshal(&livegatev1.Route{
		SessionId: session, InstanceId: key, Pool: pool,
		SignalingBackend: netip.AddrPortFrom(backend, stack.AppSignalingPort).String(),
		MediaBackends:    []string{netip.AddrPortFrom(backend, stack.AppMediaPort).String()},
		LeaseTtl:         durationpb.New(time.Hour), RenewedAt: timestamppb.Now(),
	})
	if err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, kvTimeout)
	defer cancel()
	if _, err := c.Routes.Put(cctx, key, data); err != nil {
		return fmt.Errorf("put route %s: %w", key, err)
	}
	return nil
}

func (c *kvClient) deleteRoute(ctx context.Context, key string) error {
	cctx, cancel := context.WithTimeout(ctx, kvTimeout)
	defer cancel()
	if err := c.Routes.Delete(cctx, key); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("delete route %s: %w", key, err)
	}
	return nil
}

// heartbeat reports whether edge g's heartbeat key is in KV.
func (e *env) heartbeat(g *edge) (bool, error) {
	ctx, cancel := context.WithTimeout(e.ctx, kvTimeout)
	defer cancel()
	_, err := e.kv.Edges.Get(ctx, g.ID)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return false, nil
	}
	return err == nil, err
}

// route reads instance's route; nil when absent.
func (e *env) route(instance string) (*livegatev1.Route, error) {
	ctx, cancel := context.WithTimeout(e.ctx, kvTimeout)
	defer cancel()
	return e.obs.Route(ctx, instance)
}

// errNoEndpoint is endpoint's answer for an instance without one.
var errNoEndpoint = errors.New("no endpoint")

// endpoint reads what instance's endpoint publishes: its session, edge and public port. Anything
// a caller could not use as it stands is an error: no endpoint (errNoEndpoint), an edge not of
// this deployment, or other than one port.
func (e *env) endpoint(instance string) (session, error) {
	ctx, cancel := context.WithTimeout(e.ctx, kvTimeout)
	defer cancel()
	ep, err := e.obs.Endpoint(ctx, instance)
	if err != nil {
		return session{}, err
	}
	if ep == nil {
		return session{}, fmt.Errorf("%s: %w", instance, errNoEndpoint)
	}
	g := e.edgeByID(ep.GetEdgeId())
	if g == nil || len(ep.GetPublicUdpPorts()) != 1 {
		return session{}, fmt.Errorf("endpoint of %s names edge %q and ports %v: want an edge of the deployment and one port",
			instance, ep.GetEdgeId(), ep.GetPublicUdpPorts())
	}
	return session{instance: instance, id: ep.GetSessionId(), edge: g, port: int(ep.GetPublicUdpPorts()[0])}, nil
}

// Edges -----------------------------------------------------------------------------------------

func (e *env) addEdge(k int) (*edge, error) {
	ctx := e.ctx
	le, err := e.lab.AddEdge(ctx, fmt.Sprintf("edge%d", k), fmt.Sprintf("e%d", k), e.dir, stack.LabLink{Net: "p", Bridge: "bp", Addr: stack.LabEdgePublic(k)},
		stack.LabLink{Net: "c", Bridge: "bc", Addr: stack.LabEdgeCtl(k)}, stack.LabLink{Net: "l", Bridge: "bl", Addr: stack.LabEdgeLAN(k)})
	if err != nil {
		return nil, err
	}
	g := &edge{k: k, LabEdge: le, e: e}
	c := stack.EdgeConfig{
		ID: g.ID, Pool: pool, Public: stack.LabEdgePublic(k), NATSURL: fmt.Sprintf("nats://%s:%d", stack.LabHubCtl, stack.NATSPort), StateDir: g.Dir,
		MediaPorts: fmt.Sprintf("%d-%d", mediaFirst, mediaLast), PortQuarantine: quarantine,
		Resync: resync, Heartbeat: heartbeat, TTL: edgeTTL,
	}
	if e.cfg.mediaPorts != "" {
		c.MediaPorts = e.cfg.mediaPorts
	}
	if e.cfg.portQuarantine > 0 {
		c.PortQuarantine = e.cfg.portQuarantine
	}
	// Otherwise the namespace goes away with the case, so HAProxy must not outlive a stopped
	// edge; a SIGKILLed edge leaves it running, which is what the edge-kill case is about.
	if e.cfg.attached && k == 1 {
		if err := stack.PrepareAttached(ctx, e.bins.Edge, g.Dir, stack.LabEdgePublic(k)); err != nil {
			return nil, err
		}
		if err := g.startHAProxy(); err != nil {
			return nil, err
		}
		c.HAProxySocket = g.HAProxy().Socket
	}
	g.args = stack.EdgeArgs(c)
	e.edges = append(e.edges, g)
	return g, nil
}

func (g *edge) public() string {
	return net.JoinHostPort(stack.LabEdgePublic(g.k).String(), strconv.Itoa(stack.SignalingPort))
}

// start starts the edge process (again) and waits until it reports healthy: synced with KV and
// HAProxy.
func (g *edge) start() error {
	if g.haproxy != nil && g.haproxy.Exited() {
		if err := g.startHAProxy(); err != nil {
			return err
		}
	}
	if err := g.e.lab.StartEdge(g.e.ctx, g.LabEdge, g.e.bins.Edge, g.args); err != nil {
		return err
	}
	return g.waitHealthy(30 * time.Second)
}

func (g *edge) waitHealthy(timeout time.Duration) error { return g.WaitHealthy(g.e.ctx, timeout) }

// startHAProxy starts the operator's HAProxy of attached mode, as its own supervisor would.
func (g *edge) startHAProxy() error {
	p, err := g.e.lab.Procs.StartAttached(g.e.ctx, "haproxy-"+g.ID, g.NS, g.Dir, stack.LabEdgePublic(g.k))
	if p != nil {
		g.haproxy = p
	}
	return err
}

// showMap is HAProxy's session map right now.
func (g *edge) showMap(ctx context.Context) (map[string]string, error) {
	return g.HAProxy().ShowMap(ctx)
}

// workerPid is the HAProxy worker that answers the runtime API.
func (g *edge) workerPid(ctx context.Context) (int, error) { return g.HAProxy().WorkerPid(ctx) }

// haproxyPids are the pids of the edge's HAProxy master and of its worker that answers the
// runtime API, for the cases that signal them.
func (g *edge) haproxyPids(t *testing.T) (master, worker int) {
	t.Helper()
	worker, err := g.workerPid(g.e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if master, err = g.haproxyMaster(); err != nil {
		t.Fatal(err)
	}
	return master, worker
}

// haproxyMaster is the pid of the HAProxy master: the one the test runs in attached mode, else
// the one the edge recorded.
func (g *edge) haproxyMaster() (int, error) {
	if g.haproxy != nil {
		return g.haproxy.Pid(), nil
	}
	return stack.SupervisedMaster(g.Dir)
}

// dnatPorts lists the public ports the edge's DNAT map forwards.
func (g *edge) dnatPorts(ctx context.Context) (map[int]bool, error) {
	m, err := stack.DNATMap(ctx, g.NS)
	if err != nil {
		return nil, err
	}
	ports := map[int]bool{}
	for p := range m {
		ports[p] = true
	}
	return ports, nil
}

// conntrackPorts counts the edge's forwarded UDP conntrack entries per public media port.
func (g *edge) conntrackPorts(ctx context.Context) (map[int]int, error) {
	return stack.ForwardedConntrack(ctx, g.NS, mediaFirst, mediaLast)
}

// killAll is what a crashed host looks like: the edge and everything else in its namespace
// (HAProxy) get SIGKILL.
func (g *edge) killAll(ctx context.Context) error {
	g.P.Kill()
	pids, err := g.NS.Pids(ctx)
	if err != nil {
		return err
	}
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	return nil
}

// Nodes ------------------------------------------------------------------------------------------

func (e *env) addNode(i int, nc nodeConfig) error {
	ctx := e.ctx
	role := fmt.Sprintf("n%d", i)
	ns, err := e.lab.AddNS(ctx, role)
	if err != nil {
		return err
	}
	if err := e.lab.Link(ctx, ns, role, "l", "bl", stack.LabNodeLAN(i)); err != nil {
		return err
	}
	n := &node{i: i, instance: fmt.Sprintf("node%d", i), ns: ns}
	e.nodes = append(e.nodes, n)
	if nc.agent {
		// The agent serves the next session instead of quitting; without a resume window a
		// session ends as soon as its client leaves.
		if n.agent, err = e.lab.Procs.StartAgent(ctx, "agent"+strconv.Itoa(i), ns, e.bins.Agent, stack.AgentConfig{
			InstanceID: n.instance, Pool: pool, NATSHost: stack.LabHubLAN, BackendIP: stack.LabNodeLAN(i),
			LeaseTTL: leaseTTL, ResumeTimeoutSeconds: int(nc.resume.Seconds()),
		}); err != nil {
			return err
		}
	}
	n.app, err = e.lab.Procs.StartApp(ctx, "app"+strconv.Itoa(i), ns, e.bins.DemoApp, stack.DemoAppArgs(!nc.agent)...)
	return err
}

// endSession calls the agent's /v1/streaming/endsession.
func (n *node) endSession(ctx context.Context, sessionID string, graceful bool) (string, error) {
	return stack.EndSession(ctx, n.ns, n.instance, sessionID, graceful)
}

// Sessions, clients, media -----------------------------------------------------------------------

// session is a routed session as a client sees it.
type session struct {
	instance string
	id       string
	edge     *edge
	port     int
}

func (s session) String() string {
	return fmt.Sprintf("%s/%s on %s udp %d", s.instance, s.id, s.edge.ID, s.port)
}

// routed waits until instance's route is programmed: an endpoint for the route's session (or
// for want, when set) that names one of the edges and one public port.
func (e *env) routed(instance, want string) session {
	e.t.Helper()
	var s session
	e.eventually(20*time.Second, "route of "+instance+" programmed", func() error {
		r, err := e.route(instance)
		if err != nil || r == nil {
			return fmt.Errorf("route %v: %v", r, err)
		}
		if want != "" && r.GetSessionId() != want {
			return fmt.Errorf("route carries session %s, want %s", r.GetSessionId(), want)
		}
		got, err := e.endpoint(instance)
		if err != nil {
			return err
		}
		if got.id != r.GetSessionId() {
			return fmt.Errorf("endpoint names session %s, want %s", got.id, r.GetSessionId())
		}
		m, err := got.edge.showMap(e.ctx)
		if err != nil || m[got.id] == "" {
			return fmt.Errorf("%s map has no %s (%v)", got.edge.ID, got.id, err)
		}
		s = got
		return nil
	})
	return s
}

// routeMany writes n routes, prefix1 to prefixN, to node 2's backends, each key's session
// sess-<key>, and waits until each is routed; it returns their sessions by key.
func (e *env) routeMany(prefix string, n int) map[string]session {
	e.t.Helper()
	var keys []string
	for i := 1; i <= n; i++ {
		key := fmt.Sprintf("%s%d", prefix, i)
		if err := e.kv.putRoute(e.ctx, key, "sess-"+key, stack.LabNodeLAN(2)); err != nil {
			e.t.Fatal(err)
		}
		keys = append(keys, key)
	}
	out := map[string]session{}
	for _, key := range keys {
		out[key] = e.routed(key, "sess-"+key)
	}
	return out
}

// allOn says why not every session in all is published as served by ed, under its own id.
func (e *env) allOn(all map[string]session, ed *edge) error {
	for k, was := range all {
		got, err := e.endpoint(k)
		if err != nil {
			return err
		}
		if got.edge != ed || got.id != was.id {
			return fmt.Errorf("endpoint of %s is %s, want session %s on %s", k, got, was.id, ed.ID)
		}
	}
	return nil
}

// poolSessions routes n sessions (see routeMany) beside node 1's on a two-edge pool, checks that
// each is served by exactly one edge, and returns them by key with the edge that serves node 1's
// session and the other.
func (e *env) poolSessions(prefix string, n int) (all map[string]session, node1s, other *edge) {
	e.t.Helper()
	all = e.routeMany(prefix, n)
	all["node1"] = e.routed("node1", "")
	served := e.exactlyOnce(all)
	e.t.Logf("figure: %d sessions split between the edges: edge1 %d, edge2 %d", len(all), served["edge1"], served["edge2"])
	node1s, other = all["node1"].edge, e.edges[0]
	if other == node1s {
		other = e.edges[1]
	}
	return all, node1s, other
}

// exactlyOnce checks that each session is in the map of exactly the edge its endpoint names,
// with a DNAT map element for its public port there and nowhere else; it returns how many each edge
// serves.
func (e *env) exactlyOnce(all map[string]session) map[string]int {
	e.t.Helper()
	served := map[string]int{}
	ctx, cancel := context.WithTimeout(e.ctx, 20*time.Second)
	defer cancel()
	maps := map[string]map[string]string{}
	dnat := map[string]map[int]bool{}
	for _, g := range e.edges {
		if g.P.Exited() {
			continue
		}
		m, err := g.showMap(ctx)
		if err != nil {
			e.t.Fatal(err)
		}
		maps[g.ID] = m
		if dnat[g.ID], err = g.dnatPorts(ctx); err != nil {
			e.t.Fatal(err)
		}
	}
	for k, s := range all {
		got, err := e.endpoint(k)
		if err != nil {
			e.t.Fatal(err)
		}
		owner, port := got.edge.ID, got.port
		served[owner]++
		for id, m := range maps {
			if in := m[s.id] != ""; in != (id == owner) {
				e.t.Errorf("session %s of %s: in %s's map %t, endpoint names %s", s.id, k, id, in, owner)
			}
			if id == owner && !dnat[id][port] {
				e.t.Errorf("session %s of %s: no DNAT map element for udp %d on %s", s.id, k, port, id)
			}
		}
	}
	return served
}

func (e *env) edgeByID(id string) *edge {
	for _, g := range e.edges {
		if g.ID == id {
			return g
		}
	}
	return nil
}

// dial opens a browser's signaling websocket for sessionID through edge g from the client
// namespace; the demo app echoes what it gets. A refused handshake returns the HTTP status.
func (e *env) dial(ctx context.Context, g *edge, sessionID string) (*wsclient.Conn, int, error) {
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	w, err := wsclient.Dial(dctx, e.client.Dial, g.public(), sessionID)
	if err != nil {
		code := 0
		if se := (*wsclient.StatusError)(nil); errors.As(err, &se) {
			code = se.Code
		}
		return nil, code, fmt.Errorf("websocket for %s through %s: %w", sessionID, g.ID, err)
	}
	return w, http.StatusSwitchingProtocols, nil
}

// mustDial opens a websocket or fails the test.
func (e *env) mustDial(g *edge, sessionID string) *wsclient.Conn {
	e.t.Helper()
	w, _, err := e.dial(e.ctx, g, sessionID)
	if err != nil {
		e.t.Fatal(err)
	}
	return w
}

// echo sends a message on w and waits (5 s at most) for the app's echo.
func (e *env) echo(w *wsclient.Conn) error {
	ctx, cancel := context.WithTimeout(e.ctx, 5*time.Second)
	defer cancel()
	return w.Echo(ctx)
}

// refused checks that edge g answers 404 for sessionID (eventually).
func (e *env) refused(g *edge, sessionID string) {
	e.t.Helper()
	e.eventually(10*time.Second, g.ID+" refuses "+sessionID, func() error {
		w, code, err := e.dial(e.ctx, g, sessionID)
		if err == nil {
			_ = w.Close()
			return errors.New("websocket still upgraded")
		}
		if code != http.StatusNotFound {
			return fmt.Errorf("want HTTP 404: %w", err)
		}
		return nil
	})
}

// startFlow sends media from the client through edge g's public port for about d, each packet
// echoed by the app.
func (e *env) startFlow(g *edge, port int, d time.Duration) *stack.Flow {
	addr := net.JoinHostPort(stack.LabEdgePublic(g.k).String(), strconv.Itoa(port))
	return stack.StartFlow(e.ctx, e.client.Dial, addr, d)
}

// flowing waits until the app echoes f's media: a fault injected sooner could hit the DTLS
// handshake instead of the flow it is about.
func (e *env) flowing(f *stack.Flow) {
	e.t.Helper()
	e.eventually(10*time.Second, "media echoed", func() error {
		if f.Echoed() > 0 {
			return nil
		}
		select {
		case <-f.Done():
			_, err := f.Result()
			return fmt.Errorf("the flow ended before any echo: %v", err)
		default:
			return errors.New("no echo yet")
		}
	})
}

// waitFlow returns f's report once it ended; maxLoss bounds the share of echoes lost.
func waitFlow(t *testing.T, f *stack.Flow, what string, maxLoss float64) *dtlssrtp.Report {
	t.Helper()
	rep, err := f.Result()
	if err != nil {
		t.Fatalf("%s: media: %v", what, err)
	}
	t.Logf("%s: media %s: %d/%d echoed (loss %.1f%%), rtt p50 %s max %s", what, rep.Addr, rep.Received, rep.Sent,
		100*rep.Loss, rep.RTTp50, rep.RTTMax)
	if rep.Loss > maxLoss {
		t.Errorf("%s: media loss %.1f%% over %.0f%%", what, 100*rep.Loss, 100*maxLoss)
	}
	return rep
}

// carriedOn checks that session s came through fault intact: its websocket w still echoes, its
// media flow lost at most 5%, and its endpoint is unchanged.
func (e *env) carriedOn(fault string, s session, w *wsclient.Conn, media *stack.Flow) {
	e.t.Helper()
	if err := e.echo(w); err != nil {
		e.t.Errorf("%s's websocket across %s: %v", s.instance, fault, err)
	}
	waitFlow(e.t, media, fault, 0.05)
	if err := e.unchanged(s); err != nil {
		e.t.Errorf("after %s: %v", fault, err)
	}
}

// unchanged reports how the endpoint of s's instance differs from s: session, edge or port.
func (e *env) unchanged(s session) error {
	got, err := e.endpoint(s.instance)
	if err != nil {
		return err
	}
	if got != s {
		return fmt.Errorf("endpoint of %s is %s, was %s", s.instance, got, s)
	}
	return nil
}

// probe checks media through a public port once (a short flow).
func (e *env) probe(g *edge, port int) error {
	rep, err := e.startFlow(g, port, time.Second).Result()
	if err != nil {
		return err
	}
	if rep.Received == 0 {
		return fmt.Errorf("media through %s udp %d: nothing echoed", g.ID, port)
	}
	return nil
}

// Checks --------------------------------------------------------------------------------------------

// eventually retries check every 50 ms until it passes or timeout (generous) runs out.
func (e *env) eventually(timeout time.Duration, what string, check func() error) time.Duration {
	e.t.Helper()
	return stack.Eventually(e.ctx, e.t, timeout, 50*time.Millisecond, what, check)
}

// clean checks that nothing leaked once every session is gone: no route or endpoint key, and on
// every running edge an empty HAProxy map and DNAT map and no conntrack entry of a public
// port.
func (e *env) clean(edges ...*edge) {
	e.t.Helper()
	if edges == nil {
		edges = e.edges
	}
	took := e.eventually(30*time.Second, "no leak", func() error {
		for _, b := range []struct {
			name string
			kv   jetstream.KeyValue
		}{{kvstore.RoutesBucket, e.kv.Routes}, {kvstore.EndpointsBucket, e.kv.Endpoints}} {
			ks, err := stack.Keys(e.ctx, b.kv, kvTimeout)
			if err != nil || len(ks) > 0 {
				return fmt.Errorf("%s keys left: %v %v", b.name, ks, err)
			}
		}
		for _, g := range edges {
			if m, err := g.showMap(e.ctx); err != nil || len(m) > 0 {
				return fmt.Errorf("%s HAProxy map entries left: %v %v", g.ID, m, err)
			}
			if ports, err := g.dnatPorts(e.ctx); err != nil || len(ports) > 0 {
				return fmt.Errorf("%s DNAT map elements left for ports %v %v", g.ID, ports, err)
			}
			if ports, err := g.conntrackPorts(e.ctx); err != nil || len(ports) > 0 {
				return fmt.Errorf("%s conntrack entries left for ports %v %v", g.ID, ports, err)
			}
		}
		return nil
	})
	e.t.Logf("no leak: routes, endpoints, HAProxy map, DNAT map and conntrack entries all empty (%s after the last session ended)", round(took))
}

// waitEvent waits up to 20 s for instance's first event of type et after mark.
func (e *env) waitEvent(mark int, instance string, et livegatev1.EventType) observer.Received {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(e.ctx, 20*time.Second)
	defer cancel()
	r, err := e.obs.Wait(ctx, mark, instance, et)
	if err != nil {
		e.t.Fatal(err)
	}
	return r
}

func since(t time.Time) time.Duration { return round(time.Since(t)) }

func round(d time.Duration) time.Duration { return d.Round(time.Millisecond) }
