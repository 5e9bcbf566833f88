// Package probetest serves what `livegate-edgeproxy probe` checks, for tests: an app's signaling
// websocket and a DTLS-SRTP echo responder.
package probetest

import (
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/coder/websocket"
	"github.com/livegate/livegate/edgeproxy/internal/probe"
	"github.com/livegate/livegate/pkg/dtlssrtp"
	"github.com/livegate/livegate/pkg/freeport"
)

// Signaling is a websocket endpoint like an app's /sign_in.
type Signaling struct {
	// echo is whether it selects the offered subprotocol.
	echo bool

	mu   sync.Mutex
	seen Seen
}

// Seen is what a Signaling server was sent.
type Seen struct {
	// Queries, Offered and Marked are each request's query, offered subprotocol and probe header.
	Queries, Offered, Marked []string
	// Accepted counts the websockets it accepted.
	Accepted int
}

// Seen is what the server was sent so far.
func (s *Signaling) Seen() Seen {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.seen
}

func (s *Signaling) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/sign_in" {
		http.NotFound(w, r)
		return
	}
	s.mu.Lock()
	s.seen.Queries = append(s.seen.Queries, r.URL.RawQuery)
	s.seen.Offered = append(s.seen.Offered, r.Header.Get("Sec-WebSocket-Protocol"))
	s.seen.Marked = append(s.seen.Marked, r.Header.Get(probe.ProbeHeader))
	s.mu.Unlock()
	opts := &websocket.AcceptOptions{}
	if s.echo {
		opts.Subprotocols = []string{r.Header.Get("Sec-WebSocket-Protocol")}
	}
	c, err := websocket.Accept(w, r, opts)
	if err != nil {
		return
	}
	s.mu.Lock()
	s.seen.Accepted++
	s.mu.Unlock()
	defer c.CloseNow()
	for {
		if _, _, err := c.Read(r.Context()); err != nil {
			return
		}
	}
}

// StartSignaling serves a Signaling over TLS (a certificate no client trusts) until the test
// ends; echo is whether it selects the offered subprotocol. It returns the wss:// URL.
func StartSignaling(t testing.TB, echo bool) (*Signaling, string) {
	t.Helper()
	s := &Signaling{echo: echo}
	srv := httptest.NewUnstartedServer(s)
	// The untrusted-certificate case makes the server log a TLS error that says nothing new.
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return s, "wss://" + strings.TrimPrefix(srv.URL, "https://") + "/sign_in"
}

// StartResponder runs a DTLS-SRTP echo responder until the test ends; it returns its udp:// address.
func StartResponder(t testing.TB) string {
	t.Helper()
	r, err := dtlssrtp.NewResponder(t.Context(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return "udp://" + r.Addr().String()
}

// ClosedUDPPort is the udp:// address of a loopback port nothing listens on.
func ClosedUDPPort(t testing.TB) string { return "udp://" + freeport.UDP(t) }
