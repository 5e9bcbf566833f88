package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/livegate/livegate/e2e/internal/netns"
	"github.com/livegate/livegate/e2e/internal/proc"
	"github.com/livegate/livegate/e2e/internal/stack"
	"github.com/livegate/livegate/pkg/kvstore"
	"github.com/livegate/livegate/pkg/natstest"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// prefix starts every namespace and interface this package creates ("lgf" is the fault suite's,
// "lget" the lifecycle test's).
const prefix = "lgk"

const (
	pool        = "cluster"
	natsPort    = stack.NATSPort
	clusterPort = 6222
	monitorPort = 8222
	// The agents' default lease and the edges' default TTL: a stream whose leader died has none
	// for up to the election timeout of JetStream's Raft groups (4 to 9 s), and a lease must
	// outlast that. The lease is what "unrouted too long" is measured by.
	leaseTTL  = 15 * time.Second
	edgeTTL   = 15 * time.Second
	heartbeat = 2 * time.Second
	resync    = 2 * time.Second
	kvTimeout = 3 * time.Second
)

// The topology, all in 198.18.0.0/15: a hub namespace bridges a public and a node network.
//
//	public 198.18.1.0/24  edge k .10+k
//	lan    198.19.0.0/24  edge k .10+k, node i .100+i, NATS server k .200+k, hub .254
var (
	hubLAN    = netip.MustParseAddr("198.19.0.254")
	natsAddrs = []netip.Addr{netip.MustParseAddr("198.19.0.201"), netip.MustParseAddr("198.19.0.202"), netip.MustParseAddr("198.19.0.203")}
)

func edgePublic(k int) netip.Addr { return netip.AddrFrom4([4]byte{198, 18, 1, byte(10 + k)}) }
func edgeLAN(k int) netip.Addr    { return netip.AddrFrom4([4]byte{198, 19, 0, byte(10 + k)}) }
func nodeLAN(i int) netip.Addr    { return netip.AddrFrom4([4]byte{198, 19, 0, byte(100 + i)}) }

func natsURL(k int) string { return fmt.Sprintf("nats://%s:%d", natsAddrs[k], natsPort) }

// allURLs lists the three servers, as every agent is told.
func allURLs() string {
	var urls []string
	for k := range natsAddrs {
		urls = append(urls, natsURL(k))
	}
	return strings.Join(urls, ",")
}

var built stack.Built

func TestMain(m *testing.M) {
	code := m.Run()
	built.Remove()
	os.Exit(code)
}

type env struct {
	t     *testing.T
	ctx   context.Context
	id    string
	dir   string
	bins  stack.Binaries
	hub   *netns.Namespace
	nss   []*netns.Namespace
	nats  []*natsNode
	edges []*edge
	nodes []*node
	// js is the test's own client of the cluster, knowing all three servers.
	nc *nats.Conn
	js jetstream.JetStream
	kv *kvstore.Buckets

	mu    sync.Mutex
	procs []*proc.Proc
}

type natsNode struct {
	k    int
	name string
	ns   *netns.Namespace
	conf string
	p    *proc.Proc
}

type edge struct {
	k  int
	id string
	ns *netns.Namespace
	// dir holds the edge's state: HAProxy's socket and map.
	dir string
	p   *proc.Proc
}

type node struct {
	i        int
	instance string
	ns       *netns.Namespace
	agent    *proc.Proc
}

func newEnv(t *testing.T, nodes int) *env {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("cluster: needs root (network namespaces, iptables); run `sudo go test ./e2e/cluster/`")
	}
	nsrv, err := natstest.Binary()
	if err != nil {
		t.Skipf("cluster: %v (make deps installs nats-server)", err)
	}
	bins, err := built.Binaries()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	if swept, err := netns.Sweep(ctx, prefix); err != nil {
		t.Fatalf("sweep stale namespaces: %v", err)
	} else if len(swept) > 0 {
		t.Logf("swept namespaces of a killed run: %v", swept)
	}
	id := prefix + strconv.FormatInt(int64(os.Getpid()), 36) + "-" + strconv.FormatInt(time.Now().UnixNano()%1296, 36)
	e := &env{t: t, ctx: ctx, id: id, dir: t.TempDir(), bins: bins}
	t.Cleanup(e.close)
	start := time.Now()
	if err := e.build(nsrv, nodes); err != nil {
		t.Fatal(err)
	}
	t.Logf("deployment %s (3 NATS servers, %d edges, %d nodes) up in %s", id, len(e.edges), len(e.nodes), since(start))
	return e
}

