package scalebench

// The deployment's start-up and teardown, on the shared e2e harness: a stack.Lab with NATS (one
// server or a cluster of three) and three edges.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/livegate/livegate/e2e/bench/edgebench"
	"github.com/livegate/livegate/e2e/internal/netns"
	"github.com/livegate/livegate/e2e/internal/stack"
	"github.com/livegate/livegate/pkg/kvstore"
	"github.com/livegate/livegate/pkg/natsconn"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

const (
	pool = "scale"
	// mediaPorts is wide enough that no edge runs out of public ports, quarantined ones (those of
	// lost claims) included: the port pool is not what this benchmark measures.
	mediaPorts = "10000-44999"
	kvTimeout  = 3 * time.Second
)

// The Lab's topology (stack.Lab): edges on the public network and the lan, the client on the
// public network, NATS servers and the node on the lan, and the bench in the hub.
var (
	nodeLAN    = stack.LabNodeLAN(0)
	edgePublic = stack.LabEdgePublic
	edgeLAN    = stack.LabEdgeLAN
	natsAddr   = stack.LabNATSLAN
)

// deployment is NATS (one server or a cluster of three), three edges of one pool, a node
// namespace whose UDP echo answers every backend port, and a client namespace on the public side.
type deployment struct {
	lab      *stack.Lab
	dir      string
	edgeBin  string
	node     *netns.Namespace
	client   *netns.Namespace
	servers  []*server
	edges    []*edge
	nc       *nats.Conn
	js       jetstream.JetStream
	kv       *kvstore.Buckets
	echo     *net.UDPConn
	replicas int
}

// server is NATS server k (from 0).
type server struct {
	k int
	*stack.NATSServer
}

// edge is edge k (from 0).
type edge struct {
	k int
	*stack.LabEdge
}

func (s *server) url() string { return fmt.Sprintf("nats://%s:%d", natsAddr(s.k), stack.NATSPort) }

// deploy builds the namespaces and starts NATS (servers: 1 or 3) and three edges. On error
// everything already started is torn down.
func deploy(ctx context.Context, prefix, edgeBin, natsBin string, servers int) (d *deployment, err error) {
	dir, err := os.MkdirTemp("", "lgb-scale-")
	if err != nil {
		return nil, err
	}
	d = &deployment{dir: dir, edgeBin: edgeBin, replicas: servers}
	defer func() {
		if err != nil {
			err = errors.Join(err, d.close())
			d = nil
		}
	}()
	if d.lab, _, err = stack.NewLab(ctx, prefix); err != nil {
		return d, err
	}
	if err := d.lab.Bridge(ctx, "bp", netip.Addr{}); err != nil {
		return d, err
	}
	if err := d.lab.Bridge(ctx, "bl", stack.LabHubLAN); err != nil {
		return d, err
	}
	if d.node, err = d.lab.AddNS(ctx, "n"); err != nil {
		return d, err
	}
	if err := d.lab.Link(ctx, d.node, "n", "l", "bl", nodeLAN); err != nil {
		return d, err
	}
	if d.echo, err = edgebench.StartEcho(ctx, d.node); err != nil {
		return d, err
	}
	if d.client, err = d.lab.AddNS(ctx, "c"); err != nil {
		return d, err
	}
	if err := d.lab.Link(ctx, d.client, "c", "p", "bp", stack.LabClient); err != nil {
		return d, err
	}
	var addrs []netip.Addr
	for k := range servers {
		addrs = append(addrs, natsAddr(k))
	}
	started, err := d.lab.StartNATSServers(ctx, d.dir, natsBin, addrs...)
	if err != nil {
		return d, err
	}
	for k, srv := range started {
		d.servers = append(d.servers, &server{k: k, NATSServer: srv})
	}
	if err := d.dial(ctx); err != nil {
		return d, err
	}
	for k := range 3 {
		if err := d.addEdge(ctx, k); err != nil {
			return d, err
		}
	}
	for _, g := range d.edges {
		if err := g.WaitHealthy(ctx, 30*time.Second); err != nil {
			return d, err
		}
	}
	return d, nil
}

// restart starts a killed server again on its store.
func (d *deployment) restart(ctx context.Context, s *server) error {
	if err := s.Start(ctx); err != nil {
		return err
	}
	return s.Ready(ctx)
}

func (d *deployment) urls() []string {
	var out []string
	for _, s := range d.servers {
		out = append(out, s.url())
	}
	return out
}

// connect is a client in the hub namespace connected as the binaries connect; servers narrows
// the seed list (nil: all).
func (d *deployment) connect(ctx context.Context, name string, servers ...*server) (*nats.Conn, error) {
	urls := d.urls()
	if len(servers) > 0 {
		urls = nil
		for _, s := range servers {
			urls = append(urls, s.url())
		}
	}
	return natsconn.Connect(ctx, natsconn.Config{URLs: urls, Name: name, StaleAfter: 6 * time.Second}, zerolog.Nop(),
		nats.SetCustomDialer(d.lab.Hub.Dialer(2*time.Second)))
}

