package dnatmap

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/livegate/livegate/edgeproxy/internal/portalloc"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Kernel is the map in a network namespace's nftables, reached through one netlink socket that
// stays open until Close. It is safe for concurrent use: calls are serialised.
type Kernel struct {
	mu     sync.Mutex
	conn   *nftables.Conn
	raw    *netlink.Conn // the same socket as conn's, for element batches the library cannot flag
	closed bool
	// stale is set when a call gave up before every answer it asked for was read: the rest
	// may still arrive, and are read off the socket before the next call.
	stale bool
}

type options struct {
	netns string
}

// Option configures Open.
type Option func(*options)

// WithNetns makes the Kernel work in the named network namespace, /run/netns/<name> (as
// `ip netns add` makes it); "" is the process's own. The socket stays in the namespace it was
// opened in: a namespace deleted and made again under the same name needs a new Kernel.
func WithNetns(name string) Option { return func(o *options) { o.netns = name } }

// elemChunk bounds the elements of one netlink message: the element list is one attribute,
// whose length field has 16 bits; an element takes 32 bytes.
const elemChunk = 1024

// sendBuffer is the socket's send buffer. A batch is one sendmsg, and the whole range
// (9,501 ports) set at once is about 300 KB, past the default of about 200 KB.
const sendBuffer = 4 << 20

// ackWait bounds the wait for the kernel's answers to one batch, so a lost answer cannot hang
// a caller whose context has no deadline.
const ackWait = 30 * time.Second

// Open opens the netlink socket, in the namespace given by WithNetns if any.
func Open(opts ...Option) (*Kernel, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	k := &Kernel{}
	capture := nftables.WithSockOptions(func(c *netlink.Conn) error {
		k.raw = c
		// An error answer then carries only the header of the message it refuses, not the
		// message: a refused batch of thousands of elements fits the receive buffer. Kernels
		// without it (before 4.3) answer in full; not an error.
		_ = c.SetOption(netlink.CapAcknowledge, true)
		return growSendBuffer(c)
	})
	connOpts := []nftables.ConnOption{nftables.AsLasting(), capture}
	if o.netns != "" {
		// The socket stays in the namespace it was opened in, so the fd is needed only until then.
		f, err := os.Open(filepath.Join("/run/netns", o.netns))
		if err != nil {
			return nil, fmt.Errorf("dnatmap: open netns %s: %w", o.netns, err)
		}
		defer f.Close()
		connOpts = append(connOpts, nftables.WithNetNSFd(int(f.Fd())))
	}
	conn, err := nftables.New(connOpts...)
	if err != nil {
		if k.raw != nil {
			k.raw.Close()
		}
		return nil, fmt.Errorf("dnatmap: open netlink socket (netns %q): %w", o.netns, err)
	}
	k.conn = conn
	return k, nil
}

// growSendBuffer forces the send buffer past net.core.wmem_max (the process needs
// CAP_NET_ADMIN for nftables anyway) and falls back to what the limit allows.
func growSendBuffer(c *netlink.Conn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return fmt.Errorf("netlink socket: %w", err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, sendBuffer)
	}); err != nil {
		return fmt.Errorf("netlink socket: %w", err)
	}
	if serr != nil {
		if err := c.SetWriteBuffer(sendBuffer); err != nil {
			return fmt.Errorf("netlink socket send buffer: %w", err)
		}
	}
	return nil
}

// Close closes the socket. Later calls fail.
func (k *Kernel) Close() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed {
		return nil
	}
	k.closed = true
	if err := k.conn.CloseLasting(); err != nil {
		return fmt.Errorf("dnatmap: close: %w", err)
	}
	return nil
}

// errClosed guards against the library's fallback after CloseLasting: a fresh socket per call
// in the process's own namespace, which may not be the one the Kernel was opened for.
var errClosed = errors.New("dnatmap: kernel closed")

func (k *Kernel) ready(ctx context.Context) error {
	if k.closed {
		return errClosed
	}
	return ctx.Err()
}

