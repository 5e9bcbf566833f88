package scalebench

// The deployment's start-up and teardown, kept in this one file (a trimmed copy of e2e/cluster's
// harness) so that it can move onto the shared e2e harness as a whole.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/livegate/livegate/e2e/internal/netns"
	"github.com/livegate/livegate/e2e/internal/proc"
	"github.com/livegate/livegate/e2e/internal/stack"
	"github.com/livegate/livegate/pkg/kvstore"
	"github.com/livegate/livegate/pkg/natsconn"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

const (
	pool        = "scale"
	natsPort    = 4222
	clusterPort = 6222
	monitorPort = 8222
	adminAddr   = "127.0.0.1:9470"
	// echoPort is where node's UDP echo listens; every backend port is redirected to it.
	echoPort = 29999
	// mediaPorts is wide enough that no edge runs out of public ports, quarantined ones (those of
	// lost claims) included: the port pool is not what this benchmark measures.
	mediaPorts = "10000-44999"
	kvTimeout  = 3 * time.Second
)

// The topology, all in 198.18.0.0/15: a hub namespace bridges a public and a LAN network.
//
//	public 198.18.1.0/24  edge k .10+k, client .100
//	lan    198.19.0.0/24  edge k .10+k, node .100, NATS server k .201+k, hub (the bench) .254
var (
	hubLAN     = netip.MustParseAddr("198.19.0.254")
	nodeLAN    = netip.MustParseAddr("198.19.0.100")
	clientAddr = netip.MustParseAddr("198.18.1.100")
)

func edgePublic(k int) netip.Addr { return netip.AddrFrom4([4]byte{198, 18, 1, byte(10 + k)}) }
func edgeLAN(k int) netip.Addr    { return netip.AddrFrom4([4]byte{198, 19, 0, byte(10 + k)}) }
func natsAddr(k int) netip.Addr   { return netip.AddrFrom4([4]byte{198, 19, 0, byte(201 + k)}) }

// deployment is NATS (one server or a cluster of three), three edges of one pool, a node
// namespace whose UDP echo answers every backend port, and a client namespace on the public side.
type deployment struct {
	id, dir  string
	natsBin  string
	edgeBin  string
	hub      *netns.Namespace
	node     *netns.Namespace
	client   *netns.Namespace
	nss      []*netns.Namespace
	servers  []*server
	edges    []*edge
	nc       *nats.Conn
	js       jetstream.JetStream
	kv       *kvstore.Buckets
	echo     *net.UDPConn
	replicas int
	mu       sync.Mutex
	procs    []*proc.Proc
}

type server struct {
	k    int
	name string
	ns   *netns.Namespace
	conf string
	p    *proc.Proc
}

type edge struct {
	k   int
	id  string
	ns  *netns.Namespace
	dir string
	p   *proc.Proc
}

func (s *server) url() string { return fmt.Sprintf("nats://%s:%d", natsAddr(s.k), natsPort) }

// deploy builds the namespaces and starts NATS (servers: 1 or 3) and three edges. On error
// everything already started is torn down.
func deploy(ctx context.Context, prefix, edgeBin, natsBin string, servers int) (d *deployment, err error) {
	dir, err := os.MkdirTemp("", "lgb-scale-")
	if err != nil {
		return nil, err
	}
	// Sweep (netns.Sweep) reads the creating pid from between the prefix and the first dash.
	id := prefix + strconv.FormatInt(int64(os.Getpid()), 36) + "-s" + strconv.Itoa(servers)
	d = &deployment{id: id, dir: dir, natsBin: natsBin, edgeBin: edgeBin, replicas: servers}
	defer func() {
		if err != nil {
			err = errors.Join(err, d.close())
			d = nil
		}
	}()
	if d.hub, err = d.addNS("h"); err != nil {
		return d, err
	}
	for _, br := range []string{"bp", "bl"} {
		if err := d.hub.Run(ctx, "ip", "link", "add", br, "type", "bridge"); err != nil {
			return d, err
		}
		if err := d.hub.Run(ctx, "ip", "link", "set", br, "up"); err != nil {
			return d, err
		}
	}
	if err := d.hub.Run(ctx, "ip", "addr", "add", netip.PrefixFrom(hubLAN, 24).String(), "dev", "bl"); err != nil {
		return d, err
	}
	if err := d.startEcho(ctx); err != nil {
		return d, err
	}
	if d.client, err = d.addNS("c"); err != nil {
		return d, err
	}
	if err := d.link(ctx, d.client, "c", "p", "bp", clientAddr); err != nil {
		return d, err
	}
	for k := range servers {
		if err := d.addServer(ctx, k, servers); err != nil {
			return d, err
		}
	}
	for _, s := range d.servers {
		if err := stack.WaitTCP(ctx, s.p, s.ns, fmt.Sprintf("127.0.0.1:%d", natsPort)); err != nil {
			return d, err
		}
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
		if err := stack.WaitHealthy(ctx, g.p, g.ns, 30*time.Second); err != nil {
			return d, err
		}
	}
	return d, nil
}

