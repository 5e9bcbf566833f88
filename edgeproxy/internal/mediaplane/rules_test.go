package mediaplane

import (
	"net/netip"
	"testing"

	"github.com/livegate/livegate/edgeproxy/internal/portalloc"
)

func TestShards(t *testing.T) {
	tests := []struct {
		port uint16
		base uint16
	}{
		{port: 10500, base: 10496},
		{port: 10623, base: 10496},
		{port: 10624, base: 10624},
		{port: 65535, base: 65408},
		{port: 1, base: 0},
	}
	for _, tt := range tests {
		if got := shardBase(tt.port); got != tt.base {
			t.Errorf("shardBase(%d) = %d, want %d", tt.port, got, tt.base)
		}
		if name := shardChain(tt.base); !isShardChain(name) {
			t.Errorf("isShardChain(%q) = false", name)
		}
	}
	for _, name := range []string{ChainDNAT, ChainSNAT, "LIVEGATE-DNAT-10500", "LIVEGATE-DNAT-x", "LIVEGATE-DNAT-", "OTHER-10496"} {
		if isShardChain(name) {
			t.Errorf("isShardChain(%q) = true", name)
		}
	}
}

func benchWant(n int) map[uint16]netip.AddrPort {
	want := make(map[uint16]netip.AddrPort, n)
	for i := range n {
		want[uint16(10500+i)] = netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 19, 2, byte(2 + i%200)}), uint16(30000+i%2768))
	}
	return want
}

var benchSettings = settings{public: netip.MustParseAddr("198.18.1.1"), ports: portalloc.Range{First: 10500, Last: 20000}, snat: true}

func BenchmarkPlan9500FromEmpty(b *testing.B) {
	want := benchWant(9500)
	for b.Loop() {
		batch, _, _ := plan(newState(), want, benchSettings, false)
		_ = batch.Bytes()
	}
}

func BenchmarkPlan100ChangesOn9500(b *testing.B) {
	want := benchWant(9500)
	_, cur, _ := plan(newState(), want, benchSettings, false)
	changed := benchWant(9500)
	for i := range 100 {
		changed[uint16(10500+i*90)] = netip.MustParseAddrPort("198.19.9.9:30000")
	}
	for b.Loop() {
		batch, _, _ := plan(cur, changed, benchSettings, false)
		_ = batch.Bytes()
	}
}
