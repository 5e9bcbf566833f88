package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
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
	pool = "cluster"
	// The agents' default lease and the edges' default TTL: a stream whose leader died has none
	// for up to the election timeout of JetStream's Raft groups (4 to 9 s), and a lease must
	// outlast that. The lease is what "unrouted too long" is measured by.
	leaseTTL  = 15 * time.Second
	edgeTTL   = 15 * time.Second
	heartbeat = 2 * time.Second
	resync    = 2 * time.Second
	kvTimeout = 3 * time.Second
)

// The topology is a stack.Lab's public and lan networks: the edges on both, the nodes, the NATS
// servers and the hub (the test's own client) on the lan.
var natsAddrs = []netip.Addr{stack.LabNATSLAN(1), stack.LabNATSLAN(2), stack.LabNATSLAN(3)}

func natsURL(k int) string { return fmt.Sprintf("nats://%s:%d", natsAddrs[k], stack.NATSPort) }

// allURLs lists the three servers, as every agent is told.
func allURLs() string {
	var urls []string
	for k := range natsAddrs {
		urls = append(urls, natsURL(k))
	}
	return strings.Join(urls, ",")
}

var built stack.Built

func TestMain(m *testing.M) { built.Main(m) }

type env struct {
	t     *testing.T
	ctx   context.Context
	dir   string
	bins  stack.Binaries
	lab   *stack.Lab
	nats  []*natsNode
	edges []*edge
	nodes []*node
	// js is the test's own client of the cluster, knowing all three servers.
	nc *nats.Conn
	js jetstream.JetStream
	kv *kvstore.Buckets
}

// natsNode is server k (from 0) of the cluster.
type natsNode struct {
	k int
	*stack.NATSServer
}

// edge is edge k (from 1) of the pool.
type edge struct {
	k int
	*stack.LabEdge
}

type node struct {
	i        int
	instance string
	ns       *netns.Namespace
	agent    *proc.Proc
}