func (e *env) build(natsBin string, nodes int) error {
	ctx := e.ctx
	var err error
	if e.hub, err = e.addNS("h"); err != nil {
		return err
	}
	for _, br := range []string{"bp", "bl"} {
		if err := e.hub.Run(ctx, "ip", "link", "add", br, "type", "bridge"); err != nil {
			return err
		}
		if err := e.hub.Run(ctx, "ip", "link", "set", br, "up"); err != nil {
			return err
		}
	}
	// The test's own client reaches the cluster from the hub.
	if err := e.hub.Run(ctx, "ip", "addr", "add", netip.PrefixFrom(hubLAN, 24).String(), "dev", "bl"); err != nil {
		return err
	}
	for k := range natsAddrs {
		if err := e.addNATS(k, natsBin); err != nil {
			return err
		}
	}
	for _, s := range e.nats {
		if err := stack.WaitTCP(ctx, s.p, s.ns, fmt.Sprintf("127.0.0.1:%d", natsPort)); err != nil {
			return err
		}
	}
	if err := e.dialCluster(); err != nil {
		return err
	}
	for k := 1; k <= 2; k++ {
		if err := e.addEdge(k); err != nil {
			return err
		}
	}
	for i := 1; i <= nodes; i++ {
		if err := e.addNode(i); err != nil {
			return err
		}
	}
	return nil
}

func (e *env) addNS(role string) (*netns.Namespace, error) {
	ns, err := netns.Add(e.ctx, e.id+role)
	if err != nil {
		return nil, err
	}
	e.nss = append(e.nss, ns)
	return ns, nil
}

// link joins ns to a hub bridge: interface id+role+net inside ns, the same in upper case on the
// hub's side.
func (e *env) link(ns *netns.Namespace, role, net, bridge string, addr netip.Addr) error {
	return netns.Bridged(e.ctx, e.hub, bridge, ns, e.id+role+net, e.id+role+strings.ToUpper(net), netip.PrefixFrom(addr, 24))
}

func (e *env) start(name string, ns *netns.Namespace, bin string, args ...string) (*proc.Proc, error) {
	var tee io.Writer
	if dir := os.Getenv("LIVEGATE_CLUSTER_LOGDIR"); dir != "" {
		f, err := os.Create(filepath.Join(dir, name+"-"+strconv.FormatInt(time.Now().UnixNano(), 36)+".log"))
		if err != nil {
			return nil, err
		}
		tee = f
	}
	p, err := proc.Start(name, ns.Command(context.WithoutCancel(e.ctx), bin, args...), tee)
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	e.procs = append(e.procs, p)
	e.mu.Unlock()
	return p, nil
}

// NATS ------------------------------------------------------------------------------------------

