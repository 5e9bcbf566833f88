package udpflow

import (
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"time"
)

func TestStepFigures(t *testing.T) {
	s := Step{Offered: 1000, Sent: 1000, Received: 990, Elapsed: time.Second}
	if s.Loss() != 0.01 || s.Rate() != 990 || s.SentRate() != 1000 {
		t.Fatalf("loss %v rate %v sent %v", s.Loss(), s.Rate(), s.SentRate())
	}
	if (Step{}).Loss() != 0 {
		t.Fatal("empty step has loss")
	}
}

func TestBestKeepsWithinLossBudget(t *testing.T) {
	steps := []Step{
		{Sent: 100, Received: 100, Elapsed: time.Second},
		{Sent: 200, Received: 199, Elapsed: time.Second},
		{Sent: 400, Received: 300, Elapsed: time.Second},
	}
	best, ok := Best(steps, 0.01)
	if !ok || best.Received != 199 {
		t.Fatalf("Best = %+v, %v", best, ok)
	}
	if _, ok := Best(steps[2:], 0.01); ok {
		t.Fatal("a lossy step was accepted")
	}
}

func TestTURNFraming(t *testing.T) {
	if h := ChannelHeader(1200); binary.BigEndian.Uint16(h) != Channel || binary.BigEndian.Uint16(h[2:]) != 1200 {
		t.Fatalf("ChannelHeader = %x", h)
	}
	// RFC 8489: the port is XORed with the cookie's top 16 bits, the address with the cookie.
	x := xorAddr(netip.MustParseAddrPort("198.19.1.2:31000"))
	if binary.BigEndian.Uint16(x[2:])^0x2112 != 31000 || binary.BigEndian.Uint32(x[4:])^magicCookie != 0xC6130102 {
		t.Fatalf("xorAddr = %x", x)
	}
}

func TestRunCountsOverLoopback(t *testing.T) {
	rx, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	sink := NewSink(rx)
	defer sink.Close()
	tx, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Close()
	p := Path{Name: "loopback", Conn: tx, Dst: rx.LocalAddr().(*net.UDPAddr), Sink: sink}
	st, err := Run(context.Background(), p, 7, 2000, 100*time.Millisecond, 64)
	if err != nil {
		t.Fatal(err)
	}
	if st.Sent == 0 || st.Received == 0 || st.Received > st.Sent {
		t.Fatalf("step %+v", st)
	}
}