// begin starts a call: it reads off what an earlier call left unread and bounds every read of
// this one by the context's deadline or ackWait, whichever comes first, so that a lost answer
// cannot hold the caller (the media plane's sync) for ever. end clears the bound and, when the
// call timed out, marks the socket as holding answers still to come. k.mu is held.
func (k *Kernel) begin(ctx context.Context) (end func(err error), err error) {
	if err := k.ready(ctx); err != nil {
		return nil, err
	}
	if k.stale {
		k.drain()
	}
	deadline := time.Now().Add(ackWait)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	if err := k.raw.SetReadDeadline(deadline); err != nil {
		return nil, fmt.Errorf("netlink read deadline: %w", err)
	}
	return func(err error) {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			k.stale = true
		}
		_ = k.raw.SetReadDeadline(time.Time{})
	}, nil
}

// drainWait is how long drain waits for answers still to come.
const drainWait = 5 * time.Millisecond

// drain reads and drops what is queued on the socket.
func (k *Kernel) drain() {
	for {
		if err := k.raw.SetReadDeadline(time.Now().Add(drainWait)); err != nil {
			return
		}
		if _, err := k.raw.Receive(); errors.Is(err, os.ErrDeadlineExceeded) {
			k.stale = false
			return
		}
	}
}

// Read reports whether the layout is current and lists the map's elements. It changes
// nothing. A missing table is State{Current: false} with no elements and no error; a map of
// another type has its elements left unread.
func (k *Kernel) Read(ctx context.Context, l Layout) (st State, err error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	end, err := k.begin(ctx)
	if err != nil {
		return State{}, fmt.Errorf("dnatmap: read table %s: %w", Table, err)
	}
	defer func() { end(err) }()
	s, err := k.snapshot(ctx, l)
	if err != nil {
		return State{}, err
	}
	return State{Current: s.current(), Layout: s.layout, Elements: s.elements}, nil
}

// Ensure makes l current in one transaction unless it already is, and returns the map's
// elements. It creates what is missing, replaces chains whose rule differs and never touches
// the elements of a map of the right type. A map of another type or size is deleted and
// created anew, which loses its elements: the returned map is then empty. Chains of the table
// that are not livegate's are deleted. When l is current nothing is sent that changes the
// kernel.
func (k *Kernel) Ensure(ctx context.Context, l Layout) (_ map[uint16]netip.AddrPort, err error) {
	if !l.Public.Is4() {
		return nil, fmt.Errorf("dnatmap: ensure: public address %s is not IPv4", l.Public)
	}
	if err := l.Ports.Validate(); err != nil {
		return nil, fmt.Errorf("dnatmap: ensure: %w", err)
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	end, err := k.begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("dnatmap: ensure layout %s %s: %w", l.Public, l.Ports, err)
	}
	defer func() { end(err) }()
	s, err := k.snapshot(ctx, l)
	if err != nil {
		return nil, err
	}
	if s.current() {
		return s.elements, nil
	}
	if err := k.ready(ctx); err != nil {
		return nil, err
	}
	elements := k.plan(s, l)
	if err := k.conn.Flush(); err != nil {
		return nil, fmt.Errorf("dnatmap: ensure layout %s %s: %w", l.Public, l.Ports, err)
	}
	return elements, nil
}

