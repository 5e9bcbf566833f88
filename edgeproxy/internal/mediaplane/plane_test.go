package mediaplane

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/livegate/livegate/edgeproxy/internal/iptables"
	"github.com/livegate/livegate/edgeproxy/internal/iptables/iptablestest"
	"github.com/livegate/livegate/edgeproxy/internal/portalloc"
)

var publicIP = netip.MustParseAddr("198.18.1.1")

// shard is the chain of the ports the tests use most (10496-10623).
const shard = "LIVEGATE-DNAT-10496"

type fakeCleaner struct {
	mu    sync.Mutex
	calls [][]uint16
	err   error
}

func (f *fakeCleaner) DeleteUDP(_ context.Context, dst netip.Addr, ports []uint16) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if dst != publicIP {
		return errors.New("unexpected address " + dst.String())
	}
	f.calls = append(f.calls, slices.Clone(ports))
	return f.err
}

// since is every port deleted from call n on, sorted.
func (f *fakeCleaner) since(n int) []uint16 {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []uint16
	for _, c := range f.calls[min(n, len(f.calls)):] {
		out = append(out, c...)
	}
	slices.Sort(out)
	return out
}

func (f *fakeCleaner) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.calls)
}

func (f *fakeCleaner) last() []uint16 {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.calls) == 0 {
		return nil
	}
	return f.calls[len(f.calls)-1]
}

// portsFrom is first..last.
func portsFrom(first, last uint16) []uint16 {
	var out []uint16
	for p := first; p <= last; p++ {
		out = append(out, p)
	}
	return out
}

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

type harness struct {
	ipt   *iptablestest.Fake
	ct    *fakeCleaner
	clk   *clock
	plane *Plane
}

func newHarness(t *testing.T, cfg Config) *harness {
	t.Helper()
	h := &harness{ipt: iptablestest.New(), ct: &fakeCleaner{}, clk: &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}}
	h.plane = h.newPlane(t, cfg)
	return h
}

