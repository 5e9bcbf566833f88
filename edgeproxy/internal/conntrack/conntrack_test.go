package conntrack

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func TestUDPFilter(t *testing.T) {
	pub := netip.MustParseAddr("198.18.1.1")
	flow := func(proto uint8, dst string, port uint16) *netlink.ConntrackFlow {
		return &netlink.ConntrackFlow{Forward: netlink.IPTuple{
			Protocol: proto, SrcIP: net.ParseIP("198.18.1.2"), DstIP: net.ParseIP(dst), SrcPort: 40000, DstPort: port,
		}}
	}
	tests := []struct {
		name string
		dst  netip.Addr
		flow *netlink.ConntrackFlow
		want bool
	}{
		{name: "udp to a listed port", dst: pub, flow: flow(unix.IPPROTO_UDP, "198.18.1.1", 10500), want: true},
		{name: "udp to another port", dst: pub, flow: flow(unix.IPPROTO_UDP, "198.18.1.1", 10502)},
		{name: "tcp to a listed port", dst: pub, flow: flow(unix.IPPROTO_TCP, "198.18.1.1", 10500)},
		{name: "udp to another address", dst: pub, flow: flow(unix.IPPROTO_UDP, "198.18.1.9", 10500)},
		{name: "any address", flow: flow(unix.IPPROTO_UDP, "198.18.1.9", 10501), want: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := NewUDPFilter(tt.dst, []uint16{10500, 10501})
			if got := f.MatchConntrackFlow(tt.flow); got != tt.want {
				t.Fatalf("MatchConntrackFlow = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestDeleteNothing(t *testing.T) {
	if err := NewNetlink(WithNetns("lgm-does-not-exist")).DeleteUDP(context.Background(), netip.Addr{}, nil); err != nil {
		t.Fatalf("DeleteUDP with no ports = %v", err)
	}
}

func TestUnknownNamespace(t *testing.T) {
	for _, max := range []int{0, DefaultFilterMax} {
		err := NewNetlink(WithNetns("lgm-does-not-exist"), WithFilterMax(max)).DeleteUDP(context.Background(), netip.Addr{}, []uint16{1})
		if err == nil {
			t.Fatalf("DeleteUDP (filter max %d) in a namespace that does not exist succeeded", max)
		}
	}
}

func TestUseFilter(t *testing.T) {
	ms := time.Millisecond
	for _, tt := range []struct {
		name          string
		ports, max    int
		perPort, dump time.Duration
		want          bool
	}{
		{"few ports", 8, 8, 0, 0, true},
		{"many, nothing measured", 9, 8, 0, 0, false},
		{"many, no dump measured", 9, 8, ms, 0, false},
		{"many, no filter measured", 9, 8, 0, ms, false},
		{"a dump cost more", 20, 8, ms, 40 * ms, true},
		{"a dump cost less", 20, 8, ms, 15 * ms, false},
		{"a cold start's ports", 9500, 8, ms, 40 * ms, false},
		{"max 0: never filtered, so always dumps", 1, 0, 0, 40 * ms, false},
	} {
		if got := useFilter(tt.ports, tt.max, tt.perPort, tt.dump); got != tt.want {
			t.Errorf("%s: useFilter(%d, %d, %s, %s) = %v, want %v", tt.name, tt.ports, tt.max, tt.perPort, tt.dump, got, tt.want)
		}
	}
}

func TestKeep(t *testing.T) {
	tests := []struct {
		name       string
		idle       int
		ok, closed bool
		kept       bool
	}{
		{name: "idle after success", ok: true, kept: true},
		{name: "one more beside another call's", idle: 1, ok: true, kept: true},
		{name: "enough kept", idle: maxIdle, ok: true},
		{name: "failed", ok: false},
		{name: "cleaner closed", ok: true, closed: true},
	}
	for _, tt := range tests {
		n := &Netlink{closed: tt.closed}
		list := make([]int, tt.idle)
		closed := false
		keep(n, &list, 7, tt.ok, func(int) { closed = true })
		if kept := len(list) == tt.idle+1; kept != tt.kept || closed == tt.kept {
			t.Errorf("%s: kept %v, closed %v; want kept %v", tt.name, kept, closed, tt.kept)
		}
	}
}
