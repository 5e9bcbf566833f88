package main

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/livegate/livegate/pkg/appclient/appclienttest"
	"github.com/livegate/livegate/pkg/dtlssrtp"
	"github.com/livegate/livegate/pkg/logbuf"
	"github.com/rs/zerolog"
)

// events records what the app reported, in order.
type events struct {
	mu  sync.Mutex
	got []string
	ch  chan struct{}
}

func newEvents() *events { return &events{ch: make(chan struct{}, 100)} }

func (e *events) add(ev string) {
	e.mu.Lock()
	e.got = append(e.got, ev)
	e.mu.Unlock()
	e.ch <- struct{}{}
}

func (e *events) list() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.got...)
}

// waitFor waits until the recorded events are want; the bound is generous, it is a wait, not a
// timing assertion.
func (e *events) waitFor(t *testing.T, want ...string) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for strings.Join(e.list(), ",") != strings.Join(want, ",") {
		select {
		case <-e.ch:
		case <-deadline:
			t.Fatalf("events = %v, want %v", e.list(), want)
		}
	}
}

func wsURL(srv *httptest.Server, path string) string {
	return "ws://" + strings.TrimPrefix(srv.URL, "http://") + path
}

func TestSignalingEchoesSubprotocolAndMessages(t *testing.T) {
	ev := newEvents()
	srv := httptest.NewServer(&signaling{notify: ev.add, log: zerolog.Nop()})
	defer srv.Close()

	c, _, err := websocket.Dial(t.Context(), wsURL(srv, "/sign_in?peer_id=p&version=2"),
		&websocket.DialOptions{Subprotocols: []string{"other", "x-nv-sessionid.sess-1"}})
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	if got := c.Subprotocol(); got != "x-nv-sessionid.sess-1" {
		t.Errorf("subprotocol = %q, want x-nv-sessionid.sess-1", got)
	}
	ev.waitFor(t, "client-connected")
	if err := c.Write(t.Context(), websocket.MessageText, []byte(`{"hello":1}`)); err != nil {
		t.Fatal(err)
	}
	typ, msg, err := c.Read(t.Context())
	if err != nil || typ != websocket.MessageText || string(msg) != `{"hello":1}` {
		t.Errorf("echo = %v %q %v", typ, msg, err)
	}
	_ = c.Close(websocket.StatusNormalClosure, "")
	ev.waitFor(t, "client-connected", "client-disconnected")
}

func TestSignalingChecksSessionID(t *testing.T) {
	ev := newEvents()
	srv := httptest.NewServer(&signaling{sessionID: "mine", notify: ev.add, log: zerolog.Nop()})
	defer srv.Close()
	tests := []struct {
		name   string
		opts   *websocket.DialOptions
		query  string
		status int
	}{
		{"subprotocol", &websocket.DialOptions{Subprotocols: []string{"x-nv-sessionid.mine"}}, "", http.StatusSwitchingProtocols},
		{"header", &websocket.DialOptions{HTTPHeader: http.Header{"X-Session-Id": {"mine"}}}, "", http.StatusSwitchingProtocols},
		{"query", &websocket.DialOptions{}, "?sessionId=mine", http.StatusSwitchingProtocols},
		{"other session", &websocket.DialOptions{Subprotocols: []string{"x-nv-sessionid.theirs"}}, "", http.StatusForbidden},
		{"no session", &websocket.DialOptions{}, "", http.StatusForbidden},
		{"invalid session", &websocket.DialOptions{HTTPHeader: http.Header{"X-Session-Id": {"a b"}}}, "", http.StatusBadRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, resp, err := websocket.Dial(t.Context(), wsURL(srv, "/sign_in"+tt.query), tt.opts)
			if resp == nil {
				t.Fatalf("no answer: %v", err)
			}
			if resp.StatusCode != tt.status {
				t.Errorf("status %d, want %d", resp.StatusCode, tt.status)
			}
			if c != nil {
				_ = c.Close(websocket.StatusNormalClosure, "")
			}
		})
	}
}

func freeAddr(t *testing.T, network string) string {
	t.Helper()
	if network == "udp" {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Close()
		return pc.LocalAddr().String()
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func TestRunServesSignalingAndMedia(t *testing.T) {
	ev := &appclienttest.Agent{}
	agent := httptest.NewServer(ev)
	defer agent.Close()
	sigAddr, mediaAddr := freeAddr(t, "tcp"), freeAddr(t, "udp")
	ctx, cancel := context.WithCancel(t.Context())
	var stderr logbuf.Buffer
	exited := make(chan int, 1)
	go func() {
		exited <- run(ctx, []string{"--signaling-addr", sigAddr, "--media-addr", mediaAddr,
			"--agent-app-addr", strings.TrimPrefix(agent.URL, "http://"), "--session-id", "s1",
			"--log-format", "json"}, &stderr)
	}()
	ev.WaitFor(t, "app-ready", "rtx-ready")

	c, _, err := websocket.Dial(t.Context(), "ws://"+sigAddr+"/sign_in?peer_id=x&version=2",
		&websocket.DialOptions{Subprotocols: []string{"x-nv-sessionid.s1"}})
	if err != nil {
		t.Fatalf("dial signaling: %v", err)
	}
	ev.WaitFor(t, "app-ready", "rtx-ready", "client-connected")
	rep, err := dtlssrtp.Probe(t.Context(), mediaAddr, dtlssrtp.WithCount(30), dtlssrtp.WithRate(300))
	if err != nil {
		t.Fatalf("probe media: %v", err)
	}
	if rep.Received != 30 {
		t.Errorf("media echoed %d of 30", rep.Received)
	}
	_ = c.Close(websocket.StatusNormalClosure, "")
	ev.WaitFor(t, "app-ready", "rtx-ready", "client-connected", "client-disconnected")

	cancel()
	if code := <-exited; code != 0 {
		t.Errorf("run exited %d; log:\n%s", code, stderr.String())
	}
}

func TestRunUsageErrors(t *testing.T) {
	for _, args := range [][]string{{"--session-id", "a/b"}, {"--bogus"}, {"stray"}, {"--log-level", "loud"}} {
		var stderr bytes.Buffer
		if code := run(t.Context(), args, &stderr); code != 2 {
			t.Errorf("run %v = %d, want 2 (stderr %q)", args, code, stderr.String())
		}
	}
}
