package wsclient

import (
	"context"
	"crypto/sha1"
	"encoding/base64"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// upgrader answers like the demo app: 101 with the subprotocol echoed unless echo is false, 404
// for another session id. It records the close frame it receives.
func upgrader(t *testing.T, echo bool, closed chan<- []byte) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		proto := r.Header.Get("Sec-WebSocket-Protocol")
		if proto != "x-nv-sessionid.s1" {
			http.NotFound(w, r)
			return
		}
		sum := sha1.Sum([]byte(r.Header.Get("Sec-WebSocket-Key") + acceptGUID))
		conn, rw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		defer conn.Close()
		answer := "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " +
			base64.StdEncoding.EncodeToString(sum[:]) + "\r\n"
		if echo {
			answer += "Sec-WebSocket-Protocol: " + proto + "\r\n"
		}
		_, _ = rw.WriteString(answer + "\r\n")
		_ = rw.Flush()
		frame := make([]byte, 8)
		if _, err := io.ReadFull(rw, frame); err == nil {
			closed <- frame
		}
	})
}

func dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, network, addr)
}

// serve starts h behind TLS until the end of the test and returns a context for it.
func serve(t *testing.T, h http.Handler) (context.Context, string) {
	srv := httptest.NewTLSServer(h)
	t.Cleanup(srv.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx, strings.TrimPrefix(srv.URL, "https://")
}

func TestDialHoldsAndClosesCleanly(t *testing.T) {
	closed := make(chan []byte, 1)
	ctx, addr := serve(t, upgrader(t, true, closed))
	c, err := Dial(ctx, dial, addr, "s1")
	if err != nil {
		t.Fatal(err)
	}
	if c.Protocol != "x-nv-sessionid.s1" {
		t.Fatalf("protocol %q", c.Protocol)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	frame := <-closed
	code := uint16(frame[6]^frame[2])<<8 | uint16(frame[7]^frame[3])
	if frame[0] != 0x88 || frame[1] != 0x82 || code != 1000 {
		t.Fatalf("close frame % x (code %d)", frame, code)
	}
}

func TestDialRefusals(t *testing.T) {
	for _, tc := range []struct {
		name    string
		echo    bool
		session string
		want    string
		status  int
	}{
		{name: "unknown session", echo: true, session: "nope", status: http.StatusNotFound},
		{name: "subprotocol not echoed", echo: false, session: "s1", want: "subprotocol"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, addr := serve(t, upgrader(t, tc.echo, make(chan []byte, 1)))
			_, err := Dial(ctx, dial, addr, tc.session)
			if err == nil {
				t.Fatal("dial succeeded")
			}
			var se *StatusError
			if tc.status != 0 && (!errors.As(err, &se) || se.Code != tc.status) {
				t.Fatalf("error %v, want HTTP %d", err, tc.status)
			}
			if tc.want != "" && !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
		})
	}
}

// echoServer accepts session s1's websocket as the demo app does and sends every message back,
// then closes with 4000 when told "bye".
func echoServer(t *testing.T) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, &websocket.AcceptOptions{Subprotocols: []string{"x-nv-sessionid.s1"}})
		if err != nil {
			t.Error(err)
			return
		}
		defer c.CloseNow()
		c.SetReadLimit(1 << 20)
		for {
			typ, msg, err := c.Read(r.Context())
			if err != nil {
				return
			}
			if string(msg) == "bye" {
				_ = c.Close(4000, "bye")
				return
			}
			if err := c.Write(r.Context(), typ, msg); err != nil {
				return
			}
		}
	})
}

func TestSendReceiveEcho(t *testing.T) {
	ctx, addr := serve(t, echoServer(t))
	c, err := Dial(ctx, dial, addr, "s1")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Abort()
	for range 3 {
		if err := c.Echo(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// Each of the three payload length encodings.
	for _, n := range []int{125, 126, 70000} {
		msg := []byte(strings.Repeat("x", n))
		if err := c.Send(ctx, msg); err != nil {
			t.Fatal(err)
		}
		got, err := c.Receive(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != string(msg) {
			t.Fatalf("%d bytes sent, %d received", n, len(got))
		}
	}
	if err := c.Send(ctx, []byte("bye")); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Receive(ctx); err == nil || !strings.Contains(err.Error(), "4000") {
		t.Fatalf("receive after the server closed: %v, want its close code", err)
	}
}
