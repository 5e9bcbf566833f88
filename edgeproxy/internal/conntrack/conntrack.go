// Package conntrack deletes the kernel's UDP connection-tracking entries of public ports, so
// that a port whose forwarding changed or ended stops following the old NAT binding at once
// instead of when the entry times out.
//
// It talks netlink directly (one dump of the table per call, then one delete per matching
// entry) rather than running `conntrack -D` once per port: a batch of thousands of ports costs
// one dump, and a handle opened inside a named network namespace needs no thread juggling and
// no extra process.
package conntrack

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Cleaner deletes conntrack entries.
type Cleaner interface {
	// DeleteUDP deletes the IPv4 UDP entries whose original direction is addressed to dst and
	// one of ports (any destination address when dst is not valid), and reports how many it
	// deleted.
	DeleteUDP(ctx context.Context, dst netip.Addr, ports []uint16) (int, error)
}

// Netlink deletes entries over a netfilter netlink socket.
type Netlink struct {
	netns string
}

// Option configures Netlink.
type Option func(*Netlink)

// WithNetns works on the conntrack table of the named network namespace (/run/netns/<name>).
func WithNetns(name string) Option {
	return func(n *Netlink) { n.netns = name }
}

// NewNetlink returns a cleaner for the current network namespace unless told otherwise.
func NewNetlink(opts ...Option) *Netlink {
	n := &Netlink{}
	for _, o := range opts {
		o(n)
	}
	return n
}

// dumpAttempts bounds retries when the kernel interrupts a dump because the table changed
// under it; each retry starts a fresh dump.
const dumpAttempts = 3

// DeleteUDP implements Cleaner.
func (n *Netlink) DeleteUDP(ctx context.Context, dst netip.Addr, ports []uint16) (int, error) {
	if len(ports) == 0 {
		return 0, nil
	}
	h, err := n.handle()
	if err != nil {
		return 0, err
	}
	defer h.Close()
	filter := NewUDPFilter(dst, ports)
	total := 0
	for attempt := 1; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return total, fmt.Errorf("delete conntrack entries: %w", err)
		}
		deleted, err := h.ConntrackDeleteFilters(netlink.ConntrackTable, unix.AF_INET, filter)
		total += int(deleted)
		if err == nil {
			return total, nil
		}
		if !errors.Is(err, netlink.ErrDumpInterrupted) || attempt == dumpAttempts {
			return total, fmt.Errorf("delete conntrack entries for %d udp ports: %w", len(ports), err)
		}
	}
}

func (n *Netlink) handle() (*netlink.Handle, error) {
	if n.netns == "" {
		h, err := netlink.NewHandle(unix.NETLINK_NETFILTER)
		if err != nil {
			return nil, fmt.Errorf("open netfilter netlink socket: %w", err)
		}
		return h, nil
	}
	ns, err := netns.GetFromName(n.netns)
	if err != nil {
		return nil, fmt.Errorf("open network namespace %q: %w", n.netns, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, fmt.Errorf("open netfilter netlink socket in %q: %w", n.netns, err)
	}
	return h, nil
}

// UDPFilter matches UDP flows by original destination address and port.
type UDPFilter struct {
	dst   netip.Addr
	ports map[uint16]struct{}
}

// NewUDPFilter matches UDP flows originally sent to dst (any address when dst is not valid) on
// one of ports.
func NewUDPFilter(dst netip.Addr, ports []uint16) *UDPFilter {
	f := &UDPFilter{dst: dst, ports: make(map[uint16]struct{}, len(ports))}
	for _, p := range ports {
		f.ports[p] = struct{}{}
	}
	return f
}

// MatchConntrackFlow implements netlink.CustomConntrackFilter.
func (f *UDPFilter) MatchConntrackFlow(flow *netlink.ConntrackFlow) bool {
	if flow.Forward.Protocol != unix.IPPROTO_UDP {
		return false
	}
	if _, ok := f.ports[flow.Forward.DstPort]; !ok {
		return false
	}
	if !f.dst.IsValid() {
		return true
	}
	got, ok := netip.AddrFromSlice(flow.Forward.DstIP)
	return ok && got.Unmap() == f.dst.Unmap()
}
