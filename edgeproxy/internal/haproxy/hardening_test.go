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
)

// TestFrontendRefusesOldTLS checks against the real HAProxy that TLS 1.0 and 1.1 handshakes fail
// and that TLS 1.2 without forward secrecy is refused while TLS 1.2 and 1.3 with it work.
func TestFrontendRefusesOldTLS(t *testing.T) {
	h := start(t)
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
	h := start(t)
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
