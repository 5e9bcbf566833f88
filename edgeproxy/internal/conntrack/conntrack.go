// Package conntrack deletes the kernel's UDP connection-tracking entries of public ports, so
// that a port whose forwarding changed or ended stops following the old NAT binding at once
// instead of when the entry times out.
//
// Tracked (tracked.go) learns the flows from the kernel's conntrack events and deletes them by
// their exact tuples; Netlink, below, is what it falls back to where it may not know every flow.
//
// Netlink talks netlink directly rather than running `conntrack -D` once per port. A few ports are
// deleted by the kernel itself: one delete request per port carries a CTA_FILTER on the
// original tuple (protocol, destination address and port), so nothing is copied to user space
// and the cost does not grow with the size of the table in this process. Many ports at once
// (a cold start, a mass removal), and kernels that refuse a filtered delete (before 6.8), take
// one dump of the table filtered here, then one delete per matching entry. Past a few ports the
// cheaper of the two, by what each cost last (see useFilter), is taken: a dump grows with the
// entries of this namespace, a filtered delete with the ports. A handle opened
// inside a named network namespace needs no thread juggling and no extra process.
//
// Sockets are kept open between calls (and closed by Close): closing a netfilter netlink socket
// makes the kernel finish releasing the nftables objects deleted since the last commit, one RCU
// grace period under the nftables commit mutex, so a socket closed after each deletion would
// make the media plane's next map change wait.
package conntrack

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Cleaner deletes conntrack entries.
type Cleaner interface {
	// DeleteUDP deletes the IPv4 UDP entries whose original direction is addressed to dst and
	// one of ports (any destination address when dst is not valid).
	DeleteUDP(ctx context.Context, dst netip.Addr, ports []uint16) error
}

// Netlink deletes entries over a netfilter netlink socket.
type Netlink struct {
	netns string
	// dumpOnly is set once the kernel has refused a filtered delete.
	dumpOnly atomic.Bool
	// filterMax is the most ports always deleted by filter in one call; more take what cost
	// less last time.
	filterMax int
	// mu guards perPort, the last filtered delete's cost per port, and dump, the last dump's
	// cost (zero: not measured yet), and the idle sockets and handles kept for the next calls
	// (more than one when calls overlap).
	mu            sync.Mutex
	perPort, dump time.Duration
	sockets       []*nl.NetlinkSocket
	handles       []*netlink.Handle
	closed        bool
	// log is where Tracked says when it falls back to this cleaner, and back.
	log zerolog.Logger
}

// Close closes the kept sockets. Calls after it open and close a socket each.
func (n *Netlink) Close() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.closed = true
	for _, s := range n.sockets {
		s.Close()
	}
	for _, h := range n.handles {
		h.Close()
	}
	n.sockets, n.handles = nil, nil
	return nil
}

// keep gives an idle socket or handle back to list, or closes it when it failed or the cleaner
// is closed. n.mu is held.
func keep[S any](n *Netlink, list *[]S, s S, ok bool, closeFn func(S)) {
	if !ok || n.closed || len(*list) >= maxIdle {
		closeFn(s)
		return
	}
	*list = append(*list, s)
}

// maxIdle is how many sockets of each kind are kept: the media plane deletes in the foreground
// and in the background at once, rarely more.
const maxIdle = 2

// useFilter reports whether ports are deleted by filter: up to filterMax always; more when that
// many filtered deletes cost less than a dump did, by the last of each (a dump while either is
// unknown).
func useFilter(ports, filterMax int, perPort, dump time.Duration) bool {
	if ports <= filterMax {
		return true
	}
	return perPort > 0 && dump > 0 && time.Duration(ports)*perPort < dump
}

// Option configures Netlink.
type Option func(*Netlink)

// WithNetns works on the conntrack table of the named network namespace (/run/netns/<name>).
func WithNetns(name string) Option {
	return func(n *Netlink) { n.netns = name }
}

// WithLogger sets where a Tracked cleaner logs when it starts deleting by filter, why, and
// when it goes back to deleting by tuple; Netlink itself logs nothing.
func WithLogger(log zerolog.Logger) Option {
	return func(n *Netlink) { n.log = log }
}

// WithFilterMax sets the most ports one call always deletes by kernel-side filter (more go the
// way that cost less last); 0 always dumps.
func WithFilterMax(ports int) Option {
	return func(n *Netlink) { n.filterMax = ports }
}

// DefaultFilterMax is the most ports one call always deletes by kernel-side filter. Each filtered
// delete walks the kernel's whole conntrack hash, which every namespace shares (262,144 buckets
// here, about 0.5-1 ms a walk), so past a few ports one dump filtered in Go may cost less: with
// a small table it does, but a table of many flows (the route benchmark's probes) made a dump of
// 20 ports take 40-250 ms on a busy host, where 20 walks take about 20 ms.
const DefaultFilterMax = 8

