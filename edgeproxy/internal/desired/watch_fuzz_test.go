package desired

import (
	"context"
	"net/netip"
	"slices"
	"testing"

	"github.com/livegate/livegate/edgeproxy/internal/mediaplane"
	"github.com/livegate/livegate/edgeproxy/internal/mediaplane/mediaplanetest"
	"github.com/livegate/livegate/edgeproxy/internal/portalloc"
	"github.com/livegate/livegate/pkg/wire"
	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
)

type fuzzCleaner struct{}

func (fuzzCleaner) DeleteUDP(context.Context, netip.Addr, []uint16) error { return nil }

// FuzzEdgeWatchValues hands the edge's watch loop any livegate_endpoints value and any
// livegate_edges heartbeat value, as its KV watches deliver them. A heartbeat only ever makes its
// key live: the edge never reads its value. An endpoint value that does not decode belongs to no
// edge; one that does keeps only ports 1-65535, and reads as equal to itself exactly when its
// ports and backends parse. Recovery after a restart takes the endpoint's ports as preferred
// ones for two routes of this edge: whatever the value says, each route gets ports inside the
// public range, the two never share one, and asking again gives the same ports.
func FuzzEdgeWatchValues(f *testing.F) {
	f.Add([]byte(`{"instanceId":"inst-1","sessionId":"s-1","edgeId":"edge-a","publicHost":"edge.example","signalingPort":48322,"publicUdpPorts":[10500,10501],"mediaBackends":["198.19.0.10:31000","198.19.0.10:31001"],"assignedAt":"2026-01-01T00:00:00Z"}`))
	f.Add([]byte(`{"edgeId":"edge-a","publicUdpPorts":[10500,10500,10500]}`))
	f.Add([]byte(`{"edgeId":"edge-a","publicUdpPorts":[0,65535,65536,4294967295,10509]}`))
	f.Add([]byte(`{"edgeId":"edge-a","publicUdpPorts":[22,80,10499,10510],"mediaBackends":["198.19.0.10:31000 -j ACCEPT","[fe80::1%eth0]:1"]}`))
	f.Add([]byte(`{"edgeId":"edge-a\nX","publicHost":"h;show info","publicUdpPorts":[10502]}`))
	f.Add([]byte(`{"edgeId":"edge-b","pool":"default","publicHost":"h","capacity":9500,"freePorts":9499,"routes":1,"heartbeat":"2026-01-01T00:00:00.5Z","version":"v"}`))
	f.Add([]byte(`{"publicUdpPorts":"10500"}`))
	f.Add([]byte(`not json`))
	f.Add([]byte{})
	backends := []netip.AddrPort{netip.MustParseAddrPort("198.19.0.10:31000"), netip.MustParseAddrPort("198.19.0.10:31001")}
	public := portalloc.Range{First: 10500, Last: 10509}
	f.Fuzz(func(t *testing.T, value []byte) {
		r := loopState()
		r.Observe(Input{Bucket: EdgesBucket, Entry: Entry{Key: "edge-b", Value: value, Revision: 3}})
		if len(r.live) != 1 || !r.live["edge-b"] {
			t.Fatalf("heartbeat %q: live edges %v", value, r.live)
		}
		for _, k := range []string{"inst-1", "inst-2"} {
			r.Observe(Input{Bucket: EndpointsBucket, Entry: Entry{Key: k, Value: value, Revision: 7}})
		}
		ep, ok := r.endpoints["inst-1"]
		if !ok || ep.Revision != 7 {
			t.Fatalf("endpoint %q not recorded at its revision: %+v", value, ep)
		}
		var pb livegatev1.Endpoint
		if err := wire.Unmarshal(value, &pb); err != nil {
			if ep.EdgeID != "" || ep.pub != nil || len(ep.Ports) != 0 {
				t.Fatalf("undecodable endpoint %q read as %+v", value, ep)
			}
		} else if ep.EdgeID != pb.GetEdgeId() || ep.pub == nil {
			t.Fatalf("endpoint %q read as %+v", value, ep)
		}
		if slices.Contains(ep.Ports, 0) {
			t.Fatalf("endpoint %q kept port 0: %v", value, ep.Ports)
		}
		if ep.pub != nil && ep.pub.equal(endpointOf(&pb)) == ep.pub.unreadable {
			t.Fatalf("endpoint %q: equal to itself %v, unreadable %v", value, !ep.pub.unreadable, ep.pub.unreadable)
		}

		plane, err := mediaplane.New(mediaplane.Config{
			PublicIP: netip.MustParseAddr("198.18.1.1"), Ports: public, SNAT: true,
			BackendCIDRs: []netip.Prefix{netip.MustParsePrefix("198.19.0.0/16")}, BackendPorts: portalloc.Range{First: 30000, Last: 32767},
		}, append(mediaplanetest.New().Options(), mediaplane.WithConntrack(fuzzCleaner{}))...)
		if err != nil {
			t.Fatal(err)
		}
		taken := map[uint16]string{}
		for _, k := range []string{"inst-1", "inst-2"} {
			ports, err := plane.Assign(k, backends, r.endpoints[k].Ports)
			if err != nil {
				t.Fatalf("endpoint %q: %s gets no ports: %v", value, k, err)
			}
			again, err := plane.Assign(k, backends, r.endpoints[k].Ports)
			if err != nil || !slices.Equal(ports, again) {
				t.Fatalf("endpoint %q: %s got %v, then %v %v", value, k, ports, again, err)
			}
			if len(ports) != len(backends) {
				t.Fatalf("endpoint %q: %s got %v for %d backends", value, k, ports, len(backends))
			}
			for _, p := range ports {
				if p < public.First || p > public.Last {
					t.Fatalf("endpoint %q: %s got port %d outside %v", value, k, p, public)
				}
				if other, dup := taken[p]; dup {
					t.Fatalf("endpoint %q: port %d given to %s and %s", value, p, other, k)
				}
				taken[p] = k
			}
		}
	})
}