// Apply deletes c.Delete's elements, then adds c.Set's, in one transaction: the kernel refuses
// all of it when a deleted port is absent, or the table is, (the error wraps syscall.ENOENT, so
// errors.Is(err, fs.ErrNotExist)) or a set port is present after the deletes (syscall.EEXIST,
// fs.ErrExist). A backend must be IPv4. An empty change sends nothing.
func (k *Kernel) Apply(ctx context.Context, c Change) (err error) {
	if c.Len() == 0 {
		return nil
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	end, err := k.begin(ctx)
	if err != nil {
		return fmt.Errorf("dnatmap: apply %d deletes and %d sets: %w", len(c.Delete), len(c.Set), err)
	}
	defer func() { end(err) }()
	msgs, err := changeMessages(c)
	if err != nil {
		return fmt.Errorf("dnatmap: apply %d deletes and %d sets: %w", len(c.Delete), len(c.Set), err)
	}
	if err := k.transact(ctx, msgs); err != nil {
		return fmt.Errorf("dnatmap: apply %d deletes and %d sets: %w", len(c.Delete), len(c.Set), err)
	}
	return nil
}

// Remove deletes the table and everything in it; an absent table is no error.
func (k *Kernel) Remove(ctx context.Context) (err error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	end, err := k.begin(ctx)
	if err != nil {
		return fmt.Errorf("dnatmap: remove table %s: %w", Table, err)
	}
	defer func() { end(err) }()
	t, err := k.table()
	if err != nil {
		return fmt.Errorf("dnatmap: remove table %s: %w", Table, err)
	}
	if t == nil {
		return nil
	}
	if err := k.ready(ctx); err != nil {
		return fmt.Errorf("dnatmap: remove table %s: %w", Table, err)
	}
	k.conn.DelTable(t)
	if err := k.conn.Flush(); err != nil {
		return fmt.Errorf("dnatmap: remove table %s: %w", Table, err)
	}
	return nil
}

// snapshot is what the kernel holds of the table, judged against a layout.
type snapshot struct {
	table    *nftables.Table // nil when absent
	dormant  bool
	set      *nftables.Set // nil when absent
	setOK    bool
	chains   []*nftables.Chain
	chainOK  map[string]bool // a livegate chain with the right hook, type, priority and policy
	rulesOK  map[string]bool // that chain holds exactly the layout's rule
	elements map[uint16]netip.AddrPort
	layout   Layout // what the prerouting chain's rule matches; zero when it is not ours
}

func (s *snapshot) current() bool {
	if s.table == nil || s.dormant || !s.setOK || len(s.chains) != 2 {
		return false
	}
	for _, name := range []string{ChainPrerouting, ChainOutput} {
		if !s.chainOK[name] || !s.rulesOK[name] {
			return false
		}
	}
	return true
}

func (k *Kernel) table() (*nftables.Table, error) {
	tables, err := k.conn.ListTablesOfFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return nil, fmt.Errorf("list tables: %w", err)
	}
	for _, t := range tables {
		if t.Name == Table {
			return t, nil
		}
	}
	return nil, nil
}

func (k *Kernel) snapshot(ctx context.Context, l Layout) (*snapshot, error) {
	s := &snapshot{chainOK: map[string]bool{}, rulesOK: map[string]bool{}, elements: map[uint16]netip.AddrPort{}}
	if err := k.ready(ctx); err != nil {
		return nil, fmt.Errorf("dnatmap: read table %s: %w", Table, err)
	}
	t, err := k.table()
	if err != nil {
		return nil, fmt.Errorf("dnatmap: read table %s: %w", Table, err)
	}
	if t == nil {
		return s, nil
	}
	s.table = t
	// The library decodes the flags in host order; the kernel sends them in network order.
	flags := binary.BigEndian.Uint32(binaryutil.NativeEndian.PutUint32(t.Flags))
	s.dormant = flags&unix.NFT_TABLE_F_DORMANT != 0

	if err := k.ready(ctx); err != nil {
		return nil, fmt.Errorf("dnatmap: read map %s: %w", Map, err)
	}
	sets, err := k.conn.GetSets(t)
	if err != nil {
		return nil, fmt.Errorf("dnatmap: read map %s: %w", Map, err)
	}
	for _, set := range sets {
		if set.Name == Map {
			s.set = set
			s.setOK = mapOK(set)
		}
	}
	if s.setOK {
		if err := k.ready(ctx); err != nil {
			return nil, fmt.Errorf("dnatmap: read map %s: %w", Map, err)
		}
		elements, ok, err := k.readElements(ctx, s.set)
		if err != nil {
			return nil, fmt.Errorf("dnatmap: read map %s: %w", Map, err)
		}
		s.setOK = ok
		if ok {
			s.elements = elements
		}
	}

	if err := k.ready(ctx); err != nil {
		return nil, fmt.Errorf("dnatmap: read chains: %w", err)
	}
	chains, err := k.conn.ListChainsOfTableFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return nil, fmt.Errorf("dnatmap: read chains: %w", err)
	}
	// A zero layout (a caller that only wants the elements, or the layout found) matches no rule.
	var want string
	if l.Public.Is4() && l.Ports.Validate() == nil {
		want = ruleText(l)
	}
	for _, c := range chains {
		if c.Table == nil || c.Table.Name != Table {
			continue
		}
		c.Table = t
		s.chains = append(s.chains, c)
		if !chainOK(c) {
			continue
		}
		s.chainOK[c.Name] = true
		if err := k.ready(ctx); err != nil {
			return nil, fmt.Errorf("dnatmap: read chain %s: %w", c.Name, err)
		}
		rules, err := k.conn.GetRules(t, c)
		if err != nil {
			return nil, fmt.Errorf("dnatmap: read chain %s: %w", c.Name, err)
		}
		s.rulesOK[c.Name] = len(rules) == 1 && want != "" && exprsText(rules[0].Exprs) == want
		if len(rules) == 1 && c.Name == ChainPrerouting {
			s.layout, _ = layoutOf(rules[0].Exprs)
		}
	}
	return s, nil
}