func (h *harness) newPlane(t *testing.T, cfg Config) *Plane {
	t.Helper()
	if !cfg.PublicIP.IsValid() {
		cfg.PublicIP = publicIP
	}
	if cfg.Ports == (portalloc.Range{}) {
		cfg.Ports = portalloc.Range{First: 10500, Last: 10509}
	}
	// No idle sweep: its timer would read the test's clock from another goroutine.
	p, err := New(cfg, WithRunner(h.ipt), WithConntrack(h.ct), WithClock(h.clk.now), WithIdleSweep(0),
		func(o *options) { o.flushRetry = time.Millisecond })
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func (h *harness) nat(t *testing.T) *iptables.Table {
	t.Helper()
	out, err := h.ipt.Save(context.Background(), "nat")
	if err != nil {
		t.Fatal(err)
	}
	rs, err := iptables.ParseSave(out)
	if err != nil {
		t.Fatal(err)
	}
	return rs.Table("nat")
}

func specs(rules []iptables.Rule) []string {
	var out []string
	for _, r := range rules {
		out = append(out, r.Spec)
	}
	return out
}

func backend(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

// sync1 syncs and waits for the conntrack deletions the sync started.
func sync1(t *testing.T, p *Plane, want map[string][]Mapping) {
	t.Helper()
	if err := p.Sync(context.Background(), want); err != nil {
		t.Fatalf("Sync: %v", err)
	}
	if err := p.Settle(context.Background()); err != nil {
		t.Fatalf("Settle: %v", err)
	}
}

func TestSyncProgramsRulesOnce(t *testing.T) {
	h := newHarness(t, Config{SNAT: true})
	want := map[string][]Mapping{
		"inst-a": {{PublicPort: 10500, Backend: backend("198.19.2.2:30000")}, {PublicPort: 10501, Backend: backend("198.19.2.2:30001")}},
	}
	sync1(t, h.plane, want)

	wantPayload := `*nat
:LIVEGATE-DNAT - [0:0]
:LIVEGATE-SNAT - [0:0]
:LIVEGATE-DNAT-10496 - [0:0]
-I PREROUTING 1 -m comment --comment "livegate media DNAT" -j LIVEGATE-DNAT
-I OUTPUT 1 -m comment --comment "livegate media DNAT (local)" -j LIVEGATE-DNAT
-I POSTROUTING 1 -m comment --comment "livegate media SNAT" -j LIVEGATE-SNAT
-A LIVEGATE-SNAT -p udp -m conntrack --ctstate DNAT --ctorigdst 198.18.1.1 --ctorigdstport 10500:10509 -m comment --comment "lg:snat" -j MASQUERADE
-A LIVEGATE-DNAT-10496 -d 198.18.1.1/32 -p udp -m udp --dport 10500 -m comment --comment "lg:10500" -j DNAT --to-destination 198.19.2.2:30000
-A LIVEGATE-DNAT-10496 -d 198.18.1.1/32 -p udp -m udp --dport 10501 -m comment --comment "lg:10501" -j DNAT --to-destination 198.19.2.2:30001
-A LIVEGATE-DNAT -d 198.18.1.1/32 -p udp -m udp --dport 10496:10623 -m comment --comment "lg:shard" -j LIVEGATE-DNAT-10496
COMMIT
*filter
:LIVEGATE-FWD - [0:0]
-I FORWARD 1 -m comment --comment "livegate media forward" -j LIVEGATE-FWD
-A LIVEGATE-FWD -p udp -m conntrack --ctstate DNAT --ctorigdst 198.18.1.1 --ctorigdstport 10500:10509 -m comment --comment "lg:fwd" -j ACCEPT
COMMIT
`
	restores := h.ipt.Restores()
	if len(restores) != 1 || string(restores[0]) != wantPayload {
		t.Fatalf("restores = %d, first:\n%s\nwant:\n%s", len(restores), restores[0], wantPayload)
	}
	// The added ports before the sync returned; then, once, every port the first read-back
	// found unforwarded.
	if h.ct.count() != 2 || !slices.Equal(h.ct.calls[0], []uint16{10500, 10501}) || !slices.Equal(h.ct.last(), portsFrom(10502, 10509)) {
		t.Fatalf("conntrack flushed %v, want [10500 10501] then 10502-10509", h.ct.calls)
	}

	sync1(t, h.plane, want)
	h.clk.t = h.clk.t.Add(DefaultResyncInterval)
	sync1(t, h.plane, want)
	if n := len(h.ipt.Restores()); n != 1 {
		t.Fatalf("unchanged state wrote %d batches, want 1 in total", n)
	}
	if n := len(h.ct.calls); n != 2 {
		t.Fatalf("unchanged state flushed conntrack %d times, want 2 in total", n)
	}
}

func TestSyncWritesOnlyTheDiff(t *testing.T) {
	h := newHarness(t, Config{SNAT: true})
	want := map[string][]Mapping{
		"a": {{PublicPort: 10500, Backend: backend("198.19.2.2:30000")}},
		"b": {{PublicPort: 10501, Backend: backend("198.19.2.3:30000")}},
		"c": {{PublicPort: 10502, Backend: backend("198.19.2.4:30000")}},
	}
	sync1(t, h.plane, want)

	delete(want, "a")
	want["b"] = []Mapping{{PublicPort: 10501, Backend: backend("198.19.2.9:30009")}}
	want["d"] = []Mapping{{PublicPort: 10503, Backend: backend("198.19.2.5:30000")}}
	calls := h.ct.count()
	sync1(t, h.plane, want)

	restores := h.ipt.Restores()
	wantPayload := `*nat
-I LIVEGATE-DNAT-10496 1 -d 198.18.1.1/32 -p udp -m udp --dport 10500 -j RETURN
-I LIVEGATE-DNAT-10496 1 -d 198.18.1.1/32 -p udp -m udp --dport 10501 -m comment --comment "lg:10501" -j DNAT --to-destination 198.19.2.9:30009
-A LIVEGATE-DNAT-10496 -d 198.18.1.1/32 -p udp -m udp --dport 10503 -m comment --comment "lg:10503" -j DNAT --to-destination 198.19.2.5:30000
COMMIT
`
	if len(restores) != 2 || string(restores[1]) != wantPayload {
		t.Fatalf("second batch:\n%s\nwant:\n%s", restores[len(restores)-1], wantPayload)
	}
	// The changed and the added port first, the removed one after.
	if got := h.ct.since(calls); !slices.Equal(got, []uint16{10500, 10501, 10503}) {
		t.Fatalf("conntrack flushed %v, want [10500 10501 10503]", got)
	}
	if got := h.ct.since(calls + 1); !slices.Equal(got, []uint16{10500}) {
		t.Fatalf("conntrack flushed %v after the forwarded ports, want [10500]", got)
	}

	// Every route ends; the sweep interval passes, so the tombstones go with the rest.
	h.clk.t = h.clk.t.Add(DefaultSweepInterval)
	sync1(t, h.plane, nil)
	nat := h.nat(t)
	for _, chain := range []string{ChainDNAT, ChainSNAT} {
		if rules := nat.ChainRules(chain); len(rules) != 0 {
			t.Fatalf("%s not empty after removing every route: %v", chain, specs(rules))
		}
	}
	if nat.HasChain(shard) {
		t.Fatalf("shard chain %s left after removing every route", shard)
	}
	if got := specs(nat.ChainRules("PREROUTING")); len(got) != 1 {
		t.Fatalf("PREROUTING = %v, want the one jump", got)
	}
}

func TestSyncRepairsDriftAndLeavesForeignRules(t *testing.T) {
	h := newHarness(t, Config{SNAT: true})
	want := map[string][]Mapping{
		"a": {{PublicPort: 10500, Backend: backend("198.19.2.2:30000")}},
		"b": {{PublicPort: 10501, Backend: backend("198.19.2.3:30000")}},
	}
	sync1(t, h.plane, want)

	foreign := "-p tcp -m tcp --dport 80 -j DNAT --to-destination 10.0.0.1:80"
	good := dnatSpec(publicIP, 10501, backend("198.19.2.3:30000"))
	h.ipt.SetRules("nat", "PREROUTING", foreign)
	h.ipt.SetRules("nat", ChainDNAT, dispatchSpec(publicIP, 10496), "-p udp -j ACCEPT")
	h.ipt.SetRules("nat", shard,
		good,
		dnatSpec(publicIP, 10501, backend("198.19.2.3:30000")),
		dnatSpec(publicIP, 10507, backend("198.19.2.7:30000")),
		"-p udp -j ACCEPT",
	)
	h.ipt.SetRules("nat", ChainSNAT)

	sync1(t, h.plane, want)
	if n := len(h.ipt.Restores()); n != 1 {
		t.Fatalf("drift repaired before the resync interval: %d batches", n)
	}
	h.clk.t = h.clk.t.Add(DefaultResyncInterval)
	calls := h.ct.count()
	sync1(t, h.plane, want)

	nat := h.nat(t)
	wantPre := []string{`-m comment --comment "livegate media DNAT" -j LIVEGATE-DNAT`, foreign}
	if got := specs(nat.ChainRules("PREROUTING")); !slices.Equal(got, wantPre) {
		t.Fatalf("PREROUTING = %q, want %q", got, wantPre)
	}
	if got := specs(nat.ChainRules(ChainDNAT)); !slices.Equal(got, []string{dispatchSpec(publicIP, 10496)}) {
		t.Fatalf("%s = %q, want the one dispatch rule", ChainDNAT, got)
	}
	// 10507 is tombstoned; the second rule of 10501 is never reached. Both wait for the sweep.
	gotDNAT := specs(nat.ChainRules(shard))
	wantDNAT := []string{tombstoneSpec(publicIP, 10507), good, good, dnatSpec(publicIP, 10507, backend("198.19.2.7:30000")),
		dnatSpec(publicIP, 10500, backend("198.19.2.2:30000"))}
	if !slices.Equal(gotDNAT, wantDNAT) {
		t.Fatalf("%s = %q, want %q", shard, gotDNAT, wantDNAT)
	}
	if got := specs(nat.ChainRules(ChainSNAT)); len(got) != 1 {
		t.Fatalf("%s = %q, want the masquerade rule back", ChainSNAT, got)
	}
	if got := h.ct.since(calls); !slices.Equal(got, []uint16{10500, 10507}) {
		t.Fatalf("conntrack flushed %v, want [10500 10507]", got)
	}

	h.clk.t = h.clk.t.Add(DefaultSweepInterval)
	sync1(t, h.plane, want)
	gotDNAT = specs(h.nat(t).ChainRules(shard))
	wantDNAT = []string{good, dnatSpec(publicIP, 10500, backend("198.19.2.2:30000"))}
	if !slices.Equal(gotDNAT, wantDNAT) {
		t.Fatalf("%s after the sweep = %q, want %q", shard, gotDNAT, wantDNAT)
	}
}

func TestSyncRetriesFromTheKernelWhenABatchFails(t *testing.T) {
	h := newHarness(t, Config{})
	want := map[string][]Mapping{"a": {{PublicPort: 10500, Backend: backend("198.19.2.2:30000")}}}
	sync1(t, h.plane, want)
	h.ipt.SetRules("nat", shard)

	want["a"] = []Mapping{{PublicPort: 10500, Backend: backend("198.19.2.2:30001")}}
	sync1(t, h.plane, want)
	got := specs(h.nat(t).ChainRules(shard))
	if len(got) != 1 || got[0] != dnatSpec(publicIP, 10500, backend("198.19.2.2:30001")) {
		t.Fatalf("%s = %q after retry", shard, got)
	}
}

func TestSyncReportsRestoreFailure(t *testing.T) {
	h := newHarness(t, Config{})
	h.ipt.FailRestore = errors.New("iptables-restore: exit status 1")
	err := h.plane.Sync(context.Background(), map[string][]Mapping{"a": {{PublicPort: 10500, Backend: backend("198.19.2.2:30000")}}})
	if err == nil || !strings.Contains(err.Error(), "exit status 1") {
		t.Fatalf("Sync error = %v", err)
	}
	h.ipt.FailRestore = nil
	sync1(t, h.plane, map[string][]Mapping{"a": {{PublicPort: 10500, Backend: backend("198.19.2.2:30000")}}})
	if got := h.nat(t).ChainRules(shard); len(got) != 1 {
		t.Fatalf("rules after recovery: %v", specs(got))
	}
}

func TestSyncSkipsInvalidMappings(t *testing.T) {
	h := newHarness(t, Config{BackendPorts: portalloc.Range{First: 30000, Last: 32767},
		BackendCIDRs: []netip.Prefix{netip.MustParsePrefix("198.19.0.0/16")}})
	err := h.plane.Sync(context.Background(), map[string][]Mapping{
		"ok":       {{PublicPort: 10500, Backend: backend("198.19.2.2:30000")}},
		"range":    {{PublicPort: 9999, Backend: backend("198.19.2.2:30000")}},
		"cidr":     {{PublicPort: 10502, Backend: backend("10.0.0.1:30000")}},
		"port":     {{PublicPort: 10503, Backend: backend("198.19.2.2:80")}},
		"dup-one":  {{PublicPort: 10504, Backend: backend("198.19.2.2:30000")}},
		"dup-two":  {{PublicPort: 10504, Backend: backend("198.19.2.3:30000")}},
		"ipv6-too": {{PublicPort: 10505, Backend: backend("[2001:db8::1]:30000")}},
	})
	if err == nil {
		t.Fatal("Sync accepted invalid mappings")
	}
	for _, s := range []string{"9999", "10.0.0.1", ":80", "10504", "2001:db8::1"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error does not mention %s: %v", s, err)
		}
	}
	got := specs(h.nat(t).ChainRules(shard))
	if len(got) != 1 || !strings.Contains(got[0], "--dport 10500 ") {
		t.Fatalf("%s = %q, want only port 10500", shard, got)
	}
}

func TestConntrackFailureIsRetried(t *testing.T) {
	h := newHarness(t, Config{})
	h.ct.mu.Lock()
	h.ct.err = errors.New("netlink: operation not permitted")
	h.ct.mu.Unlock()
	want := map[string][]Mapping{"a": {{PublicPort: 10500, Backend: backend("198.19.2.2:30000")}}}
	// The batch is applied and the failure reported; the deletion is tried again in the
	// background a few times, then left to the next sync.
	if err := h.plane.Sync(context.Background(), want); err == nil || !strings.Contains(err.Error(), "10500") {
		t.Fatalf("Sync error = %v, want the conntrack failure", err)
	}
	if err := h.plane.Settle(context.Background()); err == nil || !strings.Contains(err.Error(), "10500") {
		t.Fatalf("Settle = %v, want the conntrack failure", err)
	}
	h.ct.mu.Lock()
	tries := len(h.ct.calls)
	h.ct.err = nil
	h.ct.mu.Unlock()
	if tries != 1+flushAttempts {
		t.Fatalf("deletion tried %d times, want %d", tries, 1+flushAttempts)
	}
	// The next sync, though it changes nothing, tries the ports left over again.
	sync1(t, h.plane, want)
	// The ports of the sweep after the start failed with it.
	if got := h.ct.last(); !slices.Equal(got, portsFrom(10500, 10509)) {
		t.Fatalf("conntrack retry flushed %v, want 10500-10509", got)
	}
	calls := len(h.ct.calls)
	sync1(t, h.plane, want)
	if len(h.ct.calls) != calls {
		t.Fatal("conntrack flushed again after the retry succeeded")
	}
}

// TestReaddedPortLeavesBackgroundDeletions: a removed port whose background deletion is still
// pending, forwarded again, is deleted once, before Sync returns, and never after: a deletion
// after its new flow's first datagram would lose that flow's reply.
func TestReaddedPortLeavesBackgroundDeletions(t *testing.T) {
	h := newHarness(t, Config{})
	want := map[string][]Mapping{"a": {{PublicPort: 10500, Backend: backend("198.19.2.2:30000")}}}
	sync1(t, h.plane, want)
	h.ct.mu.Lock()
	h.ct.err = errors.New("netlink: operation not permitted")
	h.ct.mu.Unlock()
	if err := h.plane.Sync(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	if err := h.plane.Settle(context.Background()); err == nil {
		t.Fatal("Settle hid the failed deletions")
	}
	h.ct.mu.Lock()
	h.ct.err = nil
	h.ct.mu.Unlock()
	calls := h.ct.count()
	sync1(t, h.plane, want)
	if got := h.ct.since(calls); !slices.Equal(got, []uint16{10500}) {
		t.Fatalf("deleted %v around the re-adding sync, want 10500 once", got)
	}
}

func TestRestartKeepsTheKernelAsItIs(t *testing.T) {
	h := newHarness(t, Config{SNAT: true, Quarantine: time.Minute})
	backends := []netip.AddrPort{backend("198.19.2.2:30000"), backend("198.19.2.2:30001")}
	ports, err := h.plane.Assign("a", backends, nil)
	if err != nil {
		t.Fatal(err)
	}
	stale, err := h.plane.Assign("gone", backends[:1], nil)
	if err != nil {
		t.Fatal(err)
	}
	sync1(t, h.plane, map[string][]Mapping{
		"a":    {{PublicPort: ports[0], Backend: backends[0]}, {PublicPort: ports[1], Backend: backends[1]}},
		"gone": {{PublicPort: stale[0], Backend: backends[0]}},
	})
	before := len(h.ipt.Restores())

	restarted := h.newPlane(t, Config{SNAT: true, Quarantine: time.Minute})
	if err := restarted.Recover(context.Background()); err != nil {
		t.Fatal(err)
	}
	fresh, err := restarted.Assign("new", backends[:1], nil)
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(ports, fresh[0]) || fresh[0] == stale[0] {
		t.Fatalf("new route got port %d, still forwarded for another route", fresh[0])
	}
	again, err := restarted.Assign("a", backends, ports)
	if err != nil || !slices.Equal(again, ports) {
		t.Fatalf("Assign with preferred ports = %v, %v, want %v", again, err, ports)
	}
	want := map[string][]Mapping{"a": {{PublicPort: ports[0], Backend: backends[0]}, {PublicPort: ports[1], Backend: backends[1]}}}
	restarted.Release("new")
	sync1(t, restarted, map[string][]Mapping{"a": want["a"], "gone": {{PublicPort: stale[0], Backend: backends[0]}}})
	if n := len(h.ipt.Restores()); n != before {
		t.Fatalf("restart with the same state wrote %d batches", n-before)
	}
	sync1(t, restarted, want)
	// Two ports in use, the stale route's and the released one's in quarantine.
	if _, free := restarted.Capacity(); free != 10-2-1-1 {
		t.Fatalf("free ports = %d, want 6", free)
	}
}

func TestAssign(t *testing.T) {
	h := newHarness(t, Config{Ports: portalloc.Range{First: 10500, Last: 10502},
		BackendCIDRs: []netip.Prefix{netip.MustParsePrefix("198.19.0.0/16")}})
	if _, err := h.plane.Assign("bad", []netip.AddrPort{backend("10.0.0.1:30000")}, nil); !errors.Is(err, ErrBackendNotAllowed) {
		t.Fatalf("Assign to a backend outside the CIDRs: %v", err)
	}
	got, err := h.plane.Assign("a", []netip.AddrPort{backend("198.19.2.2:30000"), backend("198.19.2.2:30001")}, []uint16{10502})
	if err != nil || !slices.Equal(got, []uint16{10502, 10500}) {
		t.Fatalf("Assign = %v, %v", got, err)
	}
	if _, err := h.plane.Assign("b", []netip.AddrPort{backend("198.19.2.3:30000"), backend("198.19.2.3:30001")}, nil); !errors.Is(err, portalloc.ErrExhausted) {
		t.Fatalf("Assign beyond the range: %v, want ErrExhausted", err)
	}
	if total, free := h.plane.Capacity(); total != 3 || free != 1 {
		t.Fatalf("Capacity = %d, %d, want 3, 1", total, free)
	}
	h.plane.Release("a")
	if _, free := h.plane.Capacity(); free != 3 {
		t.Fatalf("free after release with no quarantine = %d, want 3", free)
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	ipt := iptablestest.New()
	for name, cfg := range map[string]Config{
		"no public ip": {},
		"ipv6":         {PublicIP: netip.MustParseAddr("2001:db8::1")},
		"bad range":    {PublicIP: publicIP, Ports: portalloc.Range{First: 20, Last: 10}},
		"bad backends": {PublicIP: publicIP, BackendPorts: portalloc.Range{First: 0, Last: 10}},
		"quarantine":   {PublicIP: publicIP, Quarantine: -time.Second},
	} {
		if _, err := New(cfg, WithRunner(ipt)); err == nil {
			t.Errorf("%s: New accepted %+v", name, cfg)
		}
	}
	p, err := New(Config{PublicIP: publicIP}, WithRunner(ipt))
	if err != nil {
		t.Fatal(err)
	}
	if total, _ := p.Capacity(); total != DefaultPorts.Size() {
		t.Fatalf("default range holds %d ports, want %d", total, DefaultPorts.Size())
	}
}

func TestCleanupRemovesOnlyOurs(t *testing.T) {
	h := newHarness(t, Config{SNAT: true})
	sync1(t, h.plane, map[string][]Mapping{"a": {{PublicPort: 10500, Backend: backend("198.19.2.2:30000")}}})
	foreign := "-p tcp -m tcp --dport 80 -j DNAT --to-destination 10.0.0.1:80"
	h.ipt.SetRules("nat", "PREROUTING", append(specs(h.nat(t).ChainRules("PREROUTING")), foreign)...)

	if err := Cleanup(context.Background(), WithRunner(h.ipt), WithConntrack(h.ct)); err != nil {
		t.Fatal(err)
	}
	out, err := h.ipt.Save(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), "LIVEGATE") || strings.Contains(string(out), "livegate") {
		t.Fatalf("livegate rules left after cleanup:\n%s", out)
	}
	if !strings.Contains(string(out), foreign) {
		t.Fatalf("cleanup removed a foreign rule:\n%s", out)
	}
	if got := h.ct.last(); !slices.Equal(got, []uint16{10500}) {
		t.Fatalf("cleanup flushed %v, want [10500]", got)
	}
	if err := Cleanup(context.Background(), WithRunner(h.ipt), WithConntrack(h.ct)); err != nil {
		t.Fatalf("second cleanup: %v", err)
	}
}

func TestParseShardRule(t *testing.T) {
	split := func(s string) []string {
		args, err := iptables.Split(s)
		if err != nil {
			t.Fatal(err)
		}
		return args
	}
	tests := []struct {
		spec string
		want shardRule
		ok   bool
	}{
		{spec: dnatSpec(publicIP, 10500, backend("198.19.2.2:30000")), ok: true,
			want: shardRule{public: publicIP, port: 10500, backend: backend("198.19.2.2:30000")}},
		{spec: `-p udp -m udp --dport 10500 -d 198.18.1.1 -m comment --comment lg:10500 -j DNAT --to-destination 198.19.2.2:30000`, ok: true,
			want: shardRule{public: publicIP, port: 10500, backend: backend("198.19.2.2:30000")}},
		{spec: `-d 198.18.1.0/24 -p udp -m udp --dport 10500 -m comment --comment "lg:10500" -j DNAT --to-destination 198.19.2.2:30000`},
		{spec: `-d 198.18.1.1/32 -p udp -m udp --dport 10500 -m comment --comment "lg:10501" -j DNAT --to-destination 198.19.2.2:30000`},
		{spec: `-d 198.18.1.1/32 -p tcp -m tcp --dport 10500 -m comment --comment "lg:10500" -j DNAT --to-destination 198.19.2.2:30000`},
		{spec: `-d 198.18.1.1/32 -p udp -m udp --dport 10500 -m comment --comment "lg:10500" -j DNAT --to-destination 198.19.2.2`},
		{spec: `-d 198.18.1.1/32 -p udp -m udp --dport 10500 -m comment --comment "lg:10500" -j DNAT --to-destination 198.19.2.2:30000 --random`},
		{spec: `-s 10.0.0.0/8 -d 198.18.1.1/32 -p udp -m udp --dport 10500 -m comment --comment "lg:10500" -j DNAT --to-destination 198.19.2.2:30000`},
		{spec: `-j ACCEPT`},
		{spec: tombstoneSpec(publicIP, 10500), ok: true, want: shardRule{public: publicIP, port: 10500, tombstone: true}},
		{spec: `-d 198.18.1.1/32 -p udp -m udp --dport 10500 -m comment --comment "lg:10500" -j RETURN`},
		{spec: `-d 198.18.1.1/32 -p udp -m udp --dport 10500 -j RETURN --to-destination 198.19.2.2:30000`},
		{spec: `-d 198.18.1.1/32 -p udp -m udp --dport 10500 -j ACCEPT`},
	}
	for _, tt := range tests {
		got, ok := parseShardRule(split(tt.spec))
		if ok != tt.ok || got != tt.want {
			t.Errorf("parseShardRule(%q) = %+v, %v, want %+v, %v", tt.spec, got, ok, tt.want, tt.ok)
		}
	}
}

func TestEmptiedShardsAreDeleted(t *testing.T) {
	h := newHarness(t, Config{Ports: portalloc.Range{First: 10500, Last: 11999}})
	want := map[string][]Mapping{}
	for i := range 1000 {
		want[strconv.Itoa(i)] = []Mapping{{PublicPort: uint16(10500 + i), Backend: backend("198.19.2.2:30000")}}
	}
	sync1(t, h.plane, want)
	if got := h.nat(t).ChainRules(ChainDNAT); len(got) != 8 {
		t.Fatalf("%d dispatch rules for ports 10500-11499, want 8", len(got))
	}
	keep := map[string][]Mapping{"7": want["7"], "8": want["8"]}
	sync1(t, h.plane, keep)
	flushed := h.ct.last()
	if len(flushed) != 998 || slices.Contains(flushed, 10507) || slices.Contains(flushed, 10508) {
		t.Fatalf("flushed %d ports, want the 998 removed ones", len(flushed))
	}
	// Tombstoned, the removed ports keep their shards until the sweep.
	if got := h.nat(t).ChainRules(ChainDNAT); len(got) != 8 {
		t.Fatalf("%d dispatch rules before the sweep, want 8", len(got))
	}
	h.clk.t = h.clk.t.Add(DefaultSweepInterval)
	calls := h.ct.count()
	sync1(t, h.plane, keep)
	if h.ct.count() != calls {
		t.Fatalf("the sweep deleted conntrack entries: %v", h.ct.since(calls))
	}

	nat := h.nat(t)
	var shards []string
	for c := range nat.Chains {
		if strings.HasPrefix(c, ShardPrefix) {
			shards = append(shards, c)
		}
	}
	if !slices.Equal(shards, []string{shard}) {
		t.Fatalf("shard chains left: %v, want only %s", shards, shard)
	}
	if got := specs(nat.ChainRules(ChainDNAT)); !slices.Equal(got, []string{dispatchSpec(publicIP, 10496)}) {
		t.Fatalf("dispatch rules = %q", got)
	}
	got := specs(nat.ChainRules(shard))
	if len(got) != 2 || !strings.Contains(got[0], "--dport 10507 ") || !strings.Contains(got[1], "--dport 10508 ") {
		t.Fatalf("%s = %q, want ports 10507 and 10508", shard, got)
	}
}

func TestResyncIntervalZeroReadsBackEverySync(t *testing.T) {
	ipt := iptablestest.New()
	p, err := New(Config{PublicIP: publicIP, Ports: portalloc.Range{First: 10500, Last: 10509}},
		WithRunner(ipt), WithConntrack(&fakeCleaner{}), WithResyncInterval(0))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]Mapping{"a": {{PublicPort: 10500, Backend: backend("198.19.2.2:30000")}}}
	sync1(t, p, want)
	ipt.SetRules("nat", shard)
	sync1(t, p, want)
	if n := len(ipt.Restores()); n != 2 {
		t.Fatalf("drift not repaired on the next Sync: %d batches", n)
	}
}

// heldSave lets a test hold a read-back after iptables-save has printed the nat table, so that
// batches can run between the read and its use.
type heldSave struct {
	*iptablestest.Fake
	mu    sync.Mutex
	hold  chan struct{}
	saved chan struct{}
}

func (h *heldSave) holdNext() (saved, release chan struct{}) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.hold, h.saved = make(chan struct{}), make(chan struct{})
	return h.saved, h.hold
}

