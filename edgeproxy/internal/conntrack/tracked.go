package conntrack

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/mdlayher/netlink"
	ct "github.com/ti-mo/conntrack"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Tracked is a Cleaner that learns the UDP flows addressed to one address from the kernel's
// conntrack events, and deletes a port's entries by their exact tuples: one hash lookup each,
// where a filtered delete walks the kernel's whole conntrack table, which every namespace shares
// (0.5-1 ms a port; at a hundred ended routes a second that was a fifth of a core). The kernel
// queues a flow's NEW event as it confirms the flow, right after putting it in the table, and
// each DeleteUDP first reads every event queued: it misses only a flow being confirmed at that
// very moment, which a walk of the table misses as well.
//
// A socket filter (eventfilter.go) keeps every other flow's events in the kernel.
//
// It falls back to Netlink where it may not know every flow: until a dump of the table has
// been read, after its event socket overflowed or an event could not be read (the next call
// dumps again), while the namespace's conntrack events are turned off or cannot be read
// (net.netfilter.nf_conntrack_events = 0, which some tuned hosts set, or nf_conntrack not yet
// loaded; the kernel then sends none), and for another address. It dumps the table again every
// reseedEvery in the background, which bounds what a change of that setting between two calls
// could hide; after lost events or a failed dump, at most once every seedGap, so that a run of
// overflows falls back to the filtered walk rather than dumping the table on every call.
type Tracked struct {
	addr     netip.Addr
	fallback *Netlink
	// fallbacks counts the calls the fallback took.
	fallbacks atomic.Int64

	// mu guards everything below, and the reads of the event socket.
	mu     sync.Mutex
	events *netlink.Conn
	raw    syscall.RawConn
	conn   *ct.Conn
	// sysctl is net.netfilter.nf_conntrack_events, opened in the cleaner's namespace once it
	// exists (the module may load after the edge starts).
	sysctl *os.File
	// flows holds, per destination port, the original tuples seen (sure: all of those the
	// kernel has, and maybe some it no longer has).
	flows map[uint16]map[flowKey]struct{}
	sure  bool
	// lastSeed is when the table was last dumped; lossy says the index went unsure by losing
	// events or by a failed dump, which may go on: the next dump then waits seedGap from it.
	lastSeed time.Time
	lossy    bool
	// why is what last made the index unsure, until a dump makes it sure again: the cleaner
	// logs when it changes.
	why    string
	broken error
	closed bool
	buf    []byte
	// stop ends the background goroutines, bg waits for them.
	stop chan struct{}
	bg   sync.WaitGroup
}

// flowKey is what, beside the address and the port, names a flow's original tuple.
type flowKey struct {
	src netip.AddrPort
	// zone is the flow's conntrack zone (CTA_ZONE), tupleZone its original tuple's
	// (CTA_TUPLE_ZONE, a zone of one direction); the kernel finds the flow to delete by both.
	zone, tupleZone uint16
}

// Conntrack's netlink multicast groups (include/uapi/linux/netfilter/nfnetlink.h).
const (
	groupNew     = 1
	groupDestroy = 3
)

const (
	// eventBuffer is the event socket's receive buffer: room for tens of thousands of events
	// while the reader waits for a deletion under way.
	eventBuffer = 8 << 20
	// reseedEvery is how often the index is made again from a dump.
	reseedEvery = 10 * time.Minute
	// seedGap is the least time between two dumps after lost events or a failed dump;
	// meanwhile the deletions go to the fallback.
	seedGap = time.Second
)

// NewTracked returns a cleaner of the entries addressed to addr, in the current network
// namespace unless WithNetns says otherwise; WithLogger says where it logs when it deletes by
// filter instead, and other options configure that fallback. It fails only when it cannot open
// its sockets (the namespace, the event socket and its filter, the socket of deletions); it
// reads the table once before it returns.
func NewTracked(addr netip.Addr, opts ...Option) (*Tracked, error) {
	if !addr.Is4() {
		return nil, fmt.Errorf("conntrack events: %s is not an IPv4 address", addr)
	}
	t := &Tracked{addr: addr, fallback: NewNetlink(opts...), flows: map[uint16]map[flowKey]struct{}{},
		buf: make([]byte, 64<<10), stop: make(chan struct{})}
	if err := t.open(); err != nil {
		t.closeSockets()
		return nil, err
	}
	t.mu.Lock()
	t.ready()
	t.mu.Unlock()
	t.bg.Go(t.read)
	t.bg.Go(t.reseed)
	return t, nil
}

// reseed makes the index again from a dump every reseedEvery, off the deletions' path.
func (t *Tracked) reseed() {
	tick := time.NewTicker(reseedEvery)
	defer tick.Stop()
	for {
		select {
		case <-t.stop:
			return
		case <-tick.C:
		}
		t.mu.Lock()
		if t.sure {
			t.sure = false
			t.ready()
		}
		t.mu.Unlock()
	}
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
			t.lossy = true
			t.unsure("conntrack event socket overflowed", nil)
		default:
			t.broken = fmt.Errorf("conntrack events: read: %w", err)
			t.unsure("conntrack event socket failed", t.broken)
			return t.broken
		}
	}
}

