package stack

import (
	"context"
	"maps"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/livegate/livegate/e2e/internal/netns"
)

// The outputs in these tests are nft 1.0.6's, captured from a map made by hand in the edge's
// layout.
func TestParseDNATMap(t *testing.T) {
	const head = `{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, `
	ap := netip.MustParseAddrPort
	for _, tc := range []struct {
		name, out string
		want      map[int]netip.AddrPort
		err       string
	}{
		{
			name: "empty",
			out:  head + `{"map": {"family": "ip", "name": "media", "table": "livegate", "type": "inet_service", "handle": 3, "map": "ipv4_addr . inet_service"}}]}`,
			want: map[int]netip.AddrPort{},
		},
		{
			name: "three elements",
			out: head + `{"map": {"family": "ip", "name": "media", "table": "livegate", "type": "inet_service", "handle": 3, "map": "ipv4_addr . inet_service", ` +
				`"elem": [[10500, {"concat": ["198.19.2.2", 30000]}], [10501, {"concat": ["198.19.3.2", 30001]}], [20000, {"concat": ["198.19.2.2", 65535]}]]}}]}`,
			want: map[int]netip.AddrPort{10500: ap("198.19.2.2:30000"), 10501: ap("198.19.3.2:30001"), 20000: ap("198.19.2.2:65535")},
		},
		{
			// Ports with a service name (domain, https, sip) still come as numbers.
			name: "named services",
			out: head + `{"map": {"family": "ip", "name": "media", "table": "livegate", "type": "inet_service", "handle": 6, "map": "ipv4_addr . inet_service", ` +
				`"elem": [[53, {"concat": ["198.19.2.2", 443]}], [10500, {"concat": ["198.19.2.2", 5060]}]]}}]}`,
			want: map[int]netip.AddrPort{53: ap("198.19.2.2:443"), 10500: ap("198.19.2.2:5060")},
		},
		{
			name: "map of another type",
			out:  head + `{"map": {"family": "ip", "name": "media", "table": "livegate", "type": "inet_service", "handle": 1, "map": "ipv4_addr", "elem": [[10500, "198.19.2.2"]]}}]}`,
			err:  "type inet_service : ipv4_addr, want inet_service : ipv4_addr . inet_service",
		},
		{
			name: "no map",
			out:  head[:len(head)-2] + "]}",
			err:  "nft listed no map",
		},
		{
			name: "not JSON",
			out:  "table ip livegate {\n",
			err:  "nft's JSON",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseDNATMap([]byte(tc.out))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("got %v, %v; want an error with %q", got, err, tc.err)
				}
				return
			}
			if err != nil || !maps.Equal(got, tc.want) {
				t.Fatalf("got %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}

func TestNftMissing(t *testing.T) {
	for _, tc := range []struct {
		name, stderr string
		missing      bool
	}{
		{"no table", "Error: No such file or directory\nlist map ip livegate media\n            ^^^^^^^^\n", true},
		{"no map", "Error: No such file or directory\nlist map ip livegate media\n                     ^^^^^\n", true},
		// nft adds a suggestion to some commands' answer (this one is add element's).
		{"with a suggestion", "Error: No such file or directory; did you mean table ‘livegate’ in family ip?\nadd element ip livegat media { 1 : 1.1.1.1 . 1 }\n               ^^^^^^^\n", true},
		{"no namespace", "Cannot open network namespace \"lgzd1-n\": No such file or directory\n", false},
		{"no nft", "exec of \"nft\" failed: No such file or directory\n", false},
		{"not permitted", "Operation not permitted (you must be root)\nnetlink: Error: cache initialization failed: Operation not permitted\n", false},
	} {
		if got := nftMissing(tc.stderr); got != tc.missing {
			t.Errorf("%s: nftMissing %v, want %v", tc.name, got, tc.missing)
		}
	}
}

// dnatPrefix starts the namespaces of TestDNATMapReadsTheKernel.
const dnatPrefix = "lgzd"

// dnatLayout is the edge's table with its public address and port range. nft 1.0.6 takes the
// priority name dstnat in a prerouting chain only, so both chains say -110 (dstnat - 10).
const dnatLayout = `table ip livegate {
	map media {
		type inet_service : ipv4_addr . inet_service
	}
	chain prerouting {
		type nat hook prerouting priority -110; policy accept;
		ip daddr 198.18.1.1 udp dport 10500-20000 dnat ip to udp dport map @media
	}
	chain output {
		type nat hook output priority -110; policy accept;
		ip daddr 198.18.1.1 udp dport 10500-20000 dnat ip to udp dport map @media
	}
}
`

// TestDNATMapReadsTheKernel makes the edge's table by hand in a namespace of its own and reads it
// back through every change the edge makes: none yet, empty, ports added, one deleted and one
// re-pointed in one transaction, the table deleted; a failure of ip is an error.
func TestDNATMapReadsTheKernel(t *testing.T) {
	RequireRoot(t, "sudo go test ./e2e/internal/stack/")
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("nft not installed (Debian nftables; make deps installs it)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := netns.Sweep(ctx, dnatPrefix); err != nil {
		t.Fatal(err)
	}
	ns, err := netns.Add(ctx, dnatPrefix+strconv.FormatInt(int64(os.Getpid()), 36)+"-n")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := ns.Delete(context.Background()); err != nil {
			t.Error(err)
		}
	})
	nft := func(script string) {
		t.Helper()
		cmd := ns.Command(ctx, "nft", "-f", "-")
		cmd.Stdin = strings.NewReader(script)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("nft -f: %v: %s\n%s", err, out, script)
		}
	}
	check := func(step string, want map[int]netip.AddrPort) {
		t.Helper()
		got, err := DNATMap(ctx, ns)
		if err != nil || !maps.Equal(got, want) {
			t.Fatalf("%s: DNATMap %v, %v; want %v", step, got, err, want)
		}
	}
	ap := netip.MustParseAddrPort

	check("no table", map[int]netip.AddrPort{})
	nft(dnatLayout)
	check("empty map", map[int]netip.AddrPort{})
	nft("add element ip livegate media { 10500 : 198.19.1.2 . 31001, 10501 : 198.19.2.2 . 31001, 20000 : 198.19.1.2 . 32767 }\n")
	check("three ports", map[int]netip.AddrPort{10500: ap("198.19.1.2:31001"), 10501: ap("198.19.2.2:31001"), 20000: ap("198.19.1.2:32767")})
	nft("delete element ip livegate media { 10501, 20000 }\nadd element ip livegate media { 20000 : 198.19.2.2 . 30000 }\n")
	check("one deleted, one re-pointed", map[int]netip.AddrPort{10500: ap("198.19.1.2:31001"), 20000: ap("198.19.2.2:30000")})
	nft("delete table ip livegate\n")
	check("table deleted", map[int]netip.AddrPort{})

	// ip says "No such file or directory" too when the namespace is missing: not an empty map.
	if m, err := DNATMap(ctx, &netns.Namespace{Name: ns.Name + "x"}); err == nil {
		t.Errorf("DNATMap in a namespace that does not exist: %v, no error", m)
	}
}
