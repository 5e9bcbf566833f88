package edgebench

import (
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"
)

// udpGone on loopback: an echo that answers, then stops answering, is reported gone no earlier
// than when it stopped.
func TestUDPGoneAfterEchoStops(t *testing.T) {
	srv := loopbackUDP(t)
	var answering atomic.Bool
	answering.Store(true)
	var echoed atomic.Int64
	go serveEcho(srv, func() bool {
		if !answering.Load() {
			return false
		}
		echoed.Add(1)
		return true
	})
	c := loopbackUDP(t)
	public := srv.LocalAddr().(*net.UDPAddr).AddrPort()
	stopped := make(chan time.Time, 1)
	go func() {
		for echoed.Load() < 5 {
			time.Sleep(time.Millisecond)
		}
		stopped <- time.Now()
		answering.Store(false)
	}()
	at, err := udpGone(t.Context(), c, netip.AddrPortFrom(public.Addr(), public.Port()), time.Now().Add(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if stop := <-stopped; at.Before(stop.Add(-unansweredAfter)) {
		t.Fatalf("gone at %s, before the echo stopped at %s", at, stop)
	}
}

// udpGone gives up at its deadline while the flow is still answered.
func TestUDPGoneDeadline(t *testing.T) {
	srv := loopbackUDP(t)
	go serveEcho(srv, func() bool { return true })
	c := loopbackUDP(t)
	if _, err := udpGone(t.Context(), c, srv.LocalAddr().(*net.UDPAddr).AddrPort(), time.Now().Add(50*time.Millisecond)); err == nil {
		t.Fatal("an answered flow was reported gone")
	}
}

// loopbackUDP is a UDP socket on a free loopback port, closed when the test ends.
func loopbackUDP(t *testing.T) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}
