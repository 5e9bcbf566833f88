package haproxy_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/livegate/livegate/edgeproxy/internal/haproxy/haproxytest"
	"github.com/livegate/livegate/pkg/freeport"
)

// TestFrontendRefusesOldTLS checks against the real HAProxy that TLS 1.0 and 1.1 handshakes fail
// and that TLS 1.2 without forward secrecy is refused while TLS 1.2 and 1.3 with it work.
func TestFrontendRefusesOldTLS(t *testing.T) {
	h := haproxytest.StartNew(t)
	addr := fmt.Sprintf("127.0.0.1:%d", h.Port)
	dial := func(cfg *tls.Config) error {
		cfg.InsecureSkipVerify = true
		d := &net.Dialer{Timeout: 5 * time.Second}
		c, err := tls.DialWithDialer(d, "tcp", addr, cfg)
		if err == nil {
			c.Close()
		}
		return err
	}
	for _, v := range []uint16{tls.VersionTLS10, tls.VersionTLS11} {
		if err := dial(&tls.Config{MinVersion: v, MaxVersion: v}); err == nil {
			t.Errorf("%s handshake accepted", tls.VersionName(v))
		}
	}
	rsaKex := &tls.Config{MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{tls.TLS_RSA_WITH_AES_128_GCM_SHA256}}
	if err := dial(rsaKex); err == nil {
		t.Error("TLS 1.2 with RSA key exchange (no forward secrecy) accepted")
	}
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		if err := dial(&tls.Config{MinVersion: v, MaxVersion: v}); err != nil {
			t.Errorf("%s handshake: %v", tls.VersionName(v), err)
		}
	}
}

// rawRequest sends req over TLS and returns the status line, the headers and the body.
func rawRequest(t *testing.T, port int, req string) (string, http.Header, string) {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", fmt.Sprintf("127.0.0.1:%d", port), &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("read answer: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	return resp.Status, resp.Header, string(b)
}

func TestFrontendLimitsAndDisclosure(t *testing.T) {
	h := haproxytest.StartNew(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Server", "TalkativeApp/9.9.9")
		w.Header().Set("X-Powered-By", "Framework/1.2.3")
		_, _ = io.WriteString(w, "app")
	}))
	t.Cleanup(app.Close)
	if err := h.Driver.Apply(ctx, map[string]string{"lgs-s": app.Listener.Addr().String()}, nil); err != nil {
		t.Fatal(err)
	}
	get := func(path, extra string) string {
		return "GET " + path + " HTTP/1.1\r\nHost: edge\r\nX-Session-Id: lgs-s\r\n" + extra + "Connection: close\r\n\r\n"
	}
	tests := []struct {
		name, req, status, body string
	}{
		{"routed", get("/", ""), "200 OK", "app"},
		{"unknown session", strings.Replace(get("/", ""), "lgs-s", "lgs-nope", 1), "404 Not Found", "unknown session"},
		{"headers too large", get("/", "X-Pad: "+strings.Repeat("a", 9000)+"\r\n"), "431 Request Header Fields Too Large", "request headers too large"},
		{"too many headers", get("/", strings.Repeat("X-N: 1\r\n", 70)), "431 Request Header Fields Too Large", "request headers too large"},
		{"request line too long", get("/"+strings.Repeat("p", 5000), ""), "414 Request-URI Too Long", "request line too long"},
		{"body too large", "POST / HTTP/1.1\r\nHost: edge\r\nX-Session-Id: lgs-s\r\nContent-Length: 1000000\r\nConnection: close\r\n\r\n", "413 Request Entity Too Large", "request body too large"},
		{"beyond the buffer", get("/", "X-Pad: "+strings.Repeat("b", 20000)+"\r\n"), "400 Bad request", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, hdr, body := rawRequest(t, h.Port, tt.req)
			if !strings.EqualFold(status, tt.status) || !strings.Contains(body, tt.body) {
				t.Errorf("got %s %q, want %s %q", status, body, tt.status, tt.body)
			}
			for k, vs := range hdr {
				for _, v := range vs {
					if l := strings.ToLower(k + ": " + v); strings.Contains(l, "haproxy") || strings.Contains(l, "9.9.9") || strings.Contains(l, "1.2.3") {
						t.Errorf("answer discloses software: %s: %s", k, v)
					}
				}
			}
			if strings.Contains(strings.ToLower(body), "haproxy") {
				t.Errorf("body names the proxy: %q", body)
			}
		})
	}
}