func (h *heldSave) Save(ctx context.Context, table string) ([]byte, error) {
	out, err := h.Fake.Save(ctx, table)
	h.mu.Lock()
	hold, saved := h.hold, h.saved
	if table == "nat" {
		h.hold, h.saved = nil, nil
	}
	h.mu.Unlock()
	if table == "nat" && hold != nil {
		close(saved)
		<-hold
	}
	return out, err
}

func newHeldHarness(t *testing.T, ports portalloc.Range) (*harness, *heldSave) {
	t.Helper()
	h := &harness{ipt: iptablestest.New(), ct: &fakeCleaner{}, clk: &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}}
	held := &heldSave{Fake: h.ipt}
	p, err := New(Config{PublicIP: publicIP, Ports: ports}, WithRunner(held), WithConntrack(h.ct), WithClock(h.clk.now), WithIdleSweep(0))
	if err != nil {
		t.Fatal(err)
	}
	h.plane = p
	return h, held
}

func countRules(t *testing.T, h *harness, chain string, port uint16) int {
	t.Helper()
	n := 0
	for _, r := range h.nat(t).ChainRules(chain) {
		if strings.Contains(r.Spec, "--dport "+strconv.Itoa(int(port))+" ") {
			n++
		}
	}
	return n
}

// TestReadBackRunsBehindBatches: a due read-back does not hold up the batches that follow it;
// it repairs the drift it finds, and keeps what batches wrote meanwhile instead of taking the
// older read for drift (which would add those rules a second time).
func TestReadBackRunsBehindBatches(t *testing.T) {
	h, held := newHeldHarness(t, portalloc.Range{First: 10500, Last: 10509})
	ctx := context.Background()
	a := []Mapping{{PublicPort: 10500, Backend: backend("198.19.2.2:30000")}}
	sync1(t, h.plane, map[string][]Mapping{"a": a})
	h.ipt.SetRules("nat", shard) // drift: the rule of 10500 is gone

	h.clk.t = h.clk.t.Add(DefaultResyncInterval)
	saved, release := held.holdNext()
	if err := h.plane.Sync(ctx, map[string][]Mapping{"a": a}); err != nil {
		t.Fatal(err)
	}
	<-saved
	b := []Mapping{{PublicPort: 10501, Backend: backend("198.19.2.3:30000")}}
	if err := h.plane.Sync(ctx, map[string][]Mapping{"a": a, "b": b}); err != nil {
		t.Fatal(err)
	}
	if n := countRules(t, h, shard, 10501); n != 1 {
		t.Fatalf("port 10501 has %d rules while the read-back is held, want 1", n)
	}
	close(release)
	if err := h.plane.Settle(ctx); err != nil {
		t.Fatal(err)
	}
	if n := countRules(t, h, shard, 10500); n != 1 {
		t.Fatalf("drifted port 10500 has %d rules after the read-back, want 1", n)
	}
	if n := countRules(t, h, shard, 10501); n != 1 {
		t.Fatalf("port 10501, added during the read-back, has %d rules, want 1", n)
	}
	if n := len(h.ipt.Restores()); n != 3 {
		t.Fatalf("%d batches, want 3 (first, 10501, the repair)", n)
	}
}

