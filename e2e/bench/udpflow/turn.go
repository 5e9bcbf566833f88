package udpflow

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/pion/stun/v3"
)

// TURN (RFC 8656) message and attribute types the bench needs. The relay runs without
// credentials: authentication costs once per allocation, not per packet, so it does not change
// the forwarding figures.
const (
	turnAllocate    = 0x0003
	turnChannelBind = 0x0009
	successBit      = 0x0100
	errorBit        = 0x0110
	magicCookie     = 0x2112A442

	attrChannelNumber      = 0x000C
	attrLifetime           = 0x000D
	attrXorPeerAddress     = 0x0012
	attrRequestedTransport = 0x0019

	// Channel is the channel number the bench binds; ChannelData frames start with it.
	Channel = 0x4000
)

// TURNChannel allocates a relay on server through conn and binds Channel to peer, so the
// sender can then write ChannelData frames (ChannelHeader) to server.
func TURNChannel(ctx context.Context, conn *net.UDPConn, server *net.UDPAddr, peer netip.AddrPort) error {
	if _, err := turnRequest(ctx, conn, server, turnAllocate, attr(attrRequestedTransport, []byte{17, 0, 0, 0}),
		attr(attrLifetime, binary.BigEndian.AppendUint32(nil, 600))); err != nil {
		return fmt.Errorf("turn allocate on %s: %w", server, err)
	}
	ch := binary.BigEndian.AppendUint16(nil, Channel)
	ch = append(ch, 0, 0)
	if _, err := turnRequest(ctx, conn, server, turnChannelBind, attr(attrChannelNumber, ch), attr(attrXorPeerAddress, xorAddr(peer))); err != nil {
		return fmt.Errorf("turn channel bind to %s: %w", peer, err)
	}
	return nil
}

// ChannelHeader is the ChannelData header of a payload of the given size.
func ChannelHeader(size int) []byte {
	h := binary.BigEndian.AppendUint16(nil, Channel)
	return binary.BigEndian.AppendUint16(h, uint16(size))
}

