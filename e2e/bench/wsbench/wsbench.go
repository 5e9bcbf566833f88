// Package wsbench measures websocket handshakes: sequential latency and connections per second
// with concurrent clients, through HAProxy (TLS, session id in the subprotocol) or straight to the
// backend. It speaks just the RFC 6455 opening handshake, the same code on both paths.
package wsbench

import (
	"bufio"
	"context"
	"crypto/sha1"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/livegate/livegate/e2e/bench/stats"
)

const acceptGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// Dial opens a TCP connection (in some network namespace).
type Dial func(ctx context.Context, network, addr string) (net.Conn, error)

// Target is where handshakes go.
type Target struct {
	Dial      Dial
	Addr      string
	TLS       bool
	SessionID string
}

// Handshake opens and closes one websocket.
func Handshake(ctx context.Context, t Target) error {
	raw, err := t.Dial(ctx, "tcp", t.Addr)
	if err != nil {
		return err
	}
	c := raw
	if t.TLS {
		// A fresh configuration: no session resumption, a full handshake like a new browser tab.
		c = tls.Client(raw, &tls.Config{InsecureSkipVerify: true, ServerName: "livegate"}) //nolint:gosec // the edge's self-signed bench certificate
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	} else {
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	}
	key := "dGhlIHNhbXBsZSBub25jZQ=="
	proto := "x-nv-sessionid." + t.SessionID
	req := "GET /sign_in?peer_id=bench&version=2 HTTP/1.1\r\nHost: " + t.Addr + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: " + key + "\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: " + proto + "\r\n\r\n"
	if _, err := io.WriteString(c, req); err != nil {
		return err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return err
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusSwitchingProtocols {
		return fmt.Errorf("websocket handshake with %s: HTTP %d", t.Addr, resp.StatusCode)
	}
	if resp.Header.Get("Sec-WebSocket-Accept") != accept(key) || resp.Header.Get("Sec-WebSocket-Protocol") != proto {
		return fmt.Errorf("websocket handshake with %s: bad accept or subprotocol", t.Addr)
	}
	return nil
}

func accept(key string) string {
	h := sha1.Sum([]byte(key + acceptGUID))
	return base64.StdEncoding.EncodeToString(h[:])
}

// Result is one path's figures.
type Result struct {
	Latency  stats.Durations
	ConnRate float64
	Errors   int64
	FirstErr error
}

// Measure times n sequential handshakes, then counts handshakes per second with conc clients
// for d.
func Measure(ctx context.Context, t Target, n, conc int, d time.Duration) Result {
	var r Result
	for range n {
		start := time.Now()
		if err := Handshake(ctx, t); err != nil {
			r.Errors++
			if r.FirstErr == nil {
				r.FirstErr = err
			}
			continue
		}
		r.Latency = append(r.Latency, time.Since(start))
	}
	var ok, failed atomic.Int64
	var once sync.Once
	var wg sync.WaitGroup
	start := time.Now()
	end := start.Add(d)
	for range conc {
		wg.Go(func() {
			for time.Now().Before(end) && ctx.Err() == nil {
				if err := Handshake(ctx, t); err != nil {
					failed.Add(1)
					once.Do(func() {
						if r.FirstErr == nil {
							r.FirstErr = err
						}
					})
					continue
				}
				ok.Add(1)
			}
		})
	}
	wg.Wait()
	r.ConnRate = float64(ok.Load()) / time.Since(start).Seconds()
	r.Errors += failed.Load()
	return r
}

// Serve answers websocket handshakes on ln like an app's signaling server, echoing the offered
// subprotocol, and closes each connection after the handshake.
func Serve(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			req, err := http.ReadRequest(bufio.NewReader(c))
			if err != nil {
				return
			}
			if !strings.EqualFold(req.Header.Get("Upgrade"), "websocket") {
				_, _ = io.WriteString(c, "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
				return
			}
			resp := "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " +
				accept(req.Header.Get("Sec-WebSocket-Key")) + "\r\n"
			if p := req.Header.Get("Sec-WebSocket-Protocol"); p != "" {
				resp += "Sec-WebSocket-Protocol: " + strings.TrimSpace(strings.Split(p, ",")[0]) + "\r\n"
			}
			_, _ = io.WriteString(c, resp+"\r\n")
			// Hold until the client closes, as a websocket server would.
			_, _ = io.Copy(io.Discard, c)
		}()
	}
}