func (d *deployment) addNS(role string) (*netns.Namespace, error) {
	ns, err := netns.Add(context.Background(), d.id+role)
	if err != nil {
		return nil, err
	}
	d.nss = append(d.nss, ns)
	return ns, nil
}

// link joins ns to a hub bridge; interface names are at most 15 bytes.
func (d *deployment) link(ctx context.Context, ns *netns.Namespace, role, net, bridge string, addr netip.Addr) error {
	return netns.Bridged(ctx, d.hub, bridge, ns, d.id+role+net, d.id+role+strings.ToUpper(net), netip.PrefixFrom(addr, 24))
}

func (d *deployment) start(name string, ns *netns.Namespace, bin string, args ...string) (*proc.Proc, error) {
	p, err := proc.Start(name, ns.Command(context.Background(), bin, args...), nil)
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	d.procs = append(d.procs, p)
	d.mu.Unlock()
	return p, nil
}

// startEcho answers every UDP packet to a backend port of the node: the ports are redirected to
// one socket, so any number of routes can be probed.
func (d *deployment) startEcho(ctx context.Context) error {
	var err error
	if d.node, err = d.addNS("n"); err != nil {
		return err
	}
	if err := d.link(ctx, d.node, "n", "l", "bl", nodeLAN); err != nil {
		return err
	}
	if err := d.node.Run(ctx, "iptables", "-t", "nat", "-A", "PREROUTING", "-p", "udp", "--dport", "30000:32767",
		"-j", "REDIRECT", "--to-ports", strconv.Itoa(echoPort)); err != nil {
		return fmt.Errorf("node echo redirect: %w", err)
	}
	if err := d.node.Do(func() (err error) {
		d.echo, err = net.ListenUDP("udp4", &net.UDPAddr{Port: echoPort})
		return err
	}); err != nil {
		return fmt.Errorf("node echo: %w", err)
	}
	_ = d.echo.SetReadBuffer(4 << 20)
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := d.echo.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			_, _ = d.echo.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	return nil
}

// addServer writes server k's configuration (alone, or one of a cluster of three as deploy/nats
// documents it, with short pings so a dead peer is noticed in seconds) and starts it.
func (d *deployment) addServer(ctx context.Context, k, of int) error {
	role := fmt.Sprintf("s%d", k+1)
	ns, err := d.addNS(role)
	if err != nil {
		return err
	}
	if err := d.link(ctx, ns, role, "l", "bl", natsAddr(k)); err != nil {
		return err
	}
	s := &server{k: k, name: fmt.Sprintf("nats-%d", k+1), ns: ns, conf: filepath.Join(d.dir, role+".conf")}
	text := fmt.Sprintf("server_name: %s\nlisten: \"0.0.0.0:%d\"\nhttp: \"0.0.0.0:%d\"\nclient_advertise: \"%s:%d\"\nping_interval: \"1s\"\nping_max: 3\njetstream {\n  store_dir: %q\n}\n",
		s.name, natsPort, monitorPort, natsAddr(k), natsPort, filepath.Join(d.dir, role+"-js"))
	if of > 1 {
		var routes []string
		for j := range of {
			if j != k {
				routes = append(routes, fmt.Sprintf("nats-route://%s:%d", natsAddr(j), clusterPort))
			}
		}
		text += fmt.Sprintf("cluster {\n  name: livegate\n  listen: \"0.0.0.0:%d\"\n  routes: [%s]\n}\n", clusterPort, strings.Join(routes, ", "))
	}
	if err := os.WriteFile(s.conf, []byte(text), 0o600); err != nil {
		return fmt.Errorf("nats config: %w", err)
	}
	d.servers = append(d.servers, s)
	return d.startServer(s)
}

