package turnrelay

import (
	"encoding/binary"
	"net"
	"testing"
	"time"

	"github.com/livegate/livegate/edgeproxy/internal/turnrelay/turntest"
	"github.com/pion/turn/v4"
)

// BenchmarkRelayChannelData sends one client's ChannelData through the relay to a session's
// media over loopback: what a relayed packet costs, for profiles (-cpuprofile).
func BenchmarkRelayChannelData(b *testing.B) {
	l := newLab(b, secretA)
	sink, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		b.Fatal(err)
	}
	defer sink.Close()
	_ = sink.SetReadBuffer(8 << 20)
	to := sink.LocalAddr().(*net.UDPAddr)
	l.r.Serve(map[string]Media{"sess-a": serveOne(to)})
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		b.Fatal(err)
	}
	udp, _, _ := l.r.Addrs()
	c := l.cred("sess-a")
	cl := turntest.Client(b, &turn.ClientConfig{STUNServerAddr: udp.String(), TURNServerAddr: udp.String(), Conn: conn,
		Username: c.Username, Password: c.Password, Realm: "livegate"})
	relay, err := cl.Allocate()
	if err != nil {
		b.Fatal(err)
	}
	defer relay.Close()
	// The client binds its first channel, 0x4000, after the first datagram.
	buf := make([]byte, 2048)
	for {
		_, _ = relay.WriteTo([]byte("bind"), to)
		_ = sink.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		if _, _, err := sink.ReadFrom(buf); err == nil {
			break
		}
	}
	time.Sleep(200 * time.Millisecond)
	frame := binary.BigEndian.AppendUint16(nil, 0x4000)
	frame = binary.BigEndian.AppendUint16(frame, 1200)
	frame = append(frame, make([]byte, 1200)...)
	server := net.UDPAddrFromAddrPort(udp)
	done := make(chan int)
	_ = sink.SetReadDeadline(time.Time{})
	go func() {
		n := 0
		for n < b.N {
			_ = sink.SetReadDeadline(time.Now().Add(time.Second))
			if _, _, err := sink.ReadFrom(buf); err != nil {
				break
			}
			n++
		}
		done <- n
	}()
	b.ResetTimer()
	for i := range b.N {
		if _, err := conn.WriteToUDP(frame, server); err != nil {
			b.Fatal(err)
		}
		if i%64 == 63 {
			time.Sleep(time.Microsecond)
		}
	}
	n := <-done
	b.ReportMetric(float64(b.N-n)/float64(b.N)*100, "%lost")
}
