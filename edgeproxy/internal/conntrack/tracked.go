package conntrack

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/mdlayher/netlink"
	ct "github.com/ti-mo/conntrack"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Tracked is a Cleaner that learns the UDP flows addressed to one address from the kernel's
// conntrack events, and deletes a port's entries by their exact tuples: one hash lookup each,
// where a filtered delete walks the kernel's whole conntrack table, which every namespace shares
// (0.5-1 ms a port; at a hundred ended routes a second that was a fifth of a core). It is exact
// because the kernel queues a flow's NEW event on the socket when it confirms the flow, before
// anything can ask for its deletion: each DeleteUDP first reads every event queued, so no flow
// confirmed before the call is missed.
//
// A socket filter (eventfilter.go) keeps every other flow's events in the kernel.
//
// It falls back to Netlink where it may not know every flow: until a dump of the table has
// been read, after its event socket overflowed (the kernel drops events then, and says so; the
// next call dumps again), while the namespace's conntrack events are turned off
// (net.netfilter.nf_conntrack_events = 0, which some tuned hosts set; the kernel then sends
// none), and for another address.
type Tracked struct {
	addr     netip.Addr
	fallback *Netlink
	// fallbacks counts the calls the fallback took.
	fallbacks atomic.Int64

	// mu guards everything below, and the reads of the event socket.
	mu     sync.Mutex
	events *netlink.Conn
	raw    syscall.RawConn
	// sysctl is net.netfilter.nf_conntrack_events, opened in the cleaner's namespace.
	sysctl *os.File
	conn   *ct.Conn
	// flows holds, per destination port, the original tuples seen (sure: all of those the
	// kernel has, and maybe some it no longer has).
	flows  map[uint16]map[flowKey]struct{}
	sure   bool
	broken error
	closed bool
	buf    []byte
	done   chan struct{}
}

// flowKey is what, beside the address and the port, names a flow's original tuple.
type flowKey struct {
	src  netip.AddrPort
	zone uint16
}

// Conntrack's netlink multicast groups (include/uapi/linux/netfilter/nfnetlink.h).
const (
	groupNew     = 1
	groupDestroy = 3
)

// eventBuffer is the event socket's receive buffer: room for tens of thousands of events while
// the reader waits for a deletion under way.
const eventBuffer = 8 << 20

// NewTracked returns a cleaner of the entries addressed to addr, in the current network
// namespace unless WithNetns says otherwise; other options configure its fallback. It reads
// the table once before it returns.
func NewTracked(addr netip.Addr, opts ...Option) (*Tracked, error) {
	if !addr.Is4() {
		return nil, fmt.Errorf("conntrack events: %s is not an IPv4 address", addr)
	}
	t := &Tracked{addr: addr, fallback: NewNetlink(opts...), flows: map[uint16]map[flowKey]struct{}{},
		buf: make([]byte, 64<<10), done: make(chan struct{})}
	if err := t.open(); err != nil {
		t.closeSockets()
		return nil, err
	}
	if on, err := t.eventsOn(); err != nil || !on {
		t.closeSockets()
		if err == nil {
			err = errors.New("conntrack events are turned off (net.netfilter.nf_conntrack_events = 0)")
		}
		return nil, err
	}
	t.mu.Lock()
	err := t.seed()
	t.mu.Unlock()
	if err != nil {
		t.closeSockets()
		return nil, err
	}
	go t.read()
	return t, nil
}