// dial connects the bench's own client and creates the buckets with the deployment's replica
// count, retrying until a cluster has elected its JetStream meta leader.
func (d *deployment) dial(ctx context.Context) error {
	var err error
	if d.nc, err = d.connect(ctx, "livegate-bench"); err != nil {
		return err
	}
	if d.js, err = jetstream.New(d.nc); err != nil {
		return err
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		cctx, cancel := context.WithTimeout(ctx, kvTimeout)
		d.kv, err = kvstore.Ensure(cctx, d.js, kvstore.WithReplicas(d.replicas))
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("create buckets with %d replicas: %w", d.replicas, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// addEdge starts edge k with server k as its only seed (on a cluster the three edges start on
// different servers and learn the others from it).
func (d *deployment) addEdge(ctx context.Context, k int) error {
	le, err := d.lab.AddEdge(ctx, fmt.Sprintf("scale%d", k+1), fmt.Sprintf("e%d", k+1), d.dir,
		stack.LabLink{Net: "p", Bridge: "bp", Addr: edgePublic(k)}, stack.LabLink{Net: "l", Bridge: "bl", Addr: edgeLAN(k)})
	if err != nil {
		return err
	}
	g := &edge{k: k, LabEdge: le}
	seed := d.servers[k%len(d.servers)]
	if err := d.lab.StartEdge(ctx, le, d.edgeBin, stack.EdgeArgs(stack.EdgeConfig{
		ID: g.ID, Pool: pool, Public: edgePublic(k), NATSURL: seed.url(), NATSReplicas: d.replicas, StateDir: g.Dir,
		MediaPorts: mediaPorts, BackendCIDRs: netip.PrefixFrom(nodeLAN, 24).Masked().String(),
		LogFormat: "json", LogLevel: "warn", Extra: []string{"--signaling-bind", edgePublic(k).String()},
	})); err != nil {
		return err
	}
	d.edges = append(d.edges, g)
	return nil
}

// leader names the server leading stream.
func (d *deployment) leader(ctx context.Context, stream string) (*server, error) {
	cctx, cancel := context.WithTimeout(ctx, kvTimeout)
	defer cancel()
	st, err := d.js.Stream(cctx, stream)
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", stream, err)
	}
	info := st.CachedInfo()
	if info.Cluster == nil {
		return nil, fmt.Errorf("stream %s: no cluster information", stream)
	}
	for _, s := range d.servers {
		if s.Name == info.Cluster.Leader {
			return s, nil
		}
	}
	return nil, fmt.Errorf("stream %s: leader %q is none of the servers", stream, info.Cluster.Leader)
}

// varz are a server's message counters (its /varz): all of them include route traffic between
// the servers, the client ones only that with clients.
type varz struct {
	InMsgs         int64 `json:"in_msgs"`
	OutMsgs        int64 `json:"out_msgs"`
	InBytes        int64 `json:"in_bytes"`
	OutBytes       int64 `json:"out_bytes"`
	InClientMsgs   int64 `json:"in_client_msgs"`
	OutClientMsgs  int64 `json:"out_client_msgs"`
	InClientBytes  int64 `json:"in_client_bytes"`
	OutClientBytes int64 `json:"out_client_bytes"`
}

func (v varz) add(o varz) varz {
	return varz{v.InMsgs + o.InMsgs, v.OutMsgs + o.OutMsgs, v.InBytes + o.InBytes, v.OutBytes + o.OutBytes,
		v.InClientMsgs + o.InClientMsgs, v.OutClientMsgs + o.OutClientMsgs, v.InClientBytes + o.InClientBytes, v.OutClientBytes + o.OutClientBytes}
}

func (v varz) sub(o varz) varz {
	return v.add(varz{-o.InMsgs, -o.OutMsgs, -o.InBytes, -o.OutBytes, -o.InClientMsgs, -o.OutClientMsgs, -o.InClientBytes, -o.OutClientBytes})
}

// traffic sums /varz over the running servers.
func (d *deployment) traffic() (varz, error) {
	var sum varz
	for _, s := range d.servers {
		if s.P.Exited() {
			return sum, fmt.Errorf("%s is down", s.Name)
		}
		resp, err := s.NS.HTTPClient(2 * time.Second).Get(fmt.Sprintf("http://127.0.0.1:%d/varz", stack.NATSMonitorPort))
		if err != nil {
			return sum, fmt.Errorf("%s /varz: %w", s.Name, err)
		}
		var v varz
		err = json.NewDecoder(resp.Body).Decode(&v)
		_ = resp.Body.Close()
		if err != nil {
			return sum, fmt.Errorf("%s /varz: %w", s.Name, err)
		}
		sum = sum.add(v)
	}
	return sum, nil
}

// close stops everything, edges before NATS (the last started first); what does not stop in
// time dies with its namespace. It reports namespaces it could not remove.
func (d *deployment) close() error {
	if d.nc != nil {
		d.nc.Close()
	}
	if d.echo != nil {
		_ = d.echo.Close()
	}
	var err error
	if d.lab != nil {
		err = d.lab.Close(5 * time.Second)
	}
	_ = os.RemoveAll(d.dir)
	return err
}
