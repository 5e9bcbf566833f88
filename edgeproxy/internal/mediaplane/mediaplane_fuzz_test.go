package mediaplane_test

import (
	"context"
	"fmt"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/livegate/livegate/edgeproxy/internal/mediaplane"
	"github.com/livegate/livegate/edgeproxy/internal/mediaplane/mediaplanetest"
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
// COMMIT, declarations of its own chains, its jumps and its two static rules, with IPv4
// addresses and numbers as the only variable parts.
var restoreLine = regexp.MustCompile(`^(\*(nat|filter)|COMMIT|:LIVEGATE-(SNAT|FWD) - \[0:0\]|` +
	`-I (POSTROUTING|FORWARD) 1 -m comment --comment "livegate media (SNAT|forward)" -j LIVEGATE-(SNAT|FWD)|` +
	`-A LIVEGATE-(SNAT|FWD) -p udp -m conntrack --ctstate DNAT --ctorigdst 198\.18\.1\.1 --ctorigdstport \d+(:\d+)? -m comment --comment "lg:(snat|fwd)" -j (MASQUERADE|ACCEPT))$`)

// FuzzMediaSync hands the media plane the backends of one route (comma-separated, as they
// would come from a route value) and one extra mapping on any public port. Backends outside the
// allowed CIDRs and ports, IPv6 ones (the plane is IPv4) and public ports outside the range are
// refused with the route and the reason; everything else is programmed, and nothing but the
// plane's own static rule shapes reaches iptables-restore. The DNAT map ends up holding exactly
// the accepted mappings, and no transaction ever carried another backend.
func FuzzMediaSync(f *testing.F) {
	for _, s := range []string{"198.19.2.2:30000", "198.19.2.2:30000,198.19.2.3:32767", "[fd00::1]:30000", "10.0.0.1:30000",
		"198.19.2.2:29999", "198.19.2.2:32768", "198.19.2.2:0", "[::ffff:198.19.2.2]:30000", "198.19.2.2:30000 -j ACCEPT",
		"198.19.2.2:30000\n-A INPUT -j ACCEPT", "0.0.0.0:30000", "255.255.255.255:30000", "198.19.2.2:30000,198.19.2.2:30000"} {
		f.Add(s, uint16(10509))
		f.Add(s, uint16(65535))
	}
	f.Fuzz(func(t *testing.T, backends string, extraPort uint16) {
		k := mediaplanetest.New()
		p, err := mediaplane.New(mediaplane.Config{PublicIP: fuzzPublic, Ports: fuzzRange, BackendCIDRs: fuzzCIDRs, BackendPorts: fuzzPorts, SNAT: true},
			append(k.Options(), mediaplane.WithConntrack(nopCleaner{}))...)
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
		for _, payload := range k.IPTables.Restores() {
			for _, line := range strings.Split(strings.TrimSuffix(string(payload), "\n"), "\n") {
				if !restoreLine.MatchString(line) {
					t.Fatalf("iptables-restore got %q", line)
				}
			}
		}
		for _, c := range k.DNAT.Applied() {
			for port, b := range c.Set {
				if accepted[port] != b {
					t.Fatalf("backends %q: the map was given %d → %v", backends, port, b)
				}
			}
		}
		if got := k.DNAT.Elements(); fmt.Sprint(got) != fmt.Sprint(accepted) {
			t.Fatalf("backends %q: kernel forwards %v, want %v", backends, got, accepted)
		}
	})
}
