// Package wsclient opens a secure websocket the way a browser's streaming client does: the session
// id travels as the subprotocol x-nv-sessionid.<id>, and the answer must echo it. It speaks just
// enough of RFC 6455 to open, hold and close the connection and to send and receive text, so a
// test controls exactly when the app sees its client arrive and leave, and sees data pass both
// ways (the demo app echoes what it gets).
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

// Conn is an open websocket. Its reads and writes are one goroutine's.
type Conn struct {
	conn net.Conn
	// r holds what the server sent after its upgrade answer, read with it.
	r *bufio.Reader
	// echoes numbers Echo's messages.
	echoes int
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
	r := bufio.NewReader(tc)
	resp, err := http.ReadResponse(r, req)
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
	return &Conn{conn: tc, r: r, Protocol: proto}, nil
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
		_, _ = io.Copy(io.Discard, c.r)
	}
	return c.conn.Close()
}

// Abort drops the connection without a close frame, like a client whose network went away.
func (c *Conn) Abort() error { return c.conn.Close() }

// Opcodes of RFC 6455 section 5.2.
const (
	opContinuation = 0x0
	opText         = 0x1
	opBinary       = 0x2
	opClose        = 0x8
	opPing         = 0x9
	opPong         = 0xa
)

// maxMessage bounds a message Receive accepts: a test's messages are short.
const maxMessage = 1 << 20

// Send sends msg as one text message.
func (c *Conn) Send(ctx context.Context, msg []byte) error {
	defer c.bound(ctx)()
	if err := c.writeFrame(opText, msg); err != nil {
		return fmt.Errorf("websocket send: %w", err)
	}
	return nil
}

// Receive returns the next data message, answering pings on the way. A close frame from the
// server ends it with an error naming the close code.
func (c *Conn) Receive(ctx context.Context) ([]byte, error) {
	defer c.bound(ctx)()
	var msg []byte
	for {
		fin, op, payload, err := c.readFrame()
		if err != nil {
			return nil, fmt.Errorf("websocket receive: %w", err)
		}
		switch op {
		case opPing:
			if err := c.writeFrame(opPong, payload); err != nil {
				return nil, fmt.Errorf("websocket pong: %w", err)
			}
			continue
		case opPong:
			continue
		case opClose:
			code := 1005 // no status received
			if len(payload) >= 2 {
				code = int(binary.BigEndian.Uint16(payload))
			}
			return nil, fmt.Errorf("websocket receive: closed by the server (%d)", code)
		case opText, opBinary, opContinuation:
		default:
			return nil, fmt.Errorf("websocket receive: opcode %#x", op)
		}
		if len(msg)+len(payload) > maxMessage {
			return nil, fmt.Errorf("websocket receive: message over %d bytes", maxMessage)
		}
		msg = append(msg, payload...)
		if fin {
			return msg, nil
		}
	}
}

// Echo sends a numbered message and waits for the server to send it back.
func (c *Conn) Echo(ctx context.Context) error {
	c.echoes++
	want := fmt.Sprintf("echo-%d", c.echoes)
	if err := c.Send(ctx, []byte(want)); err != nil {
		return err
	}
	got, err := c.Receive(ctx)
	if err != nil {
		return err
	}
	if string(got) != want {
		return fmt.Errorf("websocket echo %q, want %q", got, want)
	}
	return nil
}

// bound makes ctx's deadline and cancellation the connection's until the returned func runs.
func (c *Conn) bound(ctx context.Context) func() {
	if dl, ok := ctx.Deadline(); ok {
		_ = c.conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = c.conn.SetDeadline(time.Unix(1, 0)) })
	return func() {
		stop()
		_ = c.conn.SetDeadline(time.Time{})
	}
}

// writeFrame writes one final frame, masked as a client's must be.
func (c *Conn) writeFrame(op byte, payload []byte) error {
	header := []byte{0x80 | op}
	switch n := len(payload); {
	case n < 126:
		header = append(header, 0x80|byte(n))
	case n <= 0xffff:
		header = append(header, 0x80|126)
		header = binary.BigEndian.AppendUint16(header, uint16(n))
	default:
		header = append(header, 0x80|127)
		header = binary.BigEndian.AppendUint64(header, uint64(n))
	}
	var mask [4]byte
	_, _ = rand.Read(mask[:])
	frame := append(header, mask[:]...)
	for i, b := range payload {
		frame = append(frame, b^mask[i%4])
	}
	_, err := c.conn.Write(frame)
	return err
}

// readFrame reads one frame; a server's frames are not masked.
func (c *Conn) readFrame() (fin bool, op byte, payload []byte, err error) {
	var head [2]byte
	if _, err := io.ReadFull(c.r, head[:]); err != nil {
		return false, 0, nil, err
	}
	fin, op = head[0]&0x80 != 0, head[0]&0x0f
	if head[1]&0x80 != 0 {
		return false, 0, nil, fmt.Errorf("masked frame from the server")
	}
	n := uint64(head[1] & 0x7f)
	switch n {
	case 126:
		var ext [2]byte
		if _, err := io.ReadFull(c.r, ext[:]); err != nil {
			return false, 0, nil, err
		}
		n = uint64(binary.BigEndian.Uint16(ext[:]))
	case 127:
		var ext [8]byte
		if _, err := io.ReadFull(c.r, ext[:]); err != nil {
			return false, 0, nil, err
		}
		n = binary.BigEndian.Uint64(ext[:])
	}
	if n > maxMessage {
		return false, 0, nil, fmt.Errorf("frame of %d bytes, over %d", n, maxMessage)
	}
	payload = make([]byte, n)
	if _, err := io.ReadFull(c.r, payload); err != nil {
		return false, 0, nil, err
	}
	return fin, op, payload, nil
}
