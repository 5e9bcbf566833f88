package udpflow

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"time"
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
