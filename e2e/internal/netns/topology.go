package netns

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
)

// Addresses of a Topology, all in the benchmarking range 198.18.0.0/15: the public side on
// 198.18.1.0/24, node i (from 1) on 198.19.i.0/24.
var (
	ClientAddr   = netip.MustParseAddr("198.18.1.2")
	EdgePublic   = netip.MustParseAddr("198.18.1.1")
	BackendCIDRs = netip.MustParsePrefix("198.19.0.0/16")
)

// NodeAddr is node i's address (i from 1).
func NodeAddr(i int) netip.Addr { return netip.AddrFrom4([4]byte{198, 19, byte(i), 2}) }

// EdgeNodeSide is the edge's address on node i's link (i from 1): where node i reaches NATS.
func EdgeNodeSide(i int) netip.Addr { return netip.AddrFrom4([4]byte{198, 19, byte(i), 1}) }

// Topology is a client, an edge and nodes, each in its own namespace:
//
//	client 198.18.1.2 ── 198.18.1.1 edge 198.19.i.1 ── 198.19.i.2 node i
//
// The edge forwards between its links; the client and the nodes route through it.
type Topology struct {
	ID     string
	Client *Namespace
	Edge   *Namespace
	Nodes  []*Namespace
}

var seq atomic.Int64

// NewTopology builds a topology with the given number of nodes (at most 9). Names are prefix, the
// pid in base 36, "-", a sequence number, then the role: parallel runs never collide, and Sweep
// can tell a crashed run's leftovers from a live one's.
func NewTopology(ctx context.Context, prefix string, nodes int) (t *Topology, err error) {
	if nodes < 1 || nodes > 9 {
		return nil, fmt.Errorf("topology: %d nodes, want 1..9", nodes)
	}
	id := prefix + strconv.FormatInt(int64(os.Getpid()), 36) + "-" + strconv.FormatInt(seq.Add(1), 36)
	if len(id)+3 > 15 {
		return nil, fmt.Errorf("topology id %s: too long for interface names", id)
	}
	t = &Topology{ID: id}
	defer func() {
		if err != nil {
			_ = t.Close(context.WithoutCancel(ctx))
			t = nil
		}
	}()
	if t.Edge, err = Add(ctx, id+"e"); err != nil {
		return t, err
	}
	if err = t.Edge.Sysctl("net.ipv4.ip_forward", "1"); err != nil {
		return t, err
	}
	if t.Client, err = Add(ctx, id+"c"); err != nil {
		return t, err
	}
	if err = Veth(ctx, t.Client, id+"c0", netip.PrefixFrom(ClientAddr, 24), t.Edge, id+"c1", netip.PrefixFrom(EdgePublic, 24)); err != nil {
		return t, err
	}
	if err = t.Client.Run(ctx, "ip", "route", "add", "default", "via", EdgePublic.String()); err != nil {
		return t, err
	}
	for i := 1; i <= nodes; i++ {
		node, err := Add(ctx, fmt.Sprintf("%sn%d", id, i))
		if err != nil {
			return t, err
		}
		t.Nodes = append(t.Nodes, node)
		if err = Veth(ctx, node, fmt.Sprintf("%sn%d0", id, i), netip.PrefixFrom(NodeAddr(i), 24), t.Edge, fmt.Sprintf("%sn%d1", id, i), netip.PrefixFrom(EdgeNodeSide(i), 24)); err != nil {
			return t, err
		}
		if err = node.Run(ctx, "ip", "route", "add", "default", "via", EdgeNodeSide(i).String()); err != nil {
			return t, err
		}
	}
	return t, nil
}

// Namespaces lists every namespace of the topology.
func (t *Topology) Namespaces() []*Namespace {
	var all []*Namespace
	for _, n := range append([]*Namespace{t.Client, t.Edge}, t.Nodes...) {
		if n != nil {
			all = append(all, n)
		}
	}
	return all
}

// Close kills what still runs in the namespaces and deletes them.
func (t *Topology) Close(ctx context.Context) error {
	var errs []error
	for _, n := range t.Namespaces() {
		errs = append(errs, n.Delete(ctx))
	}
	return errors.Join(errs...)
}

// Sweep deletes the namespaces that start with prefix and whose creating process is gone: the
// leftovers of a run that was killed before it could clean up. It returns their names.
func Sweep(ctx context.Context, prefix string) ([]string, error) {
	names, err := List(ctx, prefix)
	if err != nil {
		return nil, err
	}
	var swept []string
	var errs []error
	for _, name := range names {
		owner, _, ok := strings.Cut(strings.TrimPrefix(name, prefix), "-")
		if !ok {
			continue
		}
		pid, err := strconv.ParseInt(owner, 36, 32)
		if err != nil || alive(int(pid)) {
			continue
		}
		if err := (&Namespace{Name: name}).Delete(ctx); err != nil {
			errs = append(errs, err)
			continue
		}
		swept = append(swept, name)
	}
	return swept, errors.Join(errs...)
}

func alive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