// dumpTries bounds the re-reads of a dump that saw a port twice.
const dumpTries = 5

// readElements dumps the map; ok is false when an element is not of the map's type. A dump
// takes several messages and the kernel walks the map anew for each, skipping as many elements
// as it already sent. When the walk's order shifts in between (a change to the map; a growing
// hash, which mapSize rules out for livegate's map), one element is sent twice and another
// never, so a dump with a port twice is read again.
func (k *Kernel) readElements(ctx context.Context, set *nftables.Set) (map[uint16]netip.AddrPort, bool, error) {
	for try := 1; ; try++ {
		if err := k.ready(ctx); err != nil {
			return nil, false, err
		}
		elems, err := k.conn.GetSetElements(set)
		if err != nil {
			return nil, false, err
		}
		out := make(map[uint16]netip.AddrPort, len(elems))
		for _, e := range elems {
			port, backend, ok := decodeElement(e)
			if !ok {
				return map[uint16]netip.AddrPort{}, false, nil
			}
			out[port] = backend
		}
		if len(out) == len(elems) {
			return out, true, nil
		}
		if try == dumpTries {
			return nil, false, fmt.Errorf("%d dumps changed while read", try)
		}
	}
}

// plan queues the transaction that makes l current from s and returns the elements the map
// holds after it.
func (k *Kernel) plan(s *snapshot, l Layout) map[uint16]netip.AddrPort {
	t := &nftables.Table{Name: Table, Family: nftables.TableFamilyIPv4}
	if s.table == nil || s.dormant {
		k.conn.AddTable(t)
	}
	var missing []string
	have := map[string]bool{}
	for _, c := range s.chains {
		ours := c.Name == ChainPrerouting || c.Name == ChainOutput
		switch {
		case ours && s.chainOK[c.Name] && s.rulesOK[c.Name] && s.setOK:
			have[c.Name] = true
		case ours && s.chainOK[c.Name]:
			// Flushed too when only the map is wrong: its rule holds a reference to the map.
			k.conn.FlushChain(c)
			have[c.Name] = true
			missing = append(missing, c.Name)
		default:
			k.conn.DelChain(c)
		}
	}
	elements := s.elements
	set := s.set
	if !s.setOK {
		if s.set != nil {
			k.conn.DelSet(s.set)
		}
		set = newMap(t)
		// AddSet refuses only anonymous sets that are not constant. Returning here would
		// leave the messages queued so far for the next Flush, as the library cannot drop them.
		_ = k.conn.AddSet(set, nil)
		elements = map[uint16]netip.AddrPort{}
	}
	for _, name := range []string{ChainPrerouting, ChainOutput} {
		if have[name] {
			continue
		}
		k.conn.AddChain(newChain(t, name))
		missing = append(missing, name)
	}
	for _, name := range missing {
		k.conn.AddRule(&nftables.Rule{Table: t, Chain: &nftables.Chain{Name: name, Table: t}, Exprs: ruleExprs(l, set)})
	}
	return elements
}

var (
	mapKey  = nftables.TypeInetService
	mapData = nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetService)
)

// mapSize is every port. A map with a size gets the kernel's fixed-size hash, whose walk order
// stays put, where one without gets a hash that grows in the background after many inserts and
// reorders a dump under way.
const mapSize = 1 << 16

