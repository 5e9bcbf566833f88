package routes

import (
	"net/netip"
	"regexp"
	"strings"
	"testing"

	"github.com/livegate/livegate/edgeproxy/internal/haproxy"
	"github.com/livegate/livegate/edgeproxy/internal/portalloc"
	"github.com/livegate/livegate/pkg/events"
	"github.com/livegate/livegate/pkg/sessionid"
	"github.com/livegate/livegate/pkg/wire"
	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
)

// routeRefusal is how every Parse error starts: the route field at fault.
var routeRefusal = regexp.MustCompile(`^(key \(instance id\) |value: decode Route|instance_id "|session_id: session id |edge_id and pool: |edge_id "|pool "|signaling_backend: |media_backends\[\d+\]: )`)

// backendText is all an accepted backend may print as: ip:port or [ipv6]:port.
var backendText = regexp.MustCompile(`^(\d{1,3}(\.\d{1,3}){3}|\[[0-9a-f:.]+\]):\d{1,5}$`)

// FuzzRouteParse reads --backend-cidrs and --backend-ports as the edge does, then any route key
// and value. Flag refusals say which flag went wrong; a route refusal names the route field at
// fault, on one line. An accepted route has a valid key, session id, edge or pool, and backends
// inside the allowed CIDRs and ports, printed as plain ip:port, so that each of its map entries
// is one well-formed `set map` command for HAProxy's runtime API.
func FuzzRouteParse(f *testing.F) {
	good := `{"sessionId":"s-1","signalingBackend":"10.1.2.3:30000","mediaBackends":["10.1.2.3:31000"],"edgeId":"edge-a"}`
	for _, s := range []struct{ cidrs, ports, key, value string }{
		{"10.0.0.0/8,fd00::/8", "30000-32767", "inst-1", good},
		{"10.0.0.0/8", "30000-32767", "inst-1", `{"sessionId":"s-1","signalingBackend":"[fd00::1]:30000","pool":"p"}`},
		{"10.0.0.0/8", "30000-32767", "inst-1", `{"sessionId":"s\n1","signalingBackend":"10.0.0.1:30000","pool":"p"}`},
		{"10.0.0.0/8", "30000-32767", "inst-1", `{"sessionId":"s;show info","signalingBackend":"10.0.0.1:30000","pool":"p"}`},
		{"10.0.0.0/8", "30000-32767", "inst-1", `{"sessionId":"s","signalingBackend":"10.0.0.1:30000 -j ACCEPT","pool":"p"}`},
		{"10.0.0.0/8", "30000-32767", "inst-1", `{"sessionId":"s","signalingBackend":"[::ffff:10.0.0.1]:30000","pool":"p"}`},
		{"10.0.0.0/8", "30000-32767", "inst-1", `{"sessionId":"s","signalingBackend":"010.0.0.1:30000","pool":"p"}`},
		{"10.0.0.0/8", "30000-32767", "inst-1", `{"sessionId":"s","signalingBackend":"10.0.0.1:65536","pool":"p"}`},
		{"10.0.0.0/8", "30000-32767", "inst-1", `{"sessionId":"s","signalingBackend":"10.0.0.1:0","pool":"p"}`},
		{"10.0.0.0/8", "30000-32767", "inst-1", `{"sessionId":"s","signalingBackend":"[fe80::1%eth0]:30000","pool":"p"}`},
		{"10.0.0.0/8", "30000-32767", "inst-1", `{"sessionId":"s","signalingBackend":"10.0.0.1:30000","pool":"p#x"}`},
		{"10.0.0.0/8", "30000-32767", "inst 1", good}, {"10.0.0.0/8", "30000-32767", "inst.1", good},
		{"0.0.0.0/0,::/0", "1-65535", "i", `{"sessionId":"s","signalingBackend":"0.0.0.0:1","pool":"p"}`},
		{"10.0.0.0/8", "0-10", "i", good}, {"10.0.0.0/8", "30000-65536", "i", good}, {"10.0.0.0/8", "2-1", "i", good},
		{"10.0.0.0", "1", "i", good}, {"", "1", "i", good}, {"10.0.0.0/8,x", "1", "i", good}, {"fe80::/10%eth0", "1", "i", good},
	} {
		f.Add(s.cidrs, s.ports, s.key, []byte(s.value))
	}
	f.Fuzz(func(t *testing.T, cidrs, ports, key string, value []byte) {
		pr, err := portalloc.ParseRange(ports)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "port range ") {
				t.Fatalf("portalloc.ParseRange(%q) refusal %q does not say what", ports, err)
			}
			return
		}
		if pr.First < 1 || pr.First > pr.Last {
			t.Fatalf("portalloc.ParseRange(%q) = %v", ports, pr)
		}
		pfx, err := ParsePrefixes(cidrs)
		if err != nil {
			if msg := err.Error(); !strings.HasPrefix(msg, "backend CIDR ") && msg != "no backend CIDRs" {
				t.Fatalf("ParsePrefixes(%q) refusal %q does not say what", cidrs, msg)
			}
			return
		}
		for _, p := range pfx {
			if !p.IsValid() || p != p.Masked() || p.Addr().Zone() != "" {
				t.Fatalf("ParsePrefixes(%q) gave %v", cidrs, p)
			}
		}
		pol := Policy{BackendCIDRs: pfx, BackendPorts: pr}
		r, err := pol.Parse(key, value, 1)
		if err != nil {
			if msg := err.Error(); !routeRefusal.MatchString(msg) || strings.ContainsAny(msg, "\r\n") {
				t.Fatalf("route %q refused with %q: want one line naming the field", key, msg)
			}
			return
		}
		if events.ValidateToken("key", r.Key) != nil || sessionid.Validate(r.SessionID) != nil {
			t.Fatalf("accepted key %q session %q", r.Key, r.SessionID)
		}
		if (r.EdgeID == "" && r.Pool == "") || (r.EdgeID != "" && events.ValidateToken("", r.EdgeID) != nil) ||
			(r.Pool != "" && events.ValidateToken("", r.Pool) != nil) {
			t.Fatalf("accepted edge %q pool %q", r.EdgeID, r.Pool)
		}
		var pb livegatev1.Route
		if err := wire.Unmarshal(value, &pb); err != nil || len(r.Media) != len(pb.GetMediaBackends()) {
			t.Fatalf("accepted %d media backends of %d", len(r.Media), len(pb.GetMediaBackends()))
		}
		for i, b := range append([]netip.AddrPort{r.Signaling}, r.Media...) {
			text := b.String()
			inside := false
			for _, p := range pfx {
				inside = inside || p.Contains(b.Addr())
			}
			if !inside || !pr.Contains(b.Port()) || b.Addr().Zone() != "" || b.Addr().Is4In6() || !backendText.MatchString(text) {
				t.Fatalf("backend %d accepted as %q (policy %v %v)", i, text, pfx, pr)
			}
		}
		cmd, err := haproxy.NewCommand("set", "map", "/var/lib/livegate/sessions.map", r.SessionID, r.Signaling.String())
		if err != nil {
			t.Fatalf("accepted route makes no runtime command: %v", err)
		}
		if words := strings.Split(cmd.String(), " "); len(words) != 5 || words[3] != r.SessionID || words[4] != r.Signaling.String() {
			t.Fatalf("runtime command %q", cmd.String())
		}
	})
}
