package freeport

import (
	"net"
	"strconv"
	"testing"
)

// The ports are free: a server can listen on each.
func TestPortsAreFree(t *testing.T) {
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(TCP(t))))
	if err != nil {
		t.Fatal(err)
	}
	_ = l.Close()
	pc, err := net.ListenPacket("udp", UDP(t))
	if err != nil {
		t.Fatal(err)
	}
	_ = pc.Close()
}
