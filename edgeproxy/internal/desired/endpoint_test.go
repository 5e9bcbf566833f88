package desired

import (
	"slices"
	"testing"
	"time"

	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
)

// TestPortsAtTheWireBoundary: the protocol carries ports as uint32; a value outside 1-65535 makes
// the endpoint unreadable (it equals nothing, so this edge rewrites it) and is never kept as a
// preferred port, and what this edge writes reads back the same.
func TestPortsAtTheWireBoundary(t *testing.T) {
	tests := []struct {
		name       string
		signaling  uint32
		ports      []uint32
		unreadable bool
		kept       []uint16
	}{
		{name: "in range", signaling: 48322, ports: []uint32{10500, 65535}, kept: []uint16{10500, 65535}},
		{name: "no signaling port", ports: []uint32{1}, kept: []uint16{1}},
		{name: "zero", signaling: 48322, ports: []uint32{0, 10500}, unreadable: true, kept: []uint16{10500}},
		{name: "above 65535", signaling: 48322, ports: []uint32{65536, 10501}, unreadable: true, kept: []uint16{10501}},
		{name: "wraps to a real port", signaling: 48322, ports: []uint32{1<<16 + 10500}, unreadable: true, kept: []uint16{}},
		{name: "signaling port above 65535", signaling: 1<<16 + 48322, ports: []uint32{10500}, unreadable: true, kept: []uint16{10500}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pb := &livegatev1.Endpoint{InstanceId: "i1", EdgeId: "edge-a", SignalingPort: tt.signaling, PublicUdpPorts: tt.ports}
			ep := decodeEndpoint(Entry{Key: "i1", Value: encode(t, pb), Revision: 1})
			if ep.pub.unreadable != tt.unreadable || !slices.Equal(ep.Ports, tt.kept) {
				t.Fatalf("unreadable %v, ports %v; want %v, %v", ep.pub.unreadable, ep.Ports, tt.unreadable, tt.kept)
			}
			if !tt.unreadable {
				back := ep.pub.Proto(time.Unix(1, 0))
				if back.GetSignalingPort() != tt.signaling || !slices.Equal(back.GetPublicUdpPorts(), tt.ports) {
					t.Fatalf("written back as %d %v", back.GetSignalingPort(), back.GetPublicUdpPorts())
				}
			}
		})
	}
}
