package stack

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/livegate/livegate/e2e/internal/netns"
	"github.com/livegate/livegate/e2e/internal/proc"
)

// Lab is a deployment of many namespaces (NATS servers, edges, nodes, a client) hung off bridges
// in one hub namespace, with the processes that run in them: the fault suite's and the cluster
// test's topology, where a single netns.Topology is too small.
type Lab struct {
	// ID starts every namespace and interface name: the prefix, the pid in base 36, "-" and a
	// sequence number, so parallel runs never collide and Sweep can tell a killed run's
	// leftovers from a live one's.
	ID    string
	Hub   *netns.Namespace
	Procs Group
	nss   []*netns.Namespace
}

// A Lab's networks, all in 198.18.0.0/15, each a /24 on a bridge in the hub:
//
//	public 198.18.1.0/24  client .2, edge k .10+k                                      (clients → edges)
//	ctl    198.18.2.0/24  hub .254, edge k .10+k                                       (edges → NATS)
//	lan    198.19.0.0/24  hub .254, edge k .10+k, node i .100+i, NATS server k .200+k  (edges → apps, agents → NATS)
var (
	LabClient = netip.MustParseAddr("198.18.1.2")
	LabHubCtl = netip.MustParseAddr("198.18.2.254")
	LabHubLAN = netip.MustParseAddr("198.19.0.254")
)

// LabEdgePublic is edge k's address on the public network.
func LabEdgePublic(k int) netip.Addr { return netip.AddrFrom4([4]byte{198, 18, 1, byte(10 + k)}) }

// LabEdgeCtl is edge k's address on the ctl network.
func LabEdgeCtl(k int) netip.Addr { return netip.AddrFrom4([4]byte{198, 18, 2, byte(10 + k)}) }

// LabEdgeLAN is edge k's address on the lan.
func LabEdgeLAN(k int) netip.Addr { return netip.AddrFrom4([4]byte{198, 19, 0, byte(10 + k)}) }

// LabNodeLAN is node i's address on the lan.
func LabNodeLAN(i int) netip.Addr { return netip.AddrFrom4([4]byte{198, 19, 0, byte(100 + i)}) }

// LabNATSLAN is NATS server k's address on the lan.
func LabNATSLAN(k int) netip.Addr { return netip.AddrFrom4([4]byte{198, 19, 0, byte(200 + k)}) }

var labSeq atomic.Int64

// NewLab sweeps the leftovers of killed runs of prefix and creates the hub namespace. The
// caller closes the Lab, also on error paths.
func NewLab(ctx context.Context, prefix string) (*Lab, []string, error) {
	swept, err := netns.Sweep(ctx, prefix)
	if err != nil {
		return nil, nil, fmt.Errorf("sweep stale namespaces: %w", err)
	}
	id := prefix + strconv.FormatInt(int64(os.Getpid()), 36) + "-" + strconv.FormatInt(labSeq.Add(1), 36)
	// Room for a role and a link (e1p) in a 15-byte interface name.
	if len(id)+3 > 15 {
		return nil, swept, fmt.Errorf("lab id %s: too long for interface names", id)
	}
	l := &Lab{ID: id}
	if l.Hub, err = l.AddNS(ctx, "h"); err != nil {
		return l, swept, err
	}
	return l, swept, nil
}

// AddNS creates the namespace ID+role.
func (l *Lab) AddNS(ctx context.Context, role string) (*netns.Namespace, error) {
	ns, err := netns.Add(ctx, l.ID+role)
	if err != nil {
		return nil, err
	}
	l.nss = append(l.nss, ns)
	return ns, nil
}

// Bridge adds a bridge to the hub, with the hub's own address (a /24) on it when addr is valid.
func (l *Lab) Bridge(ctx context.Context, name string, addr netip.Addr) error {
	if err := l.Hub.Run(ctx, "ip", "link", "add", name, "type", "bridge"); err != nil {
		return err
	}
	if addr.IsValid() {
		if err := l.Hub.Run(ctx, "ip", "addr", "add", netip.PrefixFrom(addr, 24).String(), "dev", name); err != nil {
			return err
		}
	}
	return l.Hub.Run(ctx, "ip", "link", "set", name, "up")
}

// Link joins ns to a hub bridge with a veth: LinkName(role, net) inside ns (with addr, a /24), the same
// in upper case on the hub's side.
func (l *Lab) Link(ctx context.Context, ns *netns.Namespace, role, net, bridge string, addr netip.Addr) error {
	in := l.LinkName(role, net)
	return netns.Bridged(ctx, l.Hub, bridge, ns, in, l.ID+role+strings.ToUpper(net), netip.PrefixFrom(addr, 24))
}

// LabLink is one link of a namespace to the hub: the network's letter in interface names, its
// bridge, and the namespace's address there.
type LabLink struct {
	Net, Bridge string
	Addr        netip.Addr
}

