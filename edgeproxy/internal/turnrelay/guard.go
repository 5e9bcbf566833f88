package turnrelay

import (
	"encoding/binary"
	"net"
	"net/netip"
	"time"

	"github.com/pion/stun/v3"
	"github.com/pion/turn/v4"
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

// guardedPacketConn is the UDP listener as pion/turn reads it: frames inspect refuses are
// answered here and never reach pion/turn.
type guardedPacketConn struct {
	net.PacketConn
	r *Relay
}

func (g guardedPacketConn) ReadFrom(p []byte) (int, net.Addr, error) {
	for {
		n, addr, err := g.PacketConn.ReadFrom(p)
		if err != nil {
			return n, addr, err
		}
		reply, pass := g.r.inspect(p[:n], addr, g.LocalAddr())
		if pass {
			return n, addr, nil
		}
		if reply != nil {
			_, _ = g.PacketConn.WriteTo(reply, addr)
		}
	}
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