func newMap(t *nftables.Table) *nftables.Set {
	return &nftables.Set{Table: t, Name: Map, IsMap: true, KeyType: mapKey, DataType: mapData, Size: mapSize}
}

func mapOK(s *nftables.Set) bool {
	return s.IsMap && !s.Anonymous && !s.Constant && !s.Interval && !s.HasTimeout && !s.Dynamic &&
		s.KeyType.GetNFTMagic() == mapKey.GetNFTMagic() && s.KeyType.Bytes == mapKey.Bytes &&
		s.DataType.GetNFTMagic() == mapData.GetNFTMagic() && s.DataType.Bytes == mapData.Bytes &&
		s.Size == mapSize
}

func newChain(t *nftables.Table, name string) *nftables.Chain {
	hook := nftables.ChainHookPrerouting
	if name == ChainOutput {
		hook = nftables.ChainHookOutput
	}
	policy := nftables.ChainPolicyAccept
	return &nftables.Chain{
		Name:     name,
		Table:    t,
		Type:     nftables.ChainTypeNAT,
		Hooknum:  hook,
		Priority: nftables.ChainPriorityRef(Priority),
		Policy:   &policy,
	}
}

func chainOK(c *nftables.Chain) bool {
	want := newChain(c.Table, c.Name)
	return (c.Name == ChainPrerouting || c.Name == ChainOutput) &&
		c.Type == want.Type && c.Device == "" &&
		c.Hooknum != nil && *c.Hooknum == *want.Hooknum &&
		c.Priority != nil && *c.Priority == *want.Priority &&
		(c.Policy == nil || *c.Policy == nftables.ChainPolicyAccept)
}

// ruleExprs is `ip daddr <Public> udp dport <First>-<Last> dnat ip to udp dport map @media`.
func ruleExprs(l Layout, set *nftables.Set) []expr.Any {
	addr := l.Public.As4()
	first := binaryutil.BigEndian.PutUint16(l.Ports.First)
	last := binaryutil.BigEndian.PutUint16(l.Ports.Last)
	dport := &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2}
	var portMatch expr.Any = &expr.Range{Op: expr.CmpOpEq, Register: 1, FromData: first, ToData: last}
	if l.Ports.First == l.Ports.Last {
		portMatch = &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: first}
	}
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: addr[:]},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_UDP}},
		dport,
		portMatch,
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Lookup{SourceRegister: 1, DestRegister: 1, IsDestRegSet: true, SetName: set.Name, SetID: set.ID},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegProtoMin: 9, Specified: true},
	}
}

// layoutOf reads the layout back from a rule of the shape ruleExprs writes.
func layoutOf(es []expr.Any) (Layout, bool) {
	if len(es) != 9 {
		return Layout{}, false
	}
	addr, ok := es[1].(*expr.Cmp)
	if !ok || len(addr.Data) != 4 {
		return Layout{}, false
	}
	l := Layout{Public: netip.AddrFrom4([4]byte(addr.Data))}
	switch m := es[5].(type) {
	case *expr.Range:
		if len(m.FromData) != 2 || len(m.ToData) != 2 {
			return Layout{}, false
		}
		l.Ports = portalloc.Range{First: binary.BigEndian.Uint16(m.FromData), Last: binary.BigEndian.Uint16(m.ToData)}
	case *expr.Cmp:
		if len(m.Data) != 2 {
			return Layout{}, false
		}
		port := binary.BigEndian.Uint16(m.Data)
		l.Ports = portalloc.Range{First: port, Last: port}
	default:
		return Layout{}, false
	}
	if l.Ports.Validate() != nil || exprsText(es) != ruleText(l) {
		return Layout{}, false
	}
	return l, true
}

func ruleText(l Layout) string {
	return exprsText(ruleExprs(l, &nftables.Set{Name: Map}))
}