// TestReadBackDroppedWhenChainsChanged: a read-back overlapping a batch that changed the chains
// is not used; the next Sync reads again, and that one repairs.
func TestReadBackDroppedWhenChainsChanged(t *testing.T) {
	h, held := newHeldHarness(t, portalloc.Range{First: 10500, Last: 10700})
	ctx := context.Background()
	a := []Mapping{{PublicPort: 10500, Backend: backend("198.19.2.2:30000")}}
	sync1(t, h.plane, map[string][]Mapping{"a": a})
	h.ipt.SetRules("nat", shard)

	h.clk.t = h.clk.t.Add(DefaultResyncInterval)
	saved, release := held.holdNext()
	if err := h.plane.Sync(ctx, map[string][]Mapping{"a": a}); err != nil {
		t.Fatal(err)
	}
	<-saved
	// A port in another shard: the batch creates a chain and a dispatch rule.
	c := []Mapping{{PublicPort: 10650, Backend: backend("198.19.2.4:30000")}}
	want := map[string][]Mapping{"a": a, "c": c}
	if err := h.plane.Sync(ctx, want); err != nil {
		t.Fatal(err)
	}
	close(release)
	if err := h.plane.Settle(ctx); err != nil {
		t.Fatal(err)
	}
	if n := countRules(t, h, shard, 10500); n != 0 {
		t.Fatalf("the overlapped read-back was used: port 10500 has %d rules", n)
	}
	sync1(t, h.plane, want)
	if n := countRules(t, h, shard, 10500); n != 1 {
		t.Fatalf("port 10500 has %d rules after the next read-back, want 1", n)
	}
	if n := countRules(t, h, ShardPrefix+"10624", 10650); n != 1 {
		t.Fatalf("port 10650 has %d rules, want 1", n)
	}
}