// open dials the event socket, joined to the NEW and DESTROY groups and filtered to the flows
// of t.addr, and the socket of dumps and deletions, both in the cleaner's namespace.
func (t *Tracked) open() error {
	cfg := &netlink.Config{}
	if name := t.fallback.netns; name != "" {
		ns, err := netns.GetFromName(name)
		if err != nil {
			return fmt.Errorf("open network namespace %q: %w", name, err)
		}
		defer ns.Close()
		cfg.NetNS = int(ns)
	}
	var err error
	if t.sysctl, err = openInNetns(t.fallback.netns, eventsSysctl); err != nil {
		return fmt.Errorf("conntrack events: %w", err)
	}
	if t.events, err = netlink.Dial(unix.NETLINK_NETFILTER, cfg); err != nil {
		return fmt.Errorf("conntrack events: dial: %w", err)
	}
	for _, g := range []uint32{groupNew, groupDestroy} {
		if err := t.events.JoinGroup(g); err != nil {
			return fmt.Errorf("conntrack events: join group %d: %w", g, err)
		}
	}
	filter, err := eventFilter(t.addr)
	if err != nil {
		return err
	}
	if err := t.events.SetBPF(filter); err != nil {
		return fmt.Errorf("conntrack events: filter: %w", err)
	}
	if t.raw, err = t.events.SyscallConn(); err != nil {
		return fmt.Errorf("conntrack events: %w", err)
	}
	var serr error
	if err := t.raw.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, eventBuffer)
	}); err != nil || serr != nil {
		return fmt.Errorf("conntrack events: receive buffer: %w", errors.Join(err, serr))
	}
	if t.conn, err = ct.Dial(cfg); err != nil {
		return fmt.Errorf("conntrack: dial: %w", err)
	}
	return nil
}

// read takes in the events as they come until the event socket is closed or fails.
func (t *Tracked) read() {
	defer close(t.done)
	_ = t.raw.Read(func(fd uintptr) bool {
		t.mu.Lock()
		defer t.mu.Unlock()
		return t.drain(int(fd)) != nil || t.closed
	})
}

// drainNow takes in every event queued on the socket. t.mu is held.
func (t *Tracked) drainNow() error {
	var derr error
	if err := t.raw.Control(func(fd uintptr) { derr = t.drain(int(fd)) }); err != nil {
		return err
	}
	return derr
}

// drain reads fd until nothing is queued. An overflow makes the index unsure; another failure
// breaks the cleaner for good (calls go to the fallback). t.mu is held.
func (t *Tracked) drain(fd int) error {
	if t.broken != nil {
		return t.broken
	}
	for {
		n, _, err := unix.Recvfrom(fd, t.buf, unix.MSG_DONTWAIT)
		switch {
		case err == nil:
			t.take(t.buf[:n])
		case errors.Is(err, unix.EAGAIN):
			return nil
		case errors.Is(err, unix.EINTR):
		case errors.Is(err, unix.ENOBUFS):
			t.sure = false
		default:
			t.sure, t.broken = false, fmt.Errorf("conntrack events: read: %w", err)
			return t.broken
		}
	}
}

// take applies the events of one datagram to the index. t.mu is held.
func (t *Tracked) take(b []byte) {
	msgs, err := syscall.ParseNetlinkMessage(b)
	if err != nil {
		t.sure = false
		return
	}
	for _, m := range msgs {
		var ev ct.Event
		nm := netlink.Message{
			Header: netlink.Header{Length: m.Header.Len, Type: netlink.HeaderType(m.Header.Type),
				Flags: netlink.HeaderFlags(m.Header.Flags), Sequence: m.Header.Seq, PID: m.Header.Pid},
			Data: m.Data,
		}
		if ev.Unmarshal(nm) != nil || ev.Flow == nil {
			continue
		}
		switch ev.Type {
		case ct.EventNew:
			t.add(ev.Flow.TupleOrig)
		case ct.EventDestroy:
			t.remove(ev.Flow.TupleOrig)
		}
	}
}

// key is the port and the key of tuple when it is a UDP flow addressed to t.addr.
func (t *Tracked) key(tuple ct.Tuple) (uint16, flowKey, bool) {
	if tuple.Proto.Protocol != unix.IPPROTO_UDP || tuple.IP.DestinationAddress.Unmap() != t.addr {
		return 0, flowKey{}, false
	}
	return tuple.Proto.DestinationPort, flowKey{src: netip.AddrPortFrom(tuple.IP.SourceAddress.Unmap(), tuple.Proto.SourcePort), zone: tuple.Zone}, true
}