// addNATS writes server k's configuration (a cluster of three, as deploy/nats documents it, with
// short pings so a cut is noticed in seconds) and starts it.
func (e *env) addNATS(k int, bin string) error {
	role := fmt.Sprintf("s%d", k+1)
	ns, err := e.addNS(role)
	if err != nil {
		return err
	}
	if err := e.link(ns, role, "l", "bl", natsAddrs[k]); err != nil {
		return err
	}
	var routes []string
	for j, a := range natsAddrs {
		if j != k {
			routes = append(routes, fmt.Sprintf("nats-route://%s:%d", a, clusterPort))
		}
	}
	s := &natsNode{k: k, name: fmt.Sprintf("nats-%d", k+1), ns: ns, conf: filepath.Join(e.dir, role+".conf")}
	text := fmt.Sprintf(`server_name: %s
listen: "0.0.0.0:%d"
http: "0.0.0.0:%d"
client_advertise: "%s:%d"
ping_interval: "1s"
ping_max: 3
jetstream {
  store_dir: %q
  sync_interval: always
}
cluster {
  name: livegate
  listen: "0.0.0.0:%d"
  routes: [%s]
}
`, s.name, natsPort, monitorPort, natsAddrs[k], natsPort, filepath.Join(e.dir, role+"-js"), clusterPort, strings.Join(routes, ", "))
	if err := os.WriteFile(s.conf, []byte(text), 0o600); err != nil {
		return fmt.Errorf("nats config: %w", err)
	}
	e.nats = append(e.nats, s)
	return s.start(e, bin)
}

func (s *natsNode) start(e *env, bin string) error {
	p, err := e.start(s.name, s.ns, bin, "-c", s.conf)
	if err != nil {
		return err
	}
	s.p = p
	return nil
}

// restart starts a killed server again on its store.
func (e *env) restart(s *natsNode) {
	e.t.Helper()
	bin, err := natstest.Binary()
	if err != nil {
		e.t.Fatal(err)
	}
	if err := s.start(e, bin); err != nil {
		e.t.Fatal(err)
	}
	if err := stack.WaitTCP(e.ctx, s.p, s.ns, fmt.Sprintf("127.0.0.1:%d", natsPort)); err != nil {
		e.t.Fatal(err)
	}
}

// partition cuts server s off the network (its only link down): peers and clients alike see it
// fall silent, as when its host drops off the network.
func (e *env) partition(s *natsNode, cut bool) {
	e.t.Helper()
	state := "up"
	if cut {
		state = "down"
	}
	if err := s.ns.Run(e.ctx, "ip", "link", "set", e.id+fmt.Sprintf("s%dl", s.k+1), state); err != nil {
		e.t.Fatal(err)
	}
}