// AddRouter creates the namespace ID+role, forwarding between its links, and links it to the
// hub (an edge's, between its public side and the lan).
func (l *Lab) AddRouter(ctx context.Context, role string, links ...LabLink) (*netns.Namespace, error) {
	ns, err := l.AddNS(ctx, role)
	if err != nil {
		return nil, err
	}
	if err := ns.Sysctl("net.ipv4.ip_forward", "1"); err != nil {
		return nil, err
	}
	for _, k := range links {
		if err := l.Link(ctx, ns, role, k.Net, k.Bridge, k.Addr); err != nil {
			return nil, err
		}
	}
	return ns, nil
}

// LinkName is the interface Link made for role and net inside its namespace.
func (l *Lab) LinkName(role, net string) string { return l.ID + role + net }

// Close stops every process (the last started first, grace each) and deletes every namespace,
// with whatever still runs in it. It fails if a process did not stop cleanly (see Group.Stop)
// or a namespace of the Lab is left; it removes what it can either way.
func (l *Lab) Close(grace time.Duration) error {
	var errs []error
	if err := l.Procs.Stop(grace); err != nil {
		errs = append(errs, fmt.Errorf("stop processes: %w", err))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := len(l.nss) - 1; i >= 0; i-- {
		if err := l.nss[i].Delete(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	if left, _ := netns.List(ctx, l.ID); len(left) > 0 {
		errs = append(errs, fmt.Errorf("namespaces left behind: %v", left))
	}
	return errors.Join(errs...)
}

// StartNATSServers starts a NATS server at each of addrs, on the lan bridge "bl" the caller
// made: server k (from 0) in the namespace ID+"s<k+1>", named nats-<k+1>, its store in
// dir/s<k+1>, pinging its clients every second (a cut is noticed in seconds) and serving
// monitoring. More than one form a cluster as deploy/nats documents it. It returns once every
// server accepts clients; bin is the nats-server binary, empty finds it.
func (l *Lab) StartNATSServers(ctx context.Context, dir, bin string, addrs ...netip.Addr) ([]*NATSServer, error) {
	var servers []*NATSServer
	for k, addr := range addrs {
		role := NATSRole(k)
		ns, err := l.AddNS(ctx, role)
		if err != nil {
			return nil, err
		}
		if err := l.Link(ctx, ns, role, "l", "bl", addr); err != nil {
			return nil, err
		}
		var peers []netip.Addr
		for j, a := range addrs {
			if j != k {
				peers = append(peers, a)
			}
		}
		s, err := l.Procs.StartNATS(ctx, ns, NATSConfig{
			Name: fmt.Sprintf("nats-%d", k+1), Dir: filepath.Join(dir, role), FastPings: true, Monitor: true,
			Advertise: addr, Peers: peers, Bin: bin,
		})
		if err != nil {
			return nil, err
		}
		servers = append(servers, s)
	}
	// Every member is started before any is waited for, as a cluster's members start together.
	for _, s := range servers {
		if err := s.Ready(ctx); err != nil {
			return nil, err
		}
	}
	return servers, nil
}

// NATSRole is the role (namespace name after the Lab's ID) of StartNATSServers' server k; its
// lan link is LinkName(NATSRole(k), "l").
func NATSRole(k int) string { return fmt.Sprintf("s%d", k+1) }

// LabEdge is an edge of a Lab: its router namespace, its state directory (HAProxy's socket and
// map, the certificate) and its current process (a restart replaces it).
type LabEdge struct {
	ID  string
	NS  *netns.Namespace
	Dir string
	P   *proc.Proc
}

// AddEdge creates the router namespace ID+role of the edge id with its links, and its state
// directory dir/role; StartEdge starts it.
func (l *Lab) AddEdge(ctx context.Context, id, role, dir string, links ...LabLink) (*LabEdge, error) {
	ns, err := l.AddRouter(ctx, role, links...)
	if err != nil {
		return nil, err
	}
	g := &LabEdge{ID: id, NS: ns, Dir: filepath.Join(dir, role)}
	if err := os.MkdirAll(g.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("edge %s state dir: %w", id, err)
	}
	return g, nil
}

// StartEdge starts g (again) as bin with args, named by its ID; it does not wait for it
// (WaitHealthy does).
func (l *Lab) StartEdge(ctx context.Context, g *LabEdge, bin string, args []string) error {
	p, err := l.Procs.Start(ctx, g.ID, g.NS, bin, args...)
	if err != nil {
		return err
	}
	g.P = p
	return nil
}

// HAProxy is the runtime API of the HAProxy g supervises.
func (g *LabEdge) HAProxy() HAProxy { return EdgeHAProxy(g.Dir) }

// WaitHealthy waits until g is healthy (see WaitHealthy).
func (g *LabEdge) WaitHealthy(ctx context.Context, timeout time.Duration) error {
	return WaitHealthy(ctx, g.P, g.NS, timeout)
}