// NewNetlink returns a cleaner for the current network namespace unless told otherwise.
func NewNetlink(opts ...Option) *Netlink {
	n := &Netlink{filterMax: DefaultFilterMax, log: zerolog.Nop()}
	for _, o := range opts {
		o(n)
	}
	return n
}

// dumpAttempts bounds retries when the kernel interrupts a dump because the table changed
// under it; each retry starts a fresh dump.
const dumpAttempts = 3

// DeleteUDP implements Cleaner.
func (n *Netlink) DeleteUDP(ctx context.Context, dst netip.Addr, ports []uint16) error {
	if len(ports) == 0 {
		return nil
	}
	n.mu.Lock()
	filter := useFilter(len(ports), n.filterMax, n.perPort, n.dump)
	n.mu.Unlock()
	if filter && (!dst.IsValid() || dst.Is4()) && !n.dumpOnly.Load() {
		began := time.Now()
		err := n.deleteFiltered(ctx, dst, ports)
		if !errors.Is(err, errFilterRefused) {
			if err == nil {
				n.mu.Lock()
				n.perPort = time.Since(began) / time.Duration(len(ports))
				n.mu.Unlock()
			}
			return err
		}
		n.dumpOnly.Store(true)
	}
	began := time.Now()
	err := n.deleteDumped(ctx, dst, ports)
	if err == nil {
		n.mu.Lock()
		n.dump = time.Since(began)
		n.mu.Unlock()
	}
	return err
}

// errFilterRefused reports a kernel that does not delete by CTA_FILTER.
var errFilterRefused = errors.New("kernel refused a filtered conntrack delete")

// deleteFiltered sends one filtered delete per port on one socket.
func (n *Netlink) deleteFiltered(ctx context.Context, dst netip.Addr, ports []uint16) error {
	s, err := n.socket()
	if err != nil {
		return err
	}
	failed := true
	defer func() {
		n.mu.Lock()
		defer n.mu.Unlock()
		keep(n, &n.sockets, s, !failed, func(s *nl.NetlinkSocket) { s.Close() })
	}()
	if err := s.SetReceiveTimeout(&unix.Timeval{Sec: 10}); err != nil {
		return fmt.Errorf("conntrack netlink socket: %w", err)
	}
	sockets := map[int]*nl.SocketHandle{unix.NETLINK_NETFILTER: {Socket: s}}
	for i, port := range ports {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("delete conntrack entries: %w", err)
		}
		req := filteredDelete(dst, port)
		req.Sockets = sockets
		_, err := req.Execute(unix.NETLINK_NETFILTER, 0)
		switch {
		case err == nil:
		case i == 0 && (errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP)):
			// A kernel without filtered deletes reads the tuple as an exact one and rejects it
			// for its missing source; it never takes the request for a flush of everything.
			// The socket goes: this cleaner dumps from now on.
			return errFilterRefused
		default:
			return fmt.Errorf("delete conntrack entries of udp port %d: %w", port, err)
		}
	}
	failed = false
	return nil
}

// Netlink attribute types of ctnetlink (include/uapi/linux/netfilter/nfnetlink_conntrack.h)
// that package nl does not name.
const (
	ctaFilter           = 25
	ctaFilterOrigFlags  = 1
	ctaFilterReplyFlags = 2
	ctaIPv4Dst          = 2
	ctaProtoNum         = 1
	ctaProtoDstPort     = 3
	// Filter flags (net/netfilter/nf_conntrack_netlink.c).
	filterIPDst        = 1 << 1
	filterProtoNum     = 1 << 3
	filterProtoDstPort = 1 << 5
)

// filteredDelete is the ctnetlink request that deletes every IPv4 UDP entry whose original
// tuple is addressed to dst (any address when dst is not valid) and port.
func filteredDelete(dst netip.Addr, port uint16) *nl.NetlinkRequest {
	req := nl.NewNetlinkRequest((int(netlink.ConntrackTable)<<8)|nl.IPCTNL_MSG_CT_DELETE, unix.NLM_F_ACK)
	req.AddData(&nl.Nfgenmsg{NfgenFamily: unix.AF_INET, Version: nl.NFNETLINK_V0})
	flags := uint32(filterProtoNum | filterProtoDstPort)
	tuple := nl.NewRtAttr(nl.CTA_TUPLE_ORIG|unix.NLA_F_NESTED, nil)
	if dst.Is4() {
		flags |= filterIPDst
		ip := tuple.AddRtAttr(nl.CTA_TUPLE_IP|unix.NLA_F_NESTED, nil)
		a := dst.As4()
		ip.AddRtAttr(ctaIPv4Dst, a[:])
	}
	proto := tuple.AddRtAttr(nl.CTA_TUPLE_PROTO|unix.NLA_F_NESTED, nil)
	proto.AddRtAttr(ctaProtoNum, []byte{unix.IPPROTO_UDP})
	proto.AddRtAttr(ctaProtoDstPort, binary.BigEndian.AppendUint16(nil, port))
	req.AddData(tuple)
	filter := nl.NewRtAttr(ctaFilter|unix.NLA_F_NESTED, nil)
	filter.AddRtAttr(ctaFilterOrigFlags, nl.Uint32Attr(flags))
	filter.AddRtAttr(ctaFilterReplyFlags, nl.Uint32Attr(0))
	req.AddData(filter)
	return req
}

