package turnrelay

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync/atomic"

	"golang.org/x/net/ipv4"
)

// generator hands out allocations' relay sockets from the configured port range.
type generator struct{ r *Relay }

func (g *generator) Validate() error { return nil }

// errNoRelayPort is an allocation for which no port of the range could be bound.
var errNoRelayPort = errors.New("no free relay port")

// AllocatePacketConn binds a relay socket: on requestedPort when the client asked for one (it
// must be inside the range), else on a random port of the range.
func (g *generator) AllocatePacketConn(network string, requestedPort int) (net.PacketConn, net.Addr, error) {
	rp := g.r.cfg.RelayPorts
	if requestedPort != 0 {
		if requestedPort < 0 || requestedPort > 65535 || !rp.Contains(uint16(requestedPort)) {
			return nil, nil, fmt.Errorf("requested relay port %d is outside %s", requestedPort, rp)
		}
		return g.bind(network, uint16(requestedPort))
	}
	span := rp.Size()
	start := rand.IntN(span)
	for i := range min(span, 64) {
		port := uint16(int(rp.First) + (start+i)%span)
		if c, a, err := g.bind(network, port); err == nil {
			return c, a, nil
		}
	}
	return nil, nil, errNoRelayPort
}

func (g *generator) bind(network string, port uint16) (net.PacketConn, net.Addr, error) {
	if network != "udp4" && network != "udp" {
		return nil, nil, fmt.Errorf("relay network %q: only udp", network)
	}
	pc, err := net.ListenPacket("udp4", netip.AddrPortFrom(g.r.cfg.Listen, port).String())
	if err != nil {
		return nil, nil, err
	}
	_ = pc.(*net.UDPConn).SetReadBuffer(relayBuffer)
	c := &relayConn{PacketConn: pc, r: g.r, port: int(port), pc: ipv4.NewPacketConn(pc)}
	g.r.mu.Lock()
	g.r.allocs[c.port] = c
	g.r.mu.Unlock()
	return c, net.UDPAddrFromAddrPort(netip.AddrPortFrom(g.r.cfg.PublicIP, port)), nil
}

// AllocateConn refuses TCP relay allocations (RFC 6062): media is UDP.
func (g *generator) AllocateConn(string, int) (net.Conn, net.Addr, error) {
	return nil, nil, errors.New("tcp relay allocations are not supported")
}

// relayConn is an allocation's relay socket: it passes only datagrams to and from the media of
// the allocation's session, and counts them.
type relayConn struct {
	net.PacketConn
	r    *Relay
	port int
	// session is set once the allocation is made; until then nothing passes.
	session atomic.Pointer[string]
	closed  atomic.Bool
	// batch, set when the allocation is a UDP client's, is the listener whose goroutine alone
	// writes to this socket: what it writes is queued (queue[:queued]) until that goroutine
	// flushes it (see guardedPacketConn).
	batch  *guardedPacketConn
	pc     *ipv4.PacketConn
	queue  []ipv4.Message
	queued int
}

func (c *relayConn) allowed(addr net.Addr) bool {
	s := c.session.Load()
	return s != nil && c.r.permits(*s, addr)
}

func (c *relayConn) WriteTo(p []byte, addr net.Addr) (int, error) {
	if !c.allowed(addr) {
		c.r.m.refusals.WithLabelValues(RefusedPeerTraffic).Inc()
		return len(p), nil
	}
	if c.batch != nil {
		c.enqueue(p, addr)
		return len(p), nil
	}
	n, err := c.PacketConn.WriteTo(p, addr)
	if err == nil {
		c.r.m.toPeer.packets.Inc()
		c.r.m.toPeer.bytes.Add(float64(n))
	}
	return n, err
}

// enqueue copies p into the queue: the caller reuses its buffer.
func (c *relayConn) enqueue(p []byte, addr net.Addr) {
	if c.queued == 0 {
		c.batch.dirty = append(c.batch.dirty, c)
	}
	if c.queued == len(c.queue) {
		c.queue = append(c.queue, ipv4.Message{Buffers: [][]byte{make([]byte, 0, 1600)}})
	}
	m := &c.queue[c.queued]
	m.Buffers[0] = append(m.Buffers[0][:0], p...)
	m.Addr = addr
	c.queued++
	if c.queued == batchSize {
		c.flush()
	}
}

// flush sends the queue; a datagram the socket refuses is lost, as UDP may lose it anyway.
func (c *relayConn) flush() {
	msgs := c.queue[:c.queued]
	c.queued = 0
	for len(msgs) > 0 {
		n, err := c.pc.WriteBatch(msgs, 0)
		if err != nil || n == 0 {
			return
		}
		bytes := 0
		for _, m := range msgs[:n] {
			bytes += len(m.Buffers[0])
		}
		c.r.m.toPeer.packets.Add(float64(n))
		c.r.m.toPeer.bytes.Add(float64(bytes))
		msgs = msgs[n:]
	}
}

func (c *relayConn) ReadFrom(p []byte) (int, net.Addr, error) {
	for {
		n, addr, err := c.PacketConn.ReadFrom(p)
		if err != nil {
			return n, addr, err
		}
		if c.allowed(addr) {
			c.r.m.fromPeer.packets.Inc()
			c.r.m.fromPeer.bytes.Add(float64(n))
			return n, addr, nil
		}
		c.r.m.refusals.WithLabelValues(RefusedPeerTraffic).Inc()
	}
}

// Close closes the socket once; pion/turn then deletes the allocation.
func (c *relayConn) Close() error {
	if c.closed.Swap(true) {
		return nil
	}
	c.r.mu.Lock()
	if c.r.allocs[c.port] == c {
		delete(c.r.allocs, c.port)
	}
	c.r.mu.Unlock()
	return c.PacketConn.Close()
}
