package udpflow

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/pion/turn/v4"
)

// The bench's TURN client against pion's relay on loopback: it allocates with long-term
// credentials, binds Channel, and a ChannelData frame reaches the peer.
func TestTURNAllocateAndBindChannel(t *testing.T) {
	relayConn, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	key := turn.GenerateAuthKey("bench", "livegate", "s3cret")
	srv, err := turn.NewServer(turn.ServerConfig{
		Realm: "livegate",
		AuthHandler: func(username, realm string, _ net.Addr) ([]byte, bool) {
			return key, username == "bench"
		},
		PacketConnConfigs: []turn.PacketConnConfig{{PacketConn: relayConn, RelayAddressGenerator: &turn.RelayAddressGeneratorStatic{
			RelayAddress: net.IPv4(127, 0, 0, 1), Address: "127.0.0.1",
		}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	peer, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	server := relayConn.LocalAddr().(*net.UDPAddr)
	if _, err := TURNAllocate(t.Context(), conn, server, "bench", "wrong"); err == nil {
		t.Fatal("an allocation with a wrong password was accepted")
	}
	s, err := TURNAllocate(t.Context(), conn, server, "bench", "s3cret")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.BindChannel(t.Context(), peer.LocalAddr().(*net.UDPAddr).AddrPort()); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.WriteToUDP(append(ChannelHeader(5), "hello"...), server); err != nil {
		t.Fatal(err)
	}
	_ = peer.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 64)
	n, from, err := peer.ReadFromUDPAddrPort(buf)
	if err != nil || string(buf[:n]) != "hello" || from.Addr() != netip.AddrFrom4([4]byte{127, 0, 0, 1}) {
		t.Fatalf("peer got %q from %s, %v", buf[:n], from, err)
	}
}
