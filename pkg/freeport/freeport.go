// Package freeport finds loopback ports nothing listens on, for tests and benchmarks that must
// name a port before the server behind it starts (a child process's flags, a configuration
// file). A port is free when it is asked for; a server that can listen on port 0 itself should.
package freeport

import (
	"fmt"
	"net"
	"testing"
)

// TCPPort returns a TCP port that was free on 127.0.0.1 a moment ago.
func TCPPort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("free tcp port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// TCP is TCPPort for a test: it fails t when no port can be had.
func TCP(t testing.TB) int {
	t.Helper()
	port, err := TCPPort()
	if err != nil {
		t.Fatal(err)
	}
	return port
}

// UDP returns the address (127.0.0.1:port) of a UDP port that was free a moment ago: a closed
// port to probe, or one to start a server on.
func UDP(t testing.TB) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("free udp port: %v", err)
	}
	defer pc.Close()
	return pc.LocalAddr().String()
}
