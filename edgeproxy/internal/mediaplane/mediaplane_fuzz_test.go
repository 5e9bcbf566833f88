package mediaplane_test

import (
	"context"
	"fmt"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/livegate/livegate/edgeproxy/internal/iptables"
	"github.com/livegate/livegate/edgeproxy/internal/iptables/iptablestest"
	"github.com/livegate/livegate/edgeproxy/internal/mediaplane"
	"github.com/livegate/livegate/edgeproxy/internal/portalloc"
)

type nopCleaner struct{}

func (nopCleaner) DeleteUDP(context.Context, netip.Addr, []uint16) error { return nil }

var (
	fuzzPublic = netip.MustParseAddr("198.18.1.1")
	fuzzCIDRs  = []netip.Prefix{netip.MustParsePrefix("198.19.0.0/16"), netip.MustParsePrefix("fd00::/8")}
	fuzzPorts  = portalloc.Range{First: 30000, Last: 32767}
	fuzzRange  = portalloc.Range{First: 10500, Last: 10509}
)

// restoreLine is every line the media plane may send to iptables-restore: table headers,
// COMMIT, chain declarations of its own chains, and -A/-I/-D/-X of its own rule shapes, with
// IPv4 addresses and numbers as the only variable parts.
var restoreLine = regexp.MustCompile(`^(\*(nat|filter)|COMMIT|:LIVEGATE-(DNAT|SNAT|FWD|DNAT-\d+) - \[0:0\]|-X LIVEGATE-DNAT-\d+|` +
	`-I (PREROUTING|OUTPUT|POSTROUTING|FORWARD) 1 -m comment --comment "livegate media (DNAT|DNAT \(local\)|SNAT|forward)" -j LIVEGATE-(DNAT|SNAT|FWD)|` +
	`-[AD] LIVEGATE-DNAT -d 198\.18\.1\.1/32 -p udp -m udp --dport \d+:\d+ -m comment --comment "lg:shard" -j LIVEGATE-DNAT-\d+|` +
	`-[AD] LIVEGATE-DNAT-\d+ -d 198\.18\.1\.1/32 -p udp -m udp --dport (\d+) -m comment --comment "lg:\d+" -j DNAT --to-destination \d+\.\d+\.\d+\.\d+:\d+|` +
	`-A LIVEGATE-(SNAT|FWD) -p udp -m conntrack --ctstate DNAT --ctorigdst 198\.18\.1\.1 --ctorigdstport \d+(:\d+)? -m comment --comment "lg:(snat|fwd)" -j (MASQUERADE|ACCEPT))$`)

// FuzzMediaSync hands the media plane the backends of one route (comma-separated, as they
// would come from a route value) and one extra mapping on any public port. Backends outside the
// allowed CIDRs and ports, IPv6 ones (the plane is IPv4) and public ports outside the range are
// refused with the route and the reason; everything else is programmed, and nothing but the
// plane's own rule shapes, with the accepted addresses and ports, reaches iptables-restore.
// Read back from the ruleset, the DNAT rules are exactly the accepted mappings.
func FuzzMediaSync(f *testing.F) {
	for _, s := range []string{"198.19.2.2:30000", "198.19.2.2:30000,198.19.2.3:32767", "[fd00::1]:30000", "10.0.0.1:30000",
		"198.19.2.2:29999", "198.19.2.2:32768", "198.19.2.2:0", "[::ffff:198.19.2.2]:30000", "198.19.2.2:30000 -j ACCEPT",
		"198.19.2.2:30000\n-A INPUT -j ACCEPT", "0.0.0.0:30000", "255.255.255.255:30000", "198.19.2.2:30000,198.19.2.2:30000"} {
		f.Add(s, uint16(10509))
		f.Add(s, uint16(65535))
	}
	f.Fuzz(func(t *testing.T, backends string, extraPort uint16) {
		ipt := iptablestest.New()
		p, err := mediaplane.New(mediaplane.Config{PublicIP: fuzzPublic, Ports: fuzzRange, BackendCIDRs: fuzzCIDRs, BackendPorts: fuzzPorts, SNAT: true},
			mediaplane.WithRunner(ipt), mediaplane.WithConntrack(nopCleaner{}))
		if err != nil {
			t.Fatal(err)
		}
		want := map[string][]mediaplane.Mapping{}
		accepted := map[uint16]netip.AddrPort{}
		var last netip.AddrPort
		for i, item := range strings.Split(backends, ",") {
			if i >= 9 {
				break
			}
			ap, err := netip.ParseAddrPort(item)
			if err != nil {
				continue
			}
			last = ap
			port := uint16(10500 + i)
			want["route-a"] = append(want["route-a"], mediaplane.Mapping{PublicPort: port, Backend: ap})
			if p.CheckBackend(ap) == nil {
				accepted[port] = ap
			}
		}
		if last.IsValid() {
			want["route-b"] = []mediaplane.Mapping{{PublicPort: extraPort, Backend: last}}
			if p.CheckBackend(last) == nil && extraPort >= 10500 && extraPort <= 10509 {
				if _, taken := accepted[extraPort]; taken {
					delete(accepted, extraPort)
				} else {
					accepted[extraPort] = last
				}
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		err = p.Sync(ctx, want)
		_ = p.Settle(ctx)
		if err != nil {
			for _, line := range strings.Split(err.Error(), "\n") {
				if !strings.HasPrefix(line, "route route-") && !strings.HasPrefix(line, "routes route-") {
					t.Fatalf("refusal %q does not name the route", line)
				}
			}
		}
		for _, payload := range ipt.Restores() {
			for _, line := range strings.Split(strings.TrimSuffix(string(payload), "\n"), "\n") {
				if !restoreLine.MatchString(line) {
					t.Fatalf("iptables-restore got %q", line)
				}
			}
		}
		out, err := ipt.Save(ctx, "nat")
		if err != nil {
			t.Fatal(err)
		}
		rs, err := iptables.ParseSave(out)
		if err != nil {
			t.Fatal(err)
		}
		got := map[uint16]netip.AddrPort{}
		for _, r := range rs.Table("nat").Rules {
			if !strings.HasPrefix(r.Chain, mediaplane.ShardPrefix) {
				continue
			}
			var port uint16
			var to string
			for i := 0; i+1 < len(r.Args); i++ {
				switch r.Args[i] {
				case "--dport":
					_, _ = fmt.Sscan(r.Args[i+1], &port)
				case "--to-destination":
					to = r.Args[i+1]
				}
			}
			got[port] = netip.MustParseAddrPort(to)
		}
		if fmt.Sprint(got) != fmt.Sprint(accepted) {
			t.Fatalf("backends %q: kernel forwards %v, want %v", backends, got, accepted)
		}
	})
}