func attr(t uint16, v []byte) []byte {
	b := binary.BigEndian.AppendUint16(nil, t)
	b = binary.BigEndian.AppendUint16(b, uint16(len(v)))
	b = append(b, v...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

func xorAddr(ap netip.AddrPort) []byte {
	a := ap.Addr().As4()
	b := []byte{0, 1}
	b = binary.BigEndian.AppendUint16(b, ap.Port()^uint16(magicCookie>>16))
	return binary.BigEndian.AppendUint32(b, binary.BigEndian.Uint32(a[:])^magicCookie)
}

// turnRequest sends a request and waits for its answer, retrying a lost one a few times.
func turnRequest(ctx context.Context, conn *net.UDPConn, server *net.UDPAddr, method uint16, attrs ...[]byte) ([]byte, error) {
	var body []byte
	for _, a := range attrs {
		body = append(body, a...)
	}
	msg := binary.BigEndian.AppendUint16(nil, method)
	msg = binary.BigEndian.AppendUint16(msg, uint16(len(body)))
	msg = binary.BigEndian.AppendUint32(msg, magicCookie)
	txid := make([]byte, 12)
	_, _ = rand.Read(txid)
	msg = append(append(msg, txid...), body...)
	buf := make([]byte, 1500)
	for range 5 {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if _, err := conn.WriteToUDP(msg, server); err != nil {
			return nil, err
		}
		_ = conn.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		for {
			n, _, err := conn.ReadFromUDP(buf)
			if err != nil {
				break
			}
			if n < 20 || string(buf[8:20]) != string(txid) {
				continue
			}
			_ = conn.SetReadDeadline(time.Time{})
			switch binary.BigEndian.Uint16(buf[:2]) {
			case method | successBit:
				return buf[:n], nil
			case method | errorBit:
				return nil, fmt.Errorf("error response %x", buf[20:n])
			}
		}
	}
	_ = conn.SetReadDeadline(time.Time{})
	return nil, fmt.Errorf("no answer from %s", server)
}

// TURNSession is an allocation on a relay that asks for long-term credentials (RFC 8489
// section 9.2): the realm and nonce it gave, and the key its requests are signed with.
type TURNSession struct {
	conn     *net.UDPConn
	server   *net.UDPAddr
	username string
	realm    stun.Realm
	nonce    stun.Nonce
	key      stun.MessageIntegrity
}

// TURNAllocate allocates a relay on server through conn with username and password.
func TURNAllocate(ctx context.Context, conn *net.UDPConn, server *net.UDPAddr, username, password string) (*TURNSession, error) {
	transport := stun.RawAttribute{Type: stun.AttrRequestedTransport, Value: []byte{17, 0, 0, 0}}
	res, err := stunRequest(ctx, conn, server, stun.MethodAllocate, transport)
	if err != nil {
		return nil, fmt.Errorf("turn allocate on %s: %w", server, err)
	}
	s := &TURNSession{conn: conn, server: server, username: username}
	if err := s.realm.GetFrom(res); err != nil {
		return nil, fmt.Errorf("turn allocate on %s: no realm in the challenge: %w", server, err)
	}
	if err := s.nonce.GetFrom(res); err != nil {
		return nil, fmt.Errorf("turn allocate on %s: no nonce in the challenge: %w", server, err)
	}
	s.key = stun.NewLongTermIntegrity(username, s.realm.String(), password)
	lifetime := stun.RawAttribute{Type: stun.AttrLifetime, Value: binary.BigEndian.AppendUint32(nil, 600)}
	if _, err := s.request(ctx, stun.MethodAllocate, transport, lifetime); err != nil {
		return nil, fmt.Errorf("turn allocate on %s: %w", server, err)
	}
	return s, nil
}

// BindChannel binds Channel to peer, so the sender can write ChannelData frames (ChannelHeader).
func (s *TURNSession) BindChannel(ctx context.Context, peer netip.AddrPort) error {
	ch := stun.RawAttribute{Type: stun.AttrChannelNumber, Value: []byte{Channel >> 8, Channel & 0xff, 0, 0}}
	addr := stun.RawAttribute{Type: stun.AttrXORPeerAddress, Value: xorAddr(peer)}
	if _, err := s.request(ctx, stun.MethodChannelBind, ch, addr); err != nil {
		return fmt.Errorf("turn channel bind to %s: %w", peer, err)
	}
	return nil
}

func (s *TURNSession) request(ctx context.Context, method stun.Method, attrs ...stun.Setter) (*stun.Message, error) {
	res, err := stunRequest(ctx, s.conn, s.server, method, append(attrs, stun.NewUsername(s.username), s.realm, s.nonce, s.key)...)
	if err != nil {
		return nil, err
	}
	if res.Type.Class != stun.ClassSuccessResponse {
		var code stun.ErrorCodeAttribute
		_ = code.GetFrom(res)
		return nil, fmt.Errorf("error response %d %s", code.Code, code.Reason)
	}
	return res, nil
}

// stunRequest sends a request and returns its answer, success or error, retrying a lost one a
// few times.
func stunRequest(ctx context.Context, conn *net.UDPConn, server *net.UDPAddr, method stun.Method, attrs ...stun.Setter) (*stun.Message, error) {
	setters := append([]stun.Setter{stun.TransactionID, stun.NewType(method, stun.ClassRequest)}, attrs...)
	req, err := stun.Build(append(setters, stun.Fingerprint)...)
	if err != nil {
		return nil, err
	}
	buf := make([]byte, 1500)
	defer func() { _ = conn.SetReadDeadline(time.Time{}) }()
	for range 5 {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if _, err := conn.WriteToUDP(req.Raw, server); err != nil {
			return nil, err
		}
		_ = conn.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		for {
			n, _, err := conn.ReadFromUDP(buf)
			if err != nil {
				break
			}
			res := &stun.Message{Raw: append([]byte(nil), buf[:n]...)}
			if res.Decode() != nil || res.TransactionID != req.TransactionID {
				continue
			}
			return res, nil
		}
	}
	return nil, fmt.Errorf("no answer from %s", server)
}