// exprsText renders a rule's expressions with what the kernel keeps of them and nothing it
// adds or the library fills in (handles, set ids), so a rule read back compares equal to the
// one written. An expression of another kind renders as its type, which matches nothing.
func exprsText(es []expr.Any) string {
	var b []byte
	for _, e := range es {
		switch e := e.(type) {
		case *expr.Payload:
			b = fmt.Appendf(b, "[payload op%d base%d +%d len%d => %d <= %d csum%d]",
				e.OperationType, e.Base, e.Offset, e.Len, e.DestRegister, e.SourceRegister, e.CsumType)
		case *expr.Cmp:
			b = fmt.Appendf(b, "[cmp op%d reg%d %x]", e.Op, e.Register, e.Data)
		case *expr.Meta:
			b = fmt.Appendf(b, "[meta key%d reg%d src%t]", e.Key, e.Register, e.SourceRegister)
		case *expr.Range:
			b = fmt.Appendf(b, "[range op%d reg%d %x-%x]", e.Op, e.Register, e.FromData, e.ToData)
		case *expr.Lookup:
			b = fmt.Appendf(b, "[lookup %q reg%d dreg%d/%t inv%t]", e.SetName, e.SourceRegister, e.DestRegister, e.IsDestRegSet, e.Invert)
		case *expr.NAT:
			// The kernel reports a maximum register equal to the minimum when none was given.
			b = fmt.Appendf(b, "[nat type%d fam%d addr%d-%d proto%d-%d rnd%t full%t pers%t pfx%t spec%t]",
				e.Type, e.Family, e.RegAddrMin, orMin(e.RegAddrMax, e.RegAddrMin), e.RegProtoMin, orMin(e.RegProtoMax, e.RegProtoMin),
				e.Random, e.FullyRandom, e.Persistent, e.Prefix, e.Specified)
		default:
			b = fmt.Appendf(b, "[%T]", e)
		}
	}
	return string(b)
}

func orMin(max, min uint32) uint32 {
	if max == 0 {
		return min
	}
	return max
}

// Element encoding: the key is the port in network order; the data is the IPv4 address and
// the port, each in network order, padded to the 4-byte registers (ipv4_addr . inet_service).
func encodeKey(port uint16) []byte { return binaryutil.BigEndian.PutUint16(port) }

func encodeData(b netip.AddrPort) []byte {
	a := b.Addr().As4()
	v := make([]byte, 8)
	copy(v, a[:])
	binary.BigEndian.PutUint16(v[4:], b.Port())
	return v
}

func decodeElement(e nftables.SetElement) (uint16, netip.AddrPort, bool) {
	if len(e.Key) < 2 || len(e.Val) < 6 || e.IntervalEnd {
		return 0, netip.AddrPort{}, false
	}
	addr := netip.AddrFrom4([4]byte(e.Val[:4]))
	return binary.BigEndian.Uint16(e.Key), netip.AddrPortFrom(addr, binary.BigEndian.Uint16(e.Val[4:6])), true
}

// changeMessages builds the element messages of c. The library's SetAddElements cannot ask for
// NLM_F_EXCL, without which the kernel accepts adding a port that is present with the same
// backend; with it, any present port refuses the transaction, as Change documents.
func changeMessages(c Change) ([]netlink.Message, error) {
	var msgs []netlink.Message
	add := func(kind int, flags netlink.HeaderFlags, items [][]byte) error {
		for len(items) > 0 {
			n := min(len(items), elemChunk)
			list := make([]netlink.Attribute, n)
			for i, item := range items[:n] {
				list[i] = netlink.Attribute{Type: unix.NLA_F_NESTED | unix.NFTA_LIST_ELEM, Data: item}
			}
			elems, err := netlink.MarshalAttributes(list)
			if err != nil {
				return fmt.Errorf("marshal elements: %w", err)
			}
			data, err := netlink.MarshalAttributes([]netlink.Attribute{
				{Type: unix.NFTA_SET_ELEM_LIST_TABLE, Data: []byte(Table + "\x00")},
				{Type: unix.NFTA_SET_ELEM_LIST_SET, Data: []byte(Map + "\x00")},
				{Type: unix.NLA_F_NESTED | unix.NFTA_SET_ELEM_LIST_ELEMENTS, Data: elems},
			})
			if err != nil {
				return fmt.Errorf("marshal element list: %w", err)
			}
			msgs = append(msgs, netlink.Message{
				Header: netlink.Header{
					Type:  netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | kind),
					Flags: netlink.Request | netlink.Acknowledge | flags,
				},
				Data: append([]byte{unix.AF_INET, unix.NFNETLINK_V0, 0, 0}, data...),
			})
			items = items[n:]
		}
		return nil
	}
	dels := make([][]byte, 0, len(c.Delete))
	for _, port := range c.Delete {
		item, err := elementAttrs(port, nil)
		if err != nil {
			return nil, err
		}
		dels = append(dels, item)
	}
	sets := make([][]byte, 0, len(c.Set))
	for port, backend := range c.Set {
		backend = netip.AddrPortFrom(backend.Addr().Unmap(), backend.Port())
		if !backend.Addr().Is4() {
			return nil, fmt.Errorf("port %d: backend %s is not IPv4", port, backend)
		}
		item, err := elementAttrs(port, encodeData(backend))
		if err != nil {
			return nil, err
		}
		sets = append(sets, item)
	}
	if err := add(unix.NFT_MSG_DELSETELEM, 0, dels); err != nil {
		return nil, err
	}
	if err := add(unix.NFT_MSG_NEWSETELEM, netlink.Create|netlink.Excl, sets); err != nil {
		return nil, err
	}
	return msgs, nil
}