// take applies the events of one datagram to the index. t.mu is held.
func (t *Tracked) take(b []byte) {
	msgs, err := syscall.ParseNetlinkMessage(b)
	if err != nil {
		t.lossy = true
		t.unsure("conntrack event unreadable", err)
		return
	}
	for _, m := range msgs {
		var ev ct.Event
		nm := netlink.Message{
			Header: netlink.Header{Length: m.Header.Len, Type: netlink.HeaderType(m.Header.Type),
				Flags: netlink.HeaderFlags(m.Header.Flags), Sequence: m.Header.Seq, PID: m.Header.Pid},
			Data: m.Data,
		}
		// The filter let through only flows of t.addr: one not read may be one missed.
		if err := ev.Unmarshal(nm); err != nil || ev.Flow == nil {
			t.lossy = true
			t.unsure("conntrack event unreadable", err)
			continue
		}
		switch ev.Type {
		case ct.EventNew:
			t.add(*ev.Flow)
		case ct.EventDestroy:
			t.remove(*ev.Flow)
		}
	}
}

// key is the port and the key of f when it is a UDP flow addressed to t.addr.
func (t *Tracked) key(f ct.Flow) (uint16, flowKey, bool) {
	o := f.TupleOrig
	if o.Proto.Protocol != unix.IPPROTO_UDP || o.IP.DestinationAddress.Unmap() != t.addr {
		return 0, flowKey{}, false
	}
	return o.Proto.DestinationPort, flowKey{src: netip.AddrPortFrom(o.IP.SourceAddress.Unmap(), o.Proto.SourcePort),
		zone: f.Zone, tupleZone: o.Zone}, true
}

func (t *Tracked) add(f ct.Flow) {
	port, k, ok := t.key(f)
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

func (t *Tracked) remove(f ct.Flow) {
	port, k, ok := t.key(f)
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

// unsure marks the index as maybe missing flows, for why; it logs the first reason, until a
// dump makes the index sure again. t.mu is held.
func (t *Tracked) unsure(why string, err error) {
	t.sure = false
	if t.why == "" {
		t.why = why
		t.fallback.log.Warn().Err(err).Str("reason", why).Msg("conntrack flows may be unknown; deleting conntrack entries by filter")
	}
}

// ready takes in the queued events and, where it can, makes the index sure; it reports whether
// the index holds every flow the kernel has. t.mu is held.
func (t *Tracked) ready() bool {
	if t.closed {
		return false
	}
	if err := t.drainNow(); err != nil {
		return false
	}
	switch on, err := t.eventsOn(); {
	case err != nil:
		t.unsure("conntrack events setting unreadable", err)
		return false
	case !on:
		// Flows made meanwhile send no event: the index is made again once they are on.
		t.unsure("conntrack events off (net.netfilter.nf_conntrack_events = 0, or nf_conntrack not loaded)", nil)
		return false
	}
	if t.sure {
		return true
	}
	now := time.Now()
	if t.lossy && now.Sub(t.lastSeed) < seedGap {
		return false
	}
	t.lastSeed = now
	if err := t.seed(); err != nil {
		t.lossy = true
		t.unsure("conntrack table dump failed", err)
		return false
	}
	t.lossy = false
	if t.why != "" {
		t.fallback.log.Info().Str("after", t.why).Msg("conntrack flows known again; deleting conntrack entries by tuple")
		t.why = ""
	}
	return true
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
		t.add(f)
	}
	if err := t.drainNow(); err != nil {
		return err
	}
	if !t.sure {
		return errors.New("events were lost or unreadable during the dump")
	}
	return nil
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
	if !t.ready() {
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
				Zone:  k.tupleZone,
			}, Zone: k.zone}
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
	close(t.stop)
	t.closeSockets()
	t.bg.Wait()
	return t.fallback.Close()
}

// eventsSysctl turns a namespace's conntrack events on (1; 2: for the flows made while a
// socket listens, which this cleaner's does before its dump) or off (0).
const eventsSysctl = "/proc/sys/net/netfilter/nf_conntrack_events"

// eventsOn reads eventsSysctl; a namespace without it (nf_conntrack not loaded) has none. A
// file that cannot be read is opened again next time (the module may have been reloaded).
func (t *Tracked) eventsOn() (bool, error) {
	if t.sysctl == nil {
		f, err := openInNetns(t.fallback.netns, eventsSysctl)
		var pe *fs.PathError
		if errors.As(err, &pe) && pe.Path == eventsSysctl && errors.Is(err, fs.ErrNotExist) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		t.sysctl = f
	}
	var b [16]byte
	n, err := t.sysctl.ReadAt(b[:], 0)
	if n == 0 && err != nil {
		_ = t.sysctl.Close()
		t.sysctl = nil
		return false, fmt.Errorf("read %s: %w", eventsSysctl, err)
	}
	return strings.TrimSpace(string(b[:n])) != "0", nil
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