func newEnv(t *testing.T, nodes int) *env {
	t.Helper()
	stack.RequireRoot(t, "sudo go test ./e2e/cluster/")
	if _, err := natstest.Binary(); err != nil {
		t.Skipf("cluster: %v (make deps installs nats-server)", err)
	}
	bins := built.For(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	// Made before the Lab, so it is removed after the Lab's processes stopped (cleanups run last
	// first): a server or edge still running could write into it while it goes.
	dir := t.TempDir()
	lab := stack.LabFor(ctx, t, prefix, "LIVEGATE_CLUSTER_LOGS")
	if dir := os.Getenv("LIVEGATE_CLUSTER_LOGDIR"); dir != "" {
		lab.Procs.Output = func(name string) io.Writer {
			f, err := os.Create(filepath.Join(dir, name+"-"+strconv.FormatInt(time.Now().UnixNano(), 36)+".log"))
			if err != nil {
				t.Errorf("process log: %v", err)
				return nil
			}
			return f
		}
	}
	e := &env{t: t, ctx: ctx, dir: dir, bins: bins, lab: lab}
	t.Cleanup(func() {
		if e.nc != nil {
			e.nc.Close()
		}
	})
	start := time.Now()
	if err := e.build(nodes); err != nil {
		t.Fatal(err)
	}
	t.Logf("deployment %s (3 NATS servers, %d edges, %d nodes) up in %s", e.lab.ID, len(e.edges), len(e.nodes), since(start))
	return e
}

func (e *env) build(nodes int) error {
	ctx := e.ctx
	if err := e.lab.Bridge(ctx, "bp", netip.Addr{}); err != nil {
		return err
	}
	// The test's own client reaches the cluster from the hub.
	if err := e.lab.Bridge(ctx, "bl", stack.LabHubLAN); err != nil {
		return err
	}
	servers, err := e.lab.StartNATSServers(ctx, e.dir, "", natsAddrs...)
	if err != nil {
		return err
	}
	for k, srv := range servers {
		e.nats = append(e.nats, &natsNode{k: k, NATSServer: srv})
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

// NATS ------------------------------------------------------------------------------------------

// restart starts a killed server again on its store.
func (e *env) restart(s *natsNode) {
	e.t.Helper()
	if err := s.Start(e.ctx); err != nil {
		e.t.Fatal(err)
	}
	if err := s.Ready(e.ctx); err != nil {
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
	if err := s.NS.Run(e.ctx, "ip", "link", "set", e.lab.LinkName(stack.NATSRole(s.k), "l"), state); err != nil {
		e.t.Fatal(err)
	}
}

// dialCluster connects the test's own client and creates the buckets and the stream R3 (the
// edges and agents, started with --nats-replicas 3, find them so).
func (e *env) dialCluster() error {
	kv, err := stack.DialKV(e.ctx, allURLs(), 30*time.Second, []kvstore.EnsureOption{kvstore.WithReplicas(3)},
		nats.SetCustomDialer(e.lab.Hub.Dialer(2*time.Second)), nats.Name("livegate-cluster-test"),
		nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond), nats.PingInterval(time.Second), nats.MaxPingsOutstanding(2),
		nats.RetryOnFailedConnect(true))
	if err != nil {
		return fmt.Errorf("create R3 buckets: %w", err)
	}
	e.nc, e.js, e.kv = kv.NC, kv.JS, kv.Buckets
	return nil
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
		if s.Name == info.Cluster.Leader {
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
		if s.P.Exited() {
			continue
		}
		resp, err := s.NS.HTTPClient(2 * time.Second).Get(fmt.Sprintf("http://127.0.0.1:%d/connz?limit=1024", stack.NATSMonitorPort))
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
		names = append(names, "livegate-edgeproxy/"+g.ID)
	}
	for _, n := range e.nodes {
		names = append(names, "livegate-agent/"+n.instance)
	}
	for _, name := range names {
		s := on[name]
		where := "none"
		if s != nil {
			where = s.Name
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
	le, err := e.lab.AddEdge(e.ctx, fmt.Sprintf("edge%d", k), fmt.Sprintf("e%d", k), e.dir,
		stack.LabLink{Net: "p", Bridge: "bp", Addr: stack.LabEdgePublic(k)}, stack.LabLink{Net: "l", Bridge: "bl", Addr: stack.LabEdgeLAN(k)})
	if err != nil {
		return err
	}
	g := &edge{k: k, LabEdge: le}
	if err := e.lab.StartEdge(e.ctx, le, e.bins.Edge, stack.EdgeArgs(stack.EdgeConfig{
		ID: g.ID, Pool: pool, Public: stack.LabEdgePublic(k), NATSURL: natsURL(k - 1), NATSReplicas: 3, StateDir: g.Dir,
		MediaPorts: stack.MediaPorts, Resync: resync, Heartbeat: heartbeat, TTL: edgeTTL,
		LogLevel: "debug",
	})); err != nil {
		return err
	}
	e.edges = append(e.edges, g)
	return g.WaitHealthy(e.ctx, 30*time.Second)
}

func (g *edge) showMap(ctx context.Context) (map[string]string, error) {
	return g.HAProxy().ShowMap(ctx)
}

// dnatPorts counts the public ports the edge's DNAT map forwards.
func (g *edge) dnatPorts(ctx context.Context) (int, error) {
	m, err := stack.DNATMap(ctx, g.NS)
	return len(m), err
}

// addNode starts node i's demo app and an agent that knows all three servers.
func (e *env) addNode(i int) error {
	role := fmt.Sprintf("n%d", i)
	ns, err := e.lab.AddNS(e.ctx, role)
	if err != nil {
		return err
	}
	if err := e.lab.Link(e.ctx, ns, role, "l", "bl", stack.LabNodeLAN(i)); err != nil {
		return err
	}
	n := &node{i: i, instance: fmt.Sprintf("node%d", i), ns: ns}
	if n.agent, err = e.lab.Procs.StartAgent(e.ctx, "agent"+strconv.Itoa(i), ns, e.bins.Agent, stack.AgentConfig{
		InstanceID: n.instance, Pool: pool, NATSURL: allURLs(), BackendIP: stack.LabNodeLAN(i), LeaseTTL: leaseTTL, NATSReplicas: 3,
		LogLevel: "debug",
	}); err != nil {
		return err
	}
	if _, err := e.lab.Procs.StartApp(e.ctx, "app"+strconv.Itoa(i), ns, e.bins.DemoApp, stack.DemoAppArgs(false)...); err != nil {
		return err
	}
	e.nodes = append(e.nodes, n)
	return nil
}

// Checks ------------------------------------------------------------------------------------------

// eventually retries check every 100 ms until it passes or timeout (generous) runs out.
func (e *env) eventually(timeout time.Duration, what string, check func() error) time.Duration {
	e.t.Helper()
	return stack.Eventually(e.ctx, e.t, timeout, 100*time.Millisecond, what, check)
}

func keys(ctx context.Context, kv jetstream.KeyValue) ([]string, error) {
	return stack.Keys(ctx, kv, kvTimeout)
}

func since(t time.Time) time.Duration { return time.Since(t).Round(time.Millisecond) }
