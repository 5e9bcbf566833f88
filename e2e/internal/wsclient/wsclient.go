// Package wsclient opens a secure websocket the way a browser's streaming client does: the session
// id travels as the subprotocol x-nv-sessionid.<id>, and the answer must echo it. It speaks just
// enough of RFC 6455 to open, hold and close the connection, so a test controls exactly when the
// app sees its client arrive and leave.
package wsclient

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha1"
	"crypto/tls"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// acceptGUID is RFC 6455's key suffix.
const acceptGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// Conn is an open websocket.
type Conn struct {
	conn net.Conn
	// Protocol is the subprotocol the server chose.
	Protocol string
	// Handshake is how long TLS plus the upgrade took.
	Handshake time.Duration
}

// StatusError is a handshake answered with something other than 101.
type StatusError struct{ Code int }

func (e *StatusError) Error() string { return fmt.Sprintf("websocket handshake: HTTP %d", e.Code) }

// Dial opens wss://addr/sign_in for sessionID through dial (which decides the network namespace).
func Dial(ctx context.Context, dial func(ctx context.Context, network, addr string) (net.Conn, error), addr, sessionID string) (*Conn, error) {
	start := time.Now()
	raw, err := dial(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("websocket %s: %w", addr, err)
	}
	// The edge serves a self-signed certificate in tests and the demo; what is under test is the
	// routing behind TLS, not the certificate.
	tc := tls.Client(raw, &tls.Config{InsecureSkipVerify: true, ServerName: "livegate"})
	if dl, ok := ctx.Deadline(); ok {
		_ = tc.SetDeadline(dl)
	}
	c, err := handshake(ctx, tc, addr, sessionID)
	if err != nil {
		_ = tc.Close()
		return nil, err
	}
	_ = tc.SetDeadline(time.Time{})
	c.Handshake = time.Since(start)
	return c, nil
}

func handshake(ctx context.Context, tc *tls.Conn, addr, sessionID string) (*Conn, error) {
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, fmt.Errorf("websocket %s: tls: %w", addr, err)
	}
	nonce := make([]byte, 16)
	_, _ = rand.Read(nonce)
	key := base64.StdEncoding.EncodeToString(nonce)
	proto := "x-nv-sessionid." + sessionID
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+addr+"/sign_in?peer_id=peer-e2e&version=2", nil)
	if err != nil {
		return nil, fmt.Errorf("websocket %s: %w", addr, err)
	}
	req.Header.Set("Upgrade", "websocket")
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Sec-WebSocket-Key", key)
	req.Header.Set("Sec-WebSocket-Version", "13")
	req.Header.Set("Sec-WebSocket-Protocol", proto)
	if err := req.Write(tc); err != nil {
		return nil, fmt.Errorf("websocket %s: send upgrade: %w", addr, err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(tc), req)
	if err != nil {
		return nil, fmt.Errorf("websocket %s: read upgrade answer: %w", addr, err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		_ = resp.Body.Close()
		return nil, fmt.Errorf("websocket %s session %s: %w", addr, sessionID, &StatusError{Code: resp.StatusCode})
	}
	sum := sha1.Sum([]byte(key + acceptGUID))
	if got, want := resp.Header.Get("Sec-WebSocket-Accept"), base64.StdEncoding.EncodeToString(sum[:]); got != want {
		return nil, fmt.Errorf("websocket %s: Sec-WebSocket-Accept %q, want %q", addr, got, want)
	}
	if got := resp.Header.Get("Sec-WebSocket-Protocol"); got != proto {
		return nil, fmt.Errorf("websocket %s: subprotocol %q echoed, want %q (browsers close with 1002)", addr, got, proto)
	}
	return &Conn{conn: tc, Protocol: proto}, nil
}

// Close sends a close frame (1000, normal closure), waits briefly for the server's, and closes
// the connection.
func (c *Conn) Close() error {
	var frame [8]byte
	frame[0] = 0x88     // FIN, opcode close
	frame[1] = 0x80 | 2 // masked, 2-byte payload
	_, _ = rand.Read(frame[2:6])
	binary.BigEndian.PutUint16(frame[6:], 1000)
	frame[6] ^= frame[2]
	frame[7] ^= frame[3]
	_ = c.conn.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.conn.Write(frame[:]); err == nil {
		_, _ = io.Copy(io.Discard, c.conn)
	}
	return c.conn.Close()
}

// Abort drops the connection without a close frame, like a client whose network went away.
func (c *Conn) Abort() error { return c.conn.Close() }
