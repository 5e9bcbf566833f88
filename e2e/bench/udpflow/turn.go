package udpflow

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/pion/stun/v3"
)

const (
	// Channel is the channel number the bench binds; ChannelData frames start with it.
	Channel = 0x4000
	// magicCookie is STUN's fixed header value (RFC 8489 section 5), which XOR-PEER-ADDRESS uses.
	magicCookie = 0x2112A442
)

// TURNChannel allocates a relay on server through conn without credentials and binds Channel to
// peer, so the sender can then write ChannelData frames (ChannelHeader) to server.
// Authentication costs once per allocation, not per packet, so a relay without it gives the
// same forwarding figures.
func TURNChannel(ctx context.Context, conn *net.UDPConn, server *net.UDPAddr, peer netip.AddrPort) error {
	s := &TURNSession{conn: conn, server: server}
	if _, err := s.request(ctx, stun.MethodAllocate, requestedUDP, lifetime); err != nil {
		return fmt.Errorf("turn allocate on %s: %w", server, err)
	}
	return s.BindChannel(ctx, peer)
}

// ChannelHeader is the ChannelData header of a payload of the given size.
func ChannelHeader(size int) []byte {
	h := binary.BigEndian.AppendUint16(nil, Channel)
	return binary.BigEndian.AppendUint16(h, uint16(size))
}

// The attributes of an allocation: a UDP relay (RFC 8656 section 18.11), for ten minutes.
var (
	requestedUDP = stun.RawAttribute{Type: stun.AttrRequestedTransport, Value: []byte{17, 0, 0, 0}}
	lifetime     = stun.RawAttribute{Type: stun.AttrLifetime, Value: binary.BigEndian.AppendUint32(nil, 600)}
)

// xorAddr is an XOR-PEER-ADDRESS value (RFC 8489 section 14.2): the port is XORed with the magic
// cookie's top 16 bits, the IPv4 address with the cookie.
func xorAddr(ap netip.AddrPort) []byte {
	a := ap.Addr().As4()
	b := []byte{0, 1}
	b = binary.BigEndian.AppendUint16(b, ap.Port()^uint16(magicCookie>>16))
	return binary.BigEndian.AppendUint32(b, binary.BigEndian.Uint32(a[:])^magicCookie)
}

// TURNSession is an allocation on a relay; on one that asks for long-term credentials (RFC 8489
// section 9.2), the realm and nonce it gave, and the key its requests are signed with.
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
	res, err := stunRequest(ctx, conn, server, stun.MethodAllocate, requestedUDP)
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
	if _, err := s.request(ctx, stun.MethodAllocate, requestedUDP, lifetime); err != nil {
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

// request sends a request, signed when the session has credentials, and returns a success
// answer.
func (s *TURNSession) request(ctx context.Context, method stun.Method, attrs ...stun.Setter) (*stun.Message, error) {
	if s.key != nil {
		attrs = append(attrs, stun.NewUsername(s.username), s.realm, s.nonce, s.key)
	}
	res, err := stunRequest(ctx, s.conn, s.server, method, attrs...)
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
