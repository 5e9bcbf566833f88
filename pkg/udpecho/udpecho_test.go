package udpecho_test

import (
	"net"
	"testing"
	"time"

	"github.com/livegate/livegate/pkg/udpecho"
)

func TestStartEchoesToTheSender(t *testing.T) {
	echo := udpecho.Start(t)
	conn, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.WriteTo([]byte("ping"), echo); err != nil {
		t.Fatal(err)
	}
	if err := conn.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	n, from, err := conn.ReadFrom(buf)
	if err != nil {
		t.Fatal(err)
	}
	if string(buf[:n]) != "ping" || from.String() != echo.String() {
		t.Fatalf("got %q from %v, want \"ping\" from %v", buf[:n], from, echo)
	}
}