// dialCluster connects the test's own client and creates the buckets and the stream R3 (the
// edges and agents, started with --nats-replicas 3, find them so).
func (e *env) dialCluster() error {
	var err error
	e.nc, err = nats.Connect(allURLs(), nats.SetCustomDialer(e.hub.Dialer(2*time.Second)), nats.Name("livegate-cluster-test"),
		nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond), nats.PingInterval(time.Second), nats.MaxPingsOutstanding(2),
		nats.RetryOnFailedConnect(true))
	if err != nil {
		return fmt.Errorf("test client: %w", err)
	}
	if e.js, err = jetstream.New(e.nc); err != nil {
		return err
	}
	// JetStream needs its meta leader elected first: retry until the cluster takes the buckets.
	ctx, cancel := context.WithTimeout(e.ctx, 30*time.Second)
	defer cancel()
	for {
		cctx, ccancel := context.WithTimeout(ctx, kvTimeout)
		e.kv, err = kvstore.Ensure(cctx, e.js, kvstore.WithReplicas(3))
		ccancel()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("create R3 buckets: %w", err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// leader names the server that leads stream.
func (e *env) leader(stream string) (*natsNode, error) {
	ctx, cancel := context.WithTimeout(e.ctx, kvTimeout)
	defer cancel()
	st, err := e.js.Stream(ctx, stream)
	if err != nil {
		return nil, err
	}
	info := st.CachedInfo()
	if info.Config.Replicas != 3 || info.Cluster == nil {
		return nil, fmt.Errorf("stream %s: %d replicas, cluster %v", stream, info.Config.Replicas, info.Cluster)
	}
	for _, s := range e.nats {
		if s.name == info.Cluster.Leader {
			return s, nil
		}
	}
	return nil, fmt.Errorf("stream %s: leader %q is none of the servers", stream, info.Cluster.Leader)
}

// clients maps each client connection's name to the server it is connected to, from the servers'
// monitoring.
func (e *env) clients() map[string]*natsNode {
	out := map[string]*natsNode{}
	for _, s := range e.nats {
		if s.p.Exited() {
			continue
		}
		resp, err := s.ns.HTTPClient(2 * time.Second).Get(fmt.Sprintf("http://127.0.0.1:%d/connz?limit=1024", monitorPort))
		if err != nil {
			continue
		}
		var body struct {
			Connections []struct {
				Name string `json:"name"`
			} `json:"connections"`
		}
		err = json.NewDecoder(resp.Body).Decode(&body)
		_ = resp.Body.Close()
		if err != nil {
			continue
		}
		for _, c := range body.Connections {
			out[c.Name] = s
		}
	}
	return out
}

// placement says which server each edge and agent is connected to, and names the server with the
// most of them.
func (e *env) placement() (string, *natsNode) {
	on := e.clients()
	var parts []string
	count := map[*natsNode]int{}
	var names []string
	for _, g := range e.edges {
		names = append(names, "livegate-edgeproxy/"+g.id)
	}
	for _, n := range e.nodes {
		names = append(names, "livegate-agent/"+n.instance)
	}
	for _, name := range names {
		s := on[name]
		where := "none"
		if s != nil {
			where = s.name
			count[s]++
		}
		parts = append(parts, strings.TrimPrefix(strings.TrimPrefix(name, "livegate-edgeproxy/"), "livegate-agent/")+"→"+where)
	}
	var busiest *natsNode
	for _, s := range e.nats {
		if busiest == nil || count[s] > count[busiest] {
			busiest = s
		}
	}
	return strings.Join(parts, " "), busiest
}

// Edges and nodes -------------------------------------------------------------------------------

// addEdge starts edge k with only server k as its seed (k = 1, 2): the two edges start on
// different servers and learn the others from the cluster.
func (e *env) addEdge(k int) error {
	role := fmt.Sprintf("e%d", k)
	ns, err := e.addNS(role)
	if err != nil {
		return err
	}
	if err := ns.Sysctl("net.ipv4.ip_forward", "1"); err != nil {
		return err
	}
	if err := e.link(ns, role, "p", "bp", edgePublic(k)); err != nil {
		return err
	}
	if err := e.link(ns, role, "l", "bl", edgeLAN(k)); err != nil {
		return err
	}
	g := &edge{k: k, id: fmt.Sprintf("edge%d", k), ns: ns, dir: filepath.Join(e.dir, role)}
	if err := os.MkdirAll(g.dir, 0o700); err != nil {
		return err
	}
	g.p, err = e.start(g.id, ns, e.bins.Edge,
		"--edge-id", g.id, "--pool", pool,
		"--public-host", edgePublic(k).String(), "--public-ip", edgePublic(k).String(),
		"--nats-url", natsURL(k-1), "--nats-replicas", "3",
		"--signaling-port", strconv.Itoa(stack.SignalingPort),
		"--state-dir", g.dir, "--tls-self-signed", "--haproxy-stop-on-exit",
		"--media-ports", stack.MediaPorts, "--backend-cidrs", "198.19.0.0/16",
		"--resync", resync.String(), "--heartbeat", heartbeat.String(), "--edge-ttl", edgeTTL.String(),
		"--log-format", "console", "--log-level", "debug",
	)
	if err != nil {
		return err
	}
	e.edges = append(e.edges, g)
	return stack.WaitHealthy(e.ctx, g.p, ns, 30*time.Second)
}

func (g *edge) showMap(ctx context.Context) (map[string]string, error) {
	return stack.ShowMap(ctx, filepath.Join(g.dir, "haproxy.sock"), filepath.Join(g.dir, "sessions.map"))
}

// dnatRules counts the edge's DNAT rules.
func (g *edge) dnatRules(ctx context.Context) (int, error) {
	out, err := g.ns.Output(ctx, "iptables-save", "-t", "nat")
	if err != nil {
		return 0, err
	}
	n := 0
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "-A LIVEGATE-") && strings.Contains(line, "-j DNAT") {
			n++
		}
	}
	return n, nil
}