// TestRequestTimeoutSparesWebsockets checks that a connection that never starts its TLS
// handshake, and one that never sends its request, are closed after the request timeout, while
// an established websocket idle for longer stays open.
func TestRequestTimeoutSparesWebsockets(t *testing.T) {
	f := haproxytest.NewFiles(t, haproxytest.Dir(t))
	cfg := f.ConfigFor(freeport.TCP(t))
	cfg.RequestTimeout = time.Second
	h := haproxytest.Start(t, cfg, f)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b := haproxytest.StartBackend(t, "app", false)
	if err := h.Driver.Apply(ctx, map[string]string{"s": b.Addr.String()}, nil); err != nil {
		t.Fatal(err)
	}
	conn, _, err := haproxytest.Open(ctx, h.Port, "/", []string{"x-nv-sessionid.s"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.CloseNow()

	addr := fmt.Sprintf("127.0.0.1:%d", h.Port)
	// Closed well before the 60 s of timeout client that applied to handshakes before.
	closedWithin := func(what string, c net.Conn) {
		t.Helper()
		_ = c.SetReadDeadline(time.Now().Add(15 * time.Second))
		if _, err := io.Copy(io.Discard, c); err != nil {
			t.Errorf("%s: not closed by haproxy: %v", what, err)
		}
	}
	raw, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	closedWithin("no TLS handshake", raw)
	tc, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	_, _ = io.WriteString(tc, "GET / HTTP/1.1\r\nHost: edge\r\n")
	closedWithin("request never finished", tc)

	// By now the websocket has idled for more than twice the request timeout.
	if err := conn.Write(ctx, websocket.MessageText, []byte("still open")); err != nil {
		t.Fatal(err)
	}
	if _, msg, err := conn.Read(ctx); err != nil || string(msg) != "still open" {
		t.Fatalf("websocket after idling: %q %v", msg, err)
	}
}

// TestHeaderLinesAndFirstSessionID checks that the header-count limit counts header lines, so
// that long subprotocol lists pass, and that the first x-nv-sessionid token routes, the one an
// app echoes.
func TestHeaderLinesAndFirstSessionID(t *testing.T) {
	h := haproxytest.StartNew(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a, b := haproxytest.StartBackend(t, "a", true), haproxytest.StartBackend(t, "b", true)
	if err := h.Driver.Apply(ctx, map[string]string{"sa": a.Addr.String(), "sb": b.Addr.String()}, nil); err != nil {
		t.Fatal(err)
	}
	protos := []string{"x-nv-sessionid.sa"}
	for i := range 59 {
		protos = append(protos, fmt.Sprintf("p%d", i))
	}
	if res, err := haproxytest.DialWith(ctx, h.Port, "/", protos, nil); err != nil || res.Message != "a /" {
		t.Fatalf("60 subprotocols in one header: %+v %v", res, err)
	}
	res, err := haproxytest.DialWith(ctx, h.Port, "/", []string{"x-nv-sessionid.sa", "x-nv-sessionid.sb"}, nil)
	if err != nil || res.Message != "a /" || res.Subprotocol != "x-nv-sessionid.sa" {
		t.Fatalf("two session ids: %+v %v, want the first routed and echoed", res, err)
	}
	req := func(lines ...string) string {
		return "GET / HTTP/1.1\r\nHost: edge\r\n" + strings.Join(lines, "\r\n") + "\r\nConnection: close\r\n\r\n"
	}
	var thirty []string
	for i := range 29 {
		thirty = append(thirty, fmt.Sprintf("p%d", i))
	}
	list := strings.Join(thirty, ", ")
	_, hdr, _ := rawRequest(t, h.Port, req("Sec-WebSocket-Protocol: x-nv-sessionid.sb, "+list, "Sec-WebSocket-Protocol: x-nv-sessionid.sa, "+list))
	if got := hdr.Get("X-Backend"); got != "b" {
		t.Fatalf("two header lines of 30 values reached %q, want b (the first line's id)", got)
	}
}