// An added port's conntrack entries are deleted before Sync returns unless the port is clean
// (no rule since its entries were last deleted) and new to a key that took it from the
// round-robin.
func TestAddedPortFlushedOnlyWhenAnEntryCanMatter(t *testing.T) {
	h := newHarness(t, Config{Quarantine: time.Minute})
	b := backend("198.19.2.2:30000")
	sync1(t, h.plane, nil) // the start's sweep of every unforwarded port
	assign := func(key string, preferred []uint16) uint16 {
		t.Helper()
		ports, err := h.plane.Assign(key, []netip.AddrPort{b}, preferred)
		if err != nil {
			t.Fatal(err)
		}
		return ports[0]
	}
	want := map[string][]Mapping{}
	step := func(name string, wantFlushed []uint16) {
		t.Helper()
		calls := h.ct.count()
		sync1(t, h.plane, want)
		if got := h.ct.since(calls); !slices.Equal(got, wantFlushed) {
			t.Fatalf("%s: conntrack flushed %v, want %v", name, got, wantFlushed)
		}
	}

	fresh := assign("a", nil)
	want["a"] = []Mapping{{PublicPort: fresh, Backend: b}}
	step("fresh port", nil)

	preferred := assign("b", []uint16{10505})
	want["b"] = []Mapping{{PublicPort: preferred, Backend: b}}
	step("preferred port, its clients may be sending", []uint16{10505})

	want["a"] = []Mapping{{PublicPort: fresh, Backend: backend("198.19.2.2:30001")}}
	step("changed backend", []uint16{fresh})

	h.plane.Release("a")
	delete(want, "a")
	step("removed, deleted behind", []uint16{fresh})

	want["c"] = []Mapping{{PublicPort: fresh, Backend: b}}
	step("re-added without the allocator", []uint16{fresh})
	delete(want, "c")
	step("removed again", []uint16{fresh})

	// A port still waiting for its deletion when it is added again is not clean.
	next := assign("d", nil)
	want["d"] = []Mapping{{PublicPort: next, Backend: b}}
	step("fresh port", nil)
	h.ct.mu.Lock()
	h.ct.err = errors.New("netlink: operation not permitted")
	h.ct.mu.Unlock()
	h.plane.Release("d")
	delete(want, "d")
	if err := h.plane.Sync(context.Background(), want); err != nil {
		t.Fatal(err)
	}
	if err := h.plane.Settle(context.Background()); err == nil {
		t.Fatal("Settle: want the conntrack failure")
	}
	h.ct.mu.Lock()
	h.ct.err = nil
	h.ct.mu.Unlock()
	h.clk.t = h.clk.t.Add(time.Minute)
	for i := 0; ; i++ {
		if assign("e"+strconv.Itoa(i), nil) == next {
			want["e"] = []Mapping{{PublicPort: next, Backend: b}}
			break
		}
	}
	step("fresh port whose deletion failed", []uint16{next})
}