// addNode starts node i's demo app and an agent that knows all three servers.
func (e *env) addNode(i int) error {
	role := fmt.Sprintf("n%d", i)
	ns, err := e.addNS(role)
	if err != nil {
		return err
	}
	if err := e.link(ns, role, "l", "bl", nodeLAN(i)); err != nil {
		return err
	}
	n := &node{i: i, instance: fmt.Sprintf("node%d", i), ns: ns}
	args := append(stack.AgentArgs(stack.AgentConfig{
		InstanceID: n.instance, Pool: pool, NATSURL: allURLs(), BackendIP: nodeLAN(i), LeaseTTL: leaseTTL,
	}), "--nats-replicas", "3", "--log-level", "debug")
	if n.agent, err = e.start("agent"+strconv.Itoa(i), ns, e.bins.Agent, args...); err != nil {
		return err
	}
	if err := stack.WaitTCP(e.ctx, n.agent, ns, fmt.Sprintf("127.0.0.1:%d", stack.AgentPort)); err != nil {
		return err
	}
	app, err := e.start("app"+strconv.Itoa(i), ns, e.bins.DemoApp,
		"--signaling-addr", fmt.Sprintf(":%d", stack.AppSignalingPort), "--media-addr", fmt.Sprintf(":%d", stack.AppMediaPort),
		"--log-format", "console")
	if err != nil {
		return err
	}
	e.nodes = append(e.nodes, n)
	return stack.WaitTCP(e.ctx, app, ns, fmt.Sprintf("127.0.0.1:%d", stack.AppSignalingPort))
}

// Teardown ----------------------------------------------------------------------------------------

const logTail = 16 << 10

func (e *env) close() {
	t := e.t
	e.mu.Lock()
	procs := append([]*proc.Proc(nil), e.procs...)
	e.mu.Unlock()
	if t.Failed() || os.Getenv("LIVEGATE_CLUSTER_LOGS") != "" {
		for _, p := range procs {
			out := p.Output()
			if len(out) > logTail {
				out = "[...]" + out[len(out)-logTail:]
			}
			t.Logf("----- %s (pid %d, exited %t, code %d) -----\n%s", p.Name, p.Pid(), p.Exited(), p.ExitCode(), out)
		}
	}
	if e.nc != nil {
		e.nc.Close()
	}
	// Agents first (their goodbyes need NATS), then the edges, then NATS; what does not stop in
	// time dies with its namespace.
	var wg sync.WaitGroup
	for i := len(procs) - 1; i >= 0; i-- {
		wg.Go(func() { _ = procs[i].Stop(3 * time.Second) })
	}
	wg.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := len(e.nss) - 1; i >= 0; i-- {
		if err := e.nss[i].Delete(ctx); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	}
	if left, _ := netns.List(ctx, e.id); len(left) > 0 {
		t.Errorf("namespaces left behind: %v", left)
	}
}

// Checks ------------------------------------------------------------------------------------------

// eventually retries check every 100 ms until it passes or timeout (generous) runs out.
func (e *env) eventually(timeout time.Duration, what string, check func() error) time.Duration {
	e.t.Helper()
	start := time.Now()
	deadline := start.Add(timeout)
	for {
		err := check()
		if err == nil {
			return time.Since(start)
		}
		if time.Now().After(deadline) || e.ctx.Err() != nil {
			e.t.Fatalf("%s: not after %s: %v", what, timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func keys(ctx context.Context, kv jetstream.KeyValue) ([]string, error) {
	cctx, cancel := context.WithTimeout(ctx, kvTimeout)
	defer cancel()
	ks, err := kv.Keys(cctx)
	if errors.Is(err, jetstream.ErrNoKeysFound) {
		return nil, nil
	}
	return ks, err
}

func since(t time.Time) time.Duration { return time.Since(t).Round(time.Millisecond) }