func elementAttrs(port uint16, data []byte) ([]byte, error) {
	key, err := netlink.MarshalAttributes([]netlink.Attribute{{Type: unix.NFTA_DATA_VALUE, Data: encodeKey(port)}})
	if err != nil {
		return nil, fmt.Errorf("marshal key %d: %w", port, err)
	}
	attrs := []netlink.Attribute{{Type: unix.NLA_F_NESTED | unix.NFTA_SET_ELEM_KEY, Data: key}}
	if data != nil {
		val, err := netlink.MarshalAttributes([]netlink.Attribute{{Type: unix.NFTA_DATA_VALUE, Data: data}})
		if err != nil {
			return nil, fmt.Errorf("marshal data of %d: %w", port, err)
		}
		attrs = append(attrs, netlink.Attribute{Type: unix.NLA_F_NESTED | unix.NFTA_SET_ELEM_DATA, Data: val})
	}
	b, err := netlink.MarshalAttributes(attrs)
	if err != nil {
		return nil, fmt.Errorf("marshal element %d: %w", port, err)
	}
	return b, nil
}

// transact sends msgs as one batch and collects the kernel's answer to each: it processes the
// whole batch and answers every message, errors included, before it commits or aborts.
func (k *Kernel) transact(ctx context.Context, msgs []netlink.Message) error {
	batch := make([]netlink.Message, 0, len(msgs)+2)
	batch = append(batch, batchMessage(unix.NFNL_MSG_BATCH_BEGIN))
	batch = append(batch, msgs...)
	batch = append(batch, batchMessage(unix.NFNL_MSG_BATCH_END))
	sent, err := k.raw.SendMessages(batch)
	if err != nil {
		k.stale = true
		return fmt.Errorf("send batch: %w", err)
	}
	// Only this batch's answers count: the acks of its element messages, by sequence number.
	mine := make(map[uint32]bool, len(msgs))
	for _, m := range sent[1 : len(sent)-1] {
		mine[m.Header.Sequence] = true
	}
	var errs error
	for answered := 0; answered < len(msgs); {
		replies, err := k.raw.Receive()
		if err != nil {
			var errno syscall.Errno
			if !errors.As(err, &errno) || errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, os.ErrPermission) ||
				errno == syscall.ENOBUFS || errno == syscall.ENOMEM {
				// Not an answer to one message: the rest may or may not come.
				k.stale = true
				return errors.Join(errs, err)
			}
			errs = errors.Join(errs, err)
			answered++
			continue
		}
		for _, r := range replies {
			if mine[r.Header.Sequence] {
				answered++
			}
		}
	}
	if errs != nil {
		return fmt.Errorf("kernel refused the batch: %w", errs)
	}
	return nil
}

func batchMessage(kind int) netlink.Message {
	return netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(kind), Flags: netlink.Request},
		Data:   []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, unix.NFNL_SUBSYS_NFTABLES},
	}
}