func (d *deployment) startServer(s *server) error {
	p, err := d.start(s.name, s.ns, d.natsBin, "-c", s.conf)
	if err != nil {
		return err
	}
	s.p = p
	return nil
}

// restart starts a killed server again on its store.
func (d *deployment) restart(ctx context.Context, s *server) error {
	if err := d.startServer(s); err != nil {
		return err
	}
	return stack.WaitTCP(ctx, s.p, s.ns, fmt.Sprintf("127.0.0.1:%d", natsPort))
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
		nats.SetCustomDialer(d.hub.Dialer(2*time.Second)))
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
	role := fmt.Sprintf("e%d", k+1)
	ns, err := d.addNS(role)
	if err != nil {
		return err
	}
	if err := ns.Sysctl("net.ipv4.ip_forward", "1"); err != nil {
		return err
	}
	if err := d.link(ctx, ns, role, "p", "bp", edgePublic(k)); err != nil {
		return err
	}
	if err := d.link(ctx, ns, role, "l", "bl", edgeLAN(k)); err != nil {
		return err
	}
	g := &edge{k: k, id: fmt.Sprintf("scale%d", k+1), ns: ns, dir: filepath.Join(d.dir, role)}
	if err := os.MkdirAll(g.dir, 0o700); err != nil {
		return err
	}
	seed := d.servers[k%len(d.servers)]
	g.p, err = d.start(g.id, ns, d.edgeBin,
		"run", "--edge-id", g.id, "--pool", pool,
		"--public-host", edgePublic(k).String(), "--public-ip", edgePublic(k).String(),
		"--nats-url", seed.url(), "--nats-replicas", strconv.Itoa(d.replicas),
		"--signaling-port", strconv.Itoa(stack.SignalingPort), "--signaling-bind", edgePublic(k).String(),
		"--state-dir", g.dir, "--tls-self-signed", "--haproxy-stop-on-exit",
		"--media-ports", mediaPorts, "--backend-cidrs", "198.19.0.0/24",
		"--admin-addr", adminAddr, "--log-format", "json", "--log-level", "warn")
	if err != nil {
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
		if s.name == info.Cluster.Leader {
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
		if s.p.Exited() {
			return sum, fmt.Errorf("%s is down", s.name)
		}
		resp, err := s.ns.HTTPClient(2 * time.Second).Get(fmt.Sprintf("http://127.0.0.1:%d/varz", monitorPort))
		if err != nil {
			return sum, fmt.Errorf("%s /varz: %w", s.name, err)
		}
		var v varz
		err = json.NewDecoder(resp.Body).Decode(&v)
		_ = resp.Body.Close()
		if err != nil {
			return sum, fmt.Errorf("%s /varz: %w", s.name, err)
		}
		sum = sum.add(v)
	}
	return sum, nil
}

// close stops everything, edges before NATS; what does not stop in time dies with its namespace.
// It reports namespaces it could not remove.
func (d *deployment) close() error {
	if d.nc != nil {
		d.nc.Close()
	}
	if d.echo != nil {
		_ = d.echo.Close()
	}
	d.mu.Lock()
	procs := append([]*proc.Proc(nil), d.procs...)
	d.mu.Unlock()
	var wg sync.WaitGroup
	for _, g := range d.edges {
		if g.p != nil {
			wg.Go(func() { _ = g.p.Stop(5 * time.Second) })
		}
	}
	wg.Wait()
	for _, p := range procs {
		wg.Go(func() { _ = p.Stop(3 * time.Second) })
	}
	wg.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var errs []error
	for i := len(d.nss) - 1; i >= 0; i-- {
		errs = append(errs, d.nss[i].Delete(ctx))
	}
	if left, _ := netns.List(ctx, d.id); len(left) > 0 {
		errs = append(errs, fmt.Errorf("namespaces left behind: %v", left))
	}
	_ = os.RemoveAll(d.dir)
	return errors.Join(errs...)
}
