package wsbench

import (
	"context"
	"net"
	"testing"
	"time"
)

func TestHandshakeAgainstServe(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go Serve(ln)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var d net.Dialer
	tgt := Target{Dial: d.DialContext, Addr: ln.Addr().String(), SessionID: "abc"}
	if err := Handshake(ctx, tgt); err != nil {
		t.Fatal(err)
	}
	r := Measure(ctx, tgt, 3, 2, 50*time.Millisecond)
	if r.Errors != 0 || len(r.Latency) != 3 || r.ConnRate <= 0 {
		t.Fatalf("Measure = %+v", r)
	}
}

func TestAcceptKnownAnswer(t *testing.T) {
	// RFC 6455 section 1.3's example.
	if got := accept("dGhlIHNhbXBsZSBub25jZQ=="); got != "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" {
		t.Fatalf("accept = %q", got)
	}
}