func (n *Netlink) socket() (*nl.NetlinkSocket, error) {
	n.mu.Lock()
	if k := len(n.sockets); k > 0 {
		s := n.sockets[k-1]
		n.sockets = n.sockets[:k-1]
		n.mu.Unlock()
		return s, nil
	}
	n.mu.Unlock()
	return openIn(n.netns, func(ns netns.NsHandle) (*nl.NetlinkSocket, error) {
		return nl.GetNetlinkSocketAt(ns, netns.None(), unix.NETLINK_NETFILTER)
	})
}

// deleteDumped dumps the table once and deletes the matching entries one by one.
func (n *Netlink) deleteDumped(ctx context.Context, dst netip.Addr, ports []uint16) error {
	h, err := n.handle()
	if err != nil {
		return err
	}
	failed := true
	defer func() {
		n.mu.Lock()
		defer n.mu.Unlock()
		keep(n, &n.handles, h, !failed, func(h *netlink.Handle) { h.Close() })
	}()
	filter := NewUDPFilter(dst, ports)
	for attempt := 1; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("delete conntrack entries: %w", err)
		}
		_, err := h.ConntrackDeleteFilters(netlink.ConntrackTable, unix.AF_INET, filter)
		if err == nil {
			failed = false
			return nil
		}
		if !errors.Is(err, netlink.ErrDumpInterrupted) || attempt == dumpAttempts {
			return fmt.Errorf("delete conntrack entries for %d udp ports: %w", len(ports), err)
		}
	}
}

func (n *Netlink) handle() (*netlink.Handle, error) {
	n.mu.Lock()
	if k := len(n.handles); k > 0 {
		h := n.handles[k-1]
		n.handles = n.handles[:k-1]
		n.mu.Unlock()
		return h, nil
	}
	n.mu.Unlock()
	return openIn(n.netns, func(ns netns.NsHandle) (*netlink.Handle, error) {
		return netlink.NewHandleAt(ns, unix.NETLINK_NETFILTER)
	})
}

// openIn opens a netfilter netlink socket with open in the network namespace named name, or
// in this process's own when name is empty: open is given netns.None() then, which the netlink
// library takes as the namespace the thread is in.
func openIn[S any](name string, open func(netns.NsHandle) (S, error)) (S, error) {
	var none S
	if name == "" {
		s, err := open(netns.None())
		if err != nil {
			return none, fmt.Errorf("open netfilter netlink socket: %w", err)
		}
		return s, nil
	}
	ns, err := netns.GetFromName(name)
	if err != nil {
		return none, fmt.Errorf("open network namespace %q: %w", name, err)
	}
	defer ns.Close()
	s, err := open(ns)
	if err != nil {
		return none, fmt.Errorf("open netfilter netlink socket in %q: %w", name, err)
	}
	return s, nil
}

// openInNetns opens the file path in the network namespace name ("" is the process's own). A
// socket can be opened in a namespace directly (openIn); a sysctl file keeps to the namespace
// of the thread that opened it, so a thread goes there for the open.
func openInNetns(name, path string) (*os.File, error) {
	if name == "" {
		return os.Open(path)
	}
	type opened struct {
		f   *os.File
		err error
	}
	ch := make(chan opened, 1)
	go func() {
		// A thread that cannot go back stays locked, so that it ends with this goroutine.
		runtime.LockOSThread()
		f, err := func() (*os.File, error) {
			orig, err := netns.Get()
			if err != nil {
				return nil, err
			}
			defer orig.Close()
			ns, err := netns.GetFromName(name)
			if err != nil {
				return nil, fmt.Errorf("open network namespace %q: %w", name, err)
			}
			defer ns.Close()
			if err := netns.Set(ns); err != nil {
				return nil, fmt.Errorf("enter network namespace %q: %w", name, err)
			}
			f, err := os.Open(path)
			if serr := netns.Set(orig); serr != nil {
				if f != nil {
					f.Close()
				}
				return nil, fmt.Errorf("leave network namespace %q: %w", name, serr)
			}
			runtime.UnlockOSThread()
			return f, err
		}()
		ch <- opened{f, err}
	}()
	o := <-ch
	return o.f, o.err
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