func (t *Tracked) add(tuple ct.Tuple) {
	port, k, ok := t.key(tuple)
	if !ok {
		return
	}
	m := t.flows[port]
	if m == nil {
		m = map[flowKey]struct{}{}
		t.flows[port] = m
	}
	m[k] = struct{}{}
}

func (t *Tracked) remove(tuple ct.Tuple) {
	port, k, ok := t.key(tuple)
	if !ok {
		return
	}
	if m := t.flows[port]; m != nil {
		delete(m, k)
		if len(m) == 0 {
			delete(t.flows, port)
		}
	}
}

// seed rebuilds the index from a dump of the table, then applies the events queued meanwhile.
// The index is sure when no event was dropped since the first drain. t.mu is held.
func (t *Tracked) seed() error {
	if err := t.drainNow(); err != nil {
		return err
	}
	t.sure = true
	flows, err := t.conn.Dump(nil)
	if err != nil {
		t.sure = false
		return fmt.Errorf("conntrack: dump: %w", err)
	}
	clear(t.flows)
	for _, f := range flows {
		t.add(f.TupleOrig)
	}
	return t.drainNow()
}

// DeleteUDP implements Cleaner.
func (t *Tracked) DeleteUDP(ctx context.Context, dst netip.Addr, ports []uint16) error {
	if len(ports) == 0 {
		return nil
	}
	if dst == t.addr && t.deleteKnown(ctx, ports) {
		return nil
	}
	t.fallbacks.Add(1)
	return t.fallback.DeleteUDP(ctx, dst, ports)
}

// Fallbacks is how many calls were left to the fallback, which walks the kernel's table.
func (t *Tracked) Fallbacks() int64 { return t.fallbacks.Load() }

// deleteKnown deletes the ports' flows by their tuples, and reports whether it did: not when
// the index cannot be made sure, or a deletion failed (the fallback then deletes them all).
func (t *Tracked) deleteKnown(ctx context.Context, ports []uint16) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed || t.drainNow() != nil {
		return false
	}
	if on, err := t.eventsOn(); err != nil || !on {
		// Flows made while they are off send no event: the index is made again once they
		// are on.
		t.sure = false
		return false
	}
	if !t.sure && t.seed() != nil {
		return false
	}
	if !t.sure {
		return false
	}
	for _, port := range ports {
		for k := range t.flows[port] {
			if ctx.Err() != nil {
				return false
			}
			f := ct.Flow{TupleOrig: ct.Tuple{
				IP:    ct.IPTuple{SourceAddress: k.src.Addr(), DestinationAddress: t.addr},
				Proto: ct.ProtoTuple{Protocol: unix.IPPROTO_UDP, SourcePort: k.src.Port(), DestinationPort: port},
				Zone:  k.zone,
			}}
			if err := t.conn.Delete(f); err != nil && !errors.Is(err, unix.ENOENT) {
				return false
			}
		}
		delete(t.flows, port)
	}
	return true
}

// Close closes the sockets, the fallback's too.
func (t *Tracked) Close() error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil
	}
	t.closed = true
	t.mu.Unlock()
	t.closeSockets()
	<-t.done
	return t.fallback.Close()
}

// eventsSysctl turns a namespace's conntrack events on (1; 2: for the flows made while a
// socket listens, which this cleaner's does before its dump) or off (0).
const eventsSysctl = "/proc/sys/net/netfilter/nf_conntrack_events"

// eventsOn reads eventsSysctl.
func (t *Tracked) eventsOn() (bool, error) {
	var b [16]byte
	n, err := t.sysctl.ReadAt(b[:], 0)
	if n == 0 && err != nil {
		return false, fmt.Errorf("read %s: %w", eventsSysctl, err)
	}
	return strings.TrimSpace(string(b[:n])) != "0", nil
}

// openInNetns opens path in the network namespace name ("" is the process's own); a sysctl
// file keeps to the namespace it was opened in.
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

func (t *Tracked) closeSockets() {
	if t.sysctl != nil {
		_ = t.sysctl.Close()
	}
	if t.events != nil {
		_ = t.events.Close()
	}
	if t.conn != nil {
		_ = t.conn.Close()
	}
}