// forwardedTo reads the fake kernel the way a packet walks the shard: the first rule of the port
// decides; "" when a tombstone or no rule does.
func forwardedTo(t *testing.T, h *harness, port uint16) string {
	t.Helper()
	for _, r := range h.nat(t).ChainRules(shardChain(shardBase(port))) {
		d, ok := parseShardRule(r.Args)
		if !ok || d.port != port {
			continue
		}
		if d.tombstone {
			return ""
		}
		return d.backend.String()
	}
	return ""
}

func TestEndedPortsAreTombstonedThenSwept(t *testing.T) {
	h := newHarness(t, Config{})
	a, b := backend("198.19.2.2:30000"), backend("198.19.2.3:30000")
	sync1(t, h.plane, map[string][]Mapping{"a": {{PublicPort: 10500, Backend: a}}, "b": {{PublicPort: 10501, Backend: b}}})

	tests := []struct {
		name string
		want map[string][]Mapping
		// forwarded is what each port's first rule does afterwards.
		forwarded map[uint16]string
		dead      int
	}{
		{name: "end a", want: map[string][]Mapping{"b": {{PublicPort: 10501, Backend: b}}},
			forwarded: map[uint16]string{10500: "", 10501: b.String()}, dead: 2},
		{name: "port of a to a new backend before the sweep",
			want:      map[string][]Mapping{"b": {{PublicPort: 10501, Backend: b}}, "c": {{PublicPort: 10500, Backend: b}}},
			forwarded: map[uint16]string{10500: b.String(), 10501: b.String()}, dead: 2},
		{name: "end c",
			want:      map[string][]Mapping{"b": {{PublicPort: 10501, Backend: b}}},
			forwarded: map[uint16]string{10500: "", 10501: b.String()}, dead: 4},
		{name: "port of a back to its first backend, a copy of a dead rule",
			want:      map[string][]Mapping{"b": {{PublicPort: 10501, Backend: b}}, "a": {{PublicPort: 10500, Backend: a}}},
			forwarded: map[uint16]string{10500: a.String(), 10501: b.String()}, dead: 4},
		{name: "b changes backend", want: map[string][]Mapping{"b": {{PublicPort: 10501, Backend: a}}, "a": {{PublicPort: 10500, Backend: a}}},
			forwarded: map[uint16]string{10500: a.String(), 10501: a.String()}, dead: 5},
	}
	for _, tt := range tests {
		restores := len(h.ipt.Restores())
		sync1(t, h.plane, tt.want)
		batch := string(h.ipt.Restores()[restores])
		if strings.Contains(batch, "\n-D ") {
			t.Fatalf("%s: batch deletes before the sweep is due:\n%s", tt.name, batch)
		}
		live := 0
		for port, to := range tt.forwarded {
			if got := forwardedTo(t, h, port); got != to {
				t.Fatalf("%s: port %d forwarded to %q, want %q", tt.name, port, got, to)
			}
			if to != "" {
				live++
			}
		}
		if got := len(h.nat(t).ChainRules(shard)) - live; got != tt.dead {
			t.Fatalf("%s: %d dead rules, want %d: %q", tt.name, got, tt.dead, specs(h.nat(t).ChainRules(shard)))
		}
	}

	// A restart adopts the mappings and leaves the dead rules to the sweep interval (or the idle
	// sweep): its first batch is not slowed by a sweep. Neither touches the conntrack entries of
	// the forwarded ports.
	restarted := h.newPlane(t, Config{})
	if err := restarted.Recover(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := restarted.Settle(context.Background()); err != nil {
		t.Fatal(err)
	}
	calls := h.ct.count()
	final := tests[len(tests)-1].want
	dead := len(h.nat(t).ChainRules(shard)) - 2
	sync1(t, restarted, final)
	if got := len(h.nat(t).ChainRules(shard)) - 2; got != dead || dead == 0 {
		t.Fatalf("the restart's first batch swept: %d dead rules left of %d", got, dead)
	}
	h.clk.t = h.clk.t.Add(DefaultSweepInterval)
	sync1(t, restarted, final)
	got := specs(h.nat(t).ChainRules(shard))
	want := []string{dnatSpec(publicIP, 10501, a), dnatSpec(publicIP, 10500, a)}
	if !slices.Equal(got, want) {
		t.Fatalf("%s after the restart's sweep = %q, want %q", shard, got, want)
	}
	// (The start's deletion of every unforwarded port's entries runs meanwhile.)
	if got := h.ct.since(calls); slices.Contains(got, 10500) || slices.Contains(got, 10501) {
		t.Fatalf("the restart deleted the entries of forwarded ports: %v", got)
	}

	// Ended now, swept after the interval with the shard.
	sync1(t, restarted, nil)
	if got := forwardedTo(t, h, 10500) + forwardedTo(t, h, 10501); got != "" {
		t.Fatalf("ended ports still forwarded: %q", got)
	}
	h.clk.t = h.clk.t.Add(DefaultSweepInterval)
	sync1(t, restarted, nil)
	if h.nat(t).HasChain(shard) {
		t.Fatalf("shard %s left after the sweep: %q", shard, specs(h.nat(t).ChainRules(shard)))
	}
}

func TestManyEndedPortsSweepInTheirBatch(t *testing.T) {
	h := newHarness(t, Config{Ports: portalloc.Range{First: 10500, Last: 19999}})
	want := map[string][]Mapping{}
	for i := range sweepMaxDead / 2 {
		want[strconv.Itoa(i)] = []Mapping{{PublicPort: uint16(10500 + i), Backend: backend("198.19.2.2:30000")}}
	}
	sync1(t, h.plane, want)
	sync1(t, h.plane, nil)
	nat := h.nat(t)
	for c := range nat.Chains {
		if isShardChain(c) {
			t.Fatalf("shard %s left after %d ports ended at once", c, len(want))
		}
	}
}

// heldRestore holds the restores while hold is set, after telling entered.
type heldRestore struct {
	*iptablestest.Fake
	entered, hold chan struct{}
}

func (h *heldRestore) Restore(ctx context.Context, payload []byte) error {
	if h.hold != nil {
		close(h.entered)
		<-h.hold
	}
	return h.Fake.Restore(ctx, payload)
}

func TestAssignDoesNotWaitForABatch(t *testing.T) {
	held := &heldRestore{Fake: iptablestest.New(), entered: make(chan struct{}), hold: make(chan struct{})}
	p, err := New(Config{PublicIP: publicIP, Ports: portalloc.Range{First: 10500, Last: 10509}},
		WithRunner(held), WithConntrack(&fakeCleaner{}))
	if err != nil {
		t.Fatal(err)
	}
	synced := make(chan error, 1)
	go func() {
		synced <- p.Sync(context.Background(), map[string][]Mapping{"a": {{PublicPort: 10500, Backend: backend("198.19.2.2:30000")}}})
	}()
	<-held.entered
	// The batch is in the kernel's hands: the planner's calls go on meanwhile.
	if total, _ := p.Capacity(); total != 10 {
		t.Fatalf("Capacity total = %d, want 10", total)
	}
	if _, err := p.Assign("b", []netip.AddrPort{backend("198.19.2.3:30000")}, nil); err != nil {
		t.Fatal(err)
	}
	close(held.hold)
	if err := <-synced; err != nil {
		t.Fatal(err)
	}
	if err := p.Settle(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestIdleSweep(t *testing.T) {
	h := newHarness(t, Config{})
	sync1(t, h.plane, map[string][]Mapping{"a": {{PublicPort: 10500, Backend: backend("198.19.2.2:30000")}}})
	sync1(t, h.plane, nil)
	if !h.nat(t).HasChain(shard) {
		t.Fatal("shard swept in the batch that tombstoned its port")
	}
	// The timer fires before the idle time has passed on the plane's clock: nothing happens.
	// (Set only now, so that no timer of its own is armed.)
	h.plane.o.sweepIdle = DefaultIdleSweep
	h.plane.sweepWhenIdle()
	if !h.nat(t).HasChain(shard) {
		t.Fatal("swept while batches still come")
	}
	h.clk.t = h.clk.t.Add(DefaultIdleSweep)
	h.plane.sweepWhenIdle()
	if h.nat(t).HasChain(shard) {
		t.Fatalf("shard left after the idle sweep: %q", specs(h.nat(t).ChainRules(shard)))
	}
}
