// Package udpecho is a UDP echo server for tests: it sends each datagram back to where it came
// from, so a test can stand it in for a session's media backend and see that what it sends
// through the edge (a TURN relay, NAT rules) reaches the backend and finds its way back.
package udpecho

import (
	"net"
	"testing"
)

// serve sends each datagram pc reads back to its sender until reading fails, as when pc is
// closed. Datagrams longer than 1500 bytes, an Ethernet MTU, come back cut.
func serve(pc net.PacketConn) {
	buf := make([]byte, 1500)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		_, _ = pc.WriteTo(buf[:n], from)
	}
}

// Start echoes on a free loopback UDP port until the test ends and returns the port's address.
func Start(t testing.TB) *net.UDPAddr {
	t.Helper()
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pc.Close() })
	go serve(pc)
	return pc.LocalAddr().(*net.UDPAddr)
}
