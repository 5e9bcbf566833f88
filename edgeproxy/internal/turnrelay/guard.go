package turnrelay

import (
	"encoding/binary"
	"net"
	"net/netip"
	"time"

	"github.com/pion/stun/v3"
	"github.com/pion/turn/v4"
	"golang.org/x/net/ipv4"
)

// inspect looks at a frame from a client before pion/turn does. It passes everything but a
// CreatePermission or ChannelBind request, authenticated with a session's credential, for a
// peer outside that session's media, or under another session's credential than the
// allocation's: that gets reply, a 403, and is not passed on. A request that verifies under a
// secret other than the current one leaves its key for auth.
func (r *Relay) inspect(frame []byte, src, dst net.Addr) (reply []byte, pass bool) {
	// Only requests are looked at; ChannelData and indications are the data path.
	if len(frame) < 20 || !stun.IsMessage(frame) {
		return nil, true
	}
	if t := binary.BigEndian.Uint16(frame[0:2]); t&0x0110 != 0 {
		return nil, true
	}
	m := &stun.Message{Raw: append([]byte(nil), frame...)}
	if m.Decode() != nil || !m.Contains(stun.AttrMessageIntegrity) {
		return nil, true
	}
	var user stun.Username
	var realm stun.Realm
	if user.GetFrom(m) != nil || realm.GetFrom(m) != nil {
		return nil, true
	}
	username := user.String()
	exp, session, err := ParseUsername(username)
	if err != nil {
		return nil, true
	}
	var key []byte
	for i, s := range r.sec.all() {
		k := Key(s, username, realm.String())
		if stun.MessageIntegrity(k).Check(m) != nil {
			continue
		}
		key = k
		if i > 0 {
			r.mu.Lock()
			r.oldKeys[username+"\x00"+src.String()] = oldKey{key: k, expires: exp}
			r.mu.Unlock()
		}
		break
	}
	if key == nil || (m.Type.Method != stun.MethodCreatePermission && m.Type.Method != stun.MethodChannelBind) {
		return nil, true
	}
	r.mu.Lock()
	c := r.clients[tuple(src, dst)]
	r.mu.Unlock()
	if c == nil {
		return nil, true
	}
	owner := c.session.Load()
	if owner == nil || *owner != session {
		r.refuse(RefusedMismatch, session, src, "turn request refused: credential of another session than the allocation's")
		return forbidden(m, key), false
	}
	denied := netip.AddrPort{}
	_ = m.ForEach(stun.AttrXORPeerAddress, func(m *stun.Message) error {
		var a stun.XORMappedAddress
		if err := a.GetFromAs(m, stun.AttrXORPeerAddress); err != nil {
			return err
		}
		if peer := (&net.UDPAddr{IP: a.IP, Port: a.Port}); !denied.IsValid() && !r.permits(session, peer) {
			denied = peer.AddrPort()
		}
		return nil
	})
	if !denied.IsValid() {
		return nil, true
	}
	r.m.refusals.WithLabelValues(RefusedPeer).Inc()
	r.refLog.Info().Str("reason", RefusedPeer).Str("session_id", session).Str("client", src.String()).
		Str("peer", denied.String()).Str("method", m.Type.Method.String()).Msg("turn permission refused: peer outside the session's media")
	return forbidden(m, key), false
}

// forbidden is the 403 answer to m, signed with key as the client expects.
func forbidden(m *stun.Message, key []byte) []byte {
	res, err := stun.Build(stun.NewTransactionIDSetter(m.TransactionID),
		stun.NewType(m.Type.Method, stun.ClassErrorResponse),
		&stun.ErrorCodeAttribute{Code: stun.CodeForbidden, Reason: []byte("Forbidden")},
		stun.MessageIntegrity(key), stun.Fingerprint)
	if err != nil {
		return nil
	}
	return res.Raw
}

// batchSize is how many datagrams one system call reads from the listener or sends on a relay
// socket.
const batchSize = 64

// guardedPacketConn is the UDP listener as pion/turn reads it: frames inspect refuses are
// answered here and never reach pion/turn. pion/turn reads and writes one datagram per call, two
// system calls per relayed datagram, which is most of what relaying costs; so this reads
// datagrams in batches (recvmmsg) and hands them out one at a time, and the relay sockets of
// its clients, which only this goroutine writes to, queue what they send until it has handed
// out the batch, then send it in one call each (sendmmsg). A datagram waits for at most the
// rest of the batch it came in.
type guardedPacketConn struct {
	net.PacketConn
	r       *Relay
	pc      *ipv4.PacketConn
	msgs    []ipv4.Message
	n, next int
	// dirty are the relay sockets with datagrams queued.
	dirty []*relayConn
}

func newGuardedPacketConn(c net.PacketConn, r *Relay) *guardedPacketConn {
	g := &guardedPacketConn{PacketConn: c, r: r, pc: ipv4.NewPacketConn(c), msgs: make([]ipv4.Message, batchSize)}
	for i := range g.msgs {
		g.msgs[i].Buffers = [][]byte{make([]byte, 2048)}
	}
	return g
}

func (g *guardedPacketConn) ReadFrom(p []byte) (int, net.Addr, error) {
	for {
		if g.next >= g.n {
			g.flush()
			n, err := g.pc.ReadBatch(g.msgs, 0)
			if err != nil {
				return 0, nil, err
			}
			g.n, g.next = n, 0
		}
		m := &g.msgs[g.next]
		g.next++
		frame := m.Buffers[0][:m.N]
		reply, pass := g.r.inspect(frame, m.Addr, g.LocalAddr())
		if pass {
			return copy(p, frame), m.Addr, nil
		}
		if reply != nil {
			_, _ = g.PacketConn.WriteTo(reply, m.Addr)
		}
	}
}

// flush sends what the relay sockets queued.
func (g *guardedPacketConn) flush() {
	for _, c := range g.dirty {
		c.flush()
	}
	clear(g.dirty)
	g.dirty = g.dirty[:0]
}

// guardedListener does the same for TCP and TLS: each connection is read frame by frame.
type guardedListener struct {
	net.Listener
	r *Relay
}

func (l guardedListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &guardedConn{Conn: c, r: l.r, frames: turn.NewSTUNConn(c), buf: make([]byte, 1<<16)}, nil
}

type guardedConn struct {
	net.Conn
	r       *Relay
	frames  *turn.STUNConn
	buf     []byte
	pending []byte
}

// tcpIdle closes a TCP or TLS connection silent this long, a handshake included: a live client
// refreshes its permissions every 5 minutes and its allocation before 10 minutes pass.
const tcpIdle = 11 * time.Minute

// Read returns the frames inspect passes, whole when p holds them.
func (c *guardedConn) Read(p []byte) (int, error) {
	for len(c.pending) == 0 {
		if err := c.Conn.SetReadDeadline(time.Now().Add(tcpIdle)); err != nil {
			return 0, err
		}
		n, _, err := c.frames.ReadFrom(c.buf)
		if err != nil {
			return 0, err
		}
		reply, pass := c.r.inspect(c.buf[:n], c.RemoteAddr(), c.LocalAddr())
		if pass {
			c.pending = c.buf[:n]
			break
		}
		if reply != nil {
			if _, err := c.Conn.Write(reply); err != nil {
				return 0, err
			}
		}
	}
	n := copy(p, c.pending)
	c.pending = c.pending[n:]
	return n, nil
}
