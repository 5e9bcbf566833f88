package mediaplane

import (
	"context"
	"errors"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/livegate/livegate/edgeproxy/internal/iptables"
	"github.com/livegate/livegate/edgeproxy/internal/iptables/iptablestest"
	"github.com/livegate/livegate/edgeproxy/internal/mediaplane/internal/dnatmap"
	"github.com/livegate/livegate/edgeproxy/internal/mediaplane/internal/dnatmap/dnatmaptest"
	"github.com/livegate/livegate/edgeproxy/internal/portalloc"
)

var publicIP = netip.MustParseAddr("198.18.1.1")

var testPorts = portalloc.Range{First: 10500, Last: 10509}

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

func (f *fakeCleaner) setErr(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.err = err
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
	dnat  *dnatmaptest.Fake
	ct    *fakeCleaner
	clk   *clock
	plane *Plane
}

func newHarness(t *testing.T, cfg Config) *harness {
	t.Helper()
	h := &harness{ipt: iptablestest.New(), dnat: &dnatmaptest.Fake{}, ct: &fakeCleaner{},
		clk: &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}}
	h.plane = h.newPlane(t, cfg)
	return h
}

func (h *harness) newPlane(t *testing.T, cfg Config, opts ...Option) *Plane {
	t.Helper()
	if !cfg.PublicIP.IsValid() {
		cfg.PublicIP = publicIP
	}
	if cfg.Ports == (portalloc.Range{}) {
		cfg.Ports = testPorts
	}
	opts = append([]Option{WithRunner(h.ipt), WithDNATMap(h.dnat), WithConntrack(h.ct), WithClock(h.clk.now),
		func(o *options) { o.flushRetry = time.Millisecond }}, opts...)
	p, err := New(cfg, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func (h *harness) table(t *testing.T, name string) *iptables.Table {
	t.Helper()
	out, err := h.ipt.Save(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	rs, err := iptables.ParseSave(out)
	if err != nil {
		t.Fatal(err)
	}
	return rs.Table(name)
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

func one(port uint16, b string) []Mapping { return []Mapping{{PublicPort: port, Backend: backend(b)}} }

func elems(kv ...any) map[uint16]netip.AddrPort {
	out := map[uint16]netip.AddrPort{}
	for i := 0; i < len(kv); i += 2 {
		out[uint16(kv[i].(int))] = backend(kv[i+1].(string))
	}
	return out
}

func TestPlanMap(t *testing.T) {
	a, b, c := "198.19.2.2:30000", "198.19.2.3:30000", "198.19.2.4:30000"
	tests := []struct {
		name                    string
		cur, legacy, want       map[uint16]netip.AddrPort
		del                     []uint16
		set                     map[uint16]netip.AddrPort
		flush                   []uint16
		created                 []uint16
		added, removed, updated int
	}{
		{name: "nothing"},
		{name: "kept", cur: elems(10500, a), want: elems(10500, a)},
		{name: "added", want: elems(10500, a, 10501, b), set: elems(10500, a, 10501, b),
			flush: []uint16{10500, 10501}, created: []uint16{10500, 10501}, added: 2},
		{name: "removed", cur: elems(10500, a, 10501, b), want: elems(10501, b), del: []uint16{10500},
			flush: []uint16{10500}, removed: 1},
		{name: "re-pointed", cur: elems(10500, a), want: elems(10500, c), del: []uint16{10500}, set: elems(10500, c),
			flush: []uint16{10500}, updated: 1},
		{name: "legacy rule, same backend", legacy: elems(10500, a), want: elems(10500, a), set: elems(10500, a), added: 1},
		{name: "legacy rule, other backend", legacy: elems(10500, a), want: elems(10500, b), set: elems(10500, b),
			flush: []uint16{10500}, added: 1},
		{name: "legacy rule, unwanted", legacy: elems(10500, a), flush: []uint16{10500}},
		{name: "legacy rule beside an element", cur: elems(10500, a), legacy: elems(10500, b), want: elems(10500, a)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := planMap(tt.cur, tt.legacy, tt.want)
			if !slices.Equal(p.change.Delete, tt.del) || !maps.Equal(p.change.Set, tt.set) {
				t.Errorf("change = %v %v, want %v %v", p.change.Delete, p.change.Set, tt.del, tt.set)
			}
			if !slices.Equal(p.flush, tt.flush) {
				t.Errorf("flush = %v, want %v", p.flush, tt.flush)
			}
			if got := slices.Sorted(maps.Keys(p.created)); !slices.Equal(got, tt.created) {
				t.Errorf("created = %v, want %v", got, tt.created)
			}
			if p.added != tt.added || p.removed != tt.removed || p.updated != tt.updated {
				t.Errorf("added, removed, updated = %d %d %d, want %d %d %d", p.added, p.removed, p.updated,
					tt.added, tt.removed, tt.updated)
			}
		})
	}
}

func TestSyncProgramsTheKernelOnce(t *testing.T) {
	h := newHarness(t, Config{SNAT: true})
	want := map[string][]Mapping{"a": {{PublicPort: 10500, Backend: backend("198.19.2.2:30000")},
		{PublicPort: 10501, Backend: backend("198.19.2.2:30001")}}}
	sync1(t, h.plane, want)
	if got := h.dnat.Elements(); !maps.Equal(got, elems(10500, "198.19.2.2:30000", 10501, "198.19.2.2:30001")) {
		t.Fatalf("map = %v", got)
	}
	if l, present := h.dnat.Layout(); !present || l != (dnatmap.Layout{Public: publicIP, Ports: testPorts}) {
		t.Fatalf("layout = %v %+v", present, l)
	}
	if n := len(h.dnat.Applied()); n != 1 {
		t.Fatalf("%d map transactions, want 1", n)
	}
	nat, filter := h.table(t, "nat"), h.table(t, "filter")
	if got := specs(nat.ChainRules(ChainSNAT)); !slices.Equal(got, []string{snatSpec(publicIP, testPorts)}) {
		t.Errorf("%s = %q", ChainSNAT, got)
	}
	if got := specs(filter.ChainRules(ChainForward)); !slices.Equal(got, []string{forwardSpec(publicIP, testPorts)}) {
		t.Errorf("%s = %q", ChainForward, got)
	}
	for _, j := range jumps {
		tbl := map[string]*iptables.Table{tableNAT: nat, tableFilter: filter}[j.table]
		if got := specs(tbl.ChainRules(j.from)); !slices.Equal(got, []string{j.spec()}) {
			t.Errorf("%s %s = %q", j.table, j.from, got)
		}
	}
	if n := len(h.ipt.Restores()); n != 1 {
		t.Fatalf("%d restores, want 1", n)
	}
	// The start's deletion of every port, then the two added ports before Sync returned.
	if got := h.ct.since(0); !slices.Equal(got, portsFrom(10500, 10509)) {
		t.Errorf("conntrack deleted %v", got)
	}
	sync1(t, h.plane, want)
	if len(h.dnat.Applied()) != 1 || len(h.ipt.Restores()) != 1 || h.dnat.Calls().Ensures != 1 {
		t.Fatal("a Sync with nothing to change wrote to the kernel")
	}
}

func TestSyncWritesOnlyTheDiff(t *testing.T) {
	h := newHarness(t, Config{})
	sync1(t, h.plane, map[string][]Mapping{"a": one(10500, "198.19.2.2:30000"), "b": one(10501, "198.19.2.3:30000")})
	calls := h.ct.count()
	sync1(t, h.plane, map[string][]Mapping{"a": one(10500, "198.19.2.4:30000"), "c": one(10502, "198.19.2.3:30000")})
	applied := h.dnat.Applied()
	last := applied[len(applied)-1]
	if !slices.Equal(last.Delete, []uint16{10500, 10501}) || !maps.Equal(last.Set, elems(10500, "198.19.2.4:30000", 10502, "198.19.2.3:30000")) {
		t.Fatalf("change = %v %v", last.Delete, last.Set)
	}
	if got := h.ct.since(calls); !slices.Equal(got, []uint16{10500, 10501, 10502}) {
		t.Fatalf("conntrack deleted %v, want 10500-10502", got)
	}
	if n := len(h.ipt.Restores()); n != 1 {
		t.Fatalf("%d restores: the static rules were written again", n)
	}
}

// TestDriftIsRepairedAndForeignRulesKept: once the picture is older than the resync interval, a
// read-back behind the changes finds what was changed behind the plane's back and puts it right;
// rules that are not livegate's stay.
func TestDriftIsRepairedAndForeignRulesKept(t *testing.T) {
	ctx := context.Background()
	want := map[string][]Mapping{"a": one(10500, "198.19.2.2:30000"), "b": one(10501, "198.19.2.3:30000")}
	for name, drift := range map[string]func(h *harness){
		"element deleted":    func(h *harness) { h.dnat.DeleteElement(10500) },
		"element re-pointed": func(h *harness) { h.dnat.SetElement(10500, backend("10.9.9.9:1")) },
		"stray element":      func(h *harness) { h.dnat.SetElement(10509, backend("10.9.9.9:1")) },
		"table flushed":      func(h *harness) { h.dnat.Drop() },
		"forward rule gone":  func(h *harness) { h.ipt.SetRules("filter", ChainForward) },
		"jump gone":          func(h *harness) { h.ipt.SetRules("filter", "FORWARD", "-j DROP") },
		"snat rule doubled": func(h *harness) {
			h.ipt.SetRules("nat", ChainSNAT, snatSpec(publicIP, testPorts), snatSpec(publicIP, testPorts))
		},
		"legacy chain put in": func(h *harness) {
			h.ipt.SetRules("nat", legacyShardPrefix+"10496", "-p udp -m udp --dport 10500 -j RETURN")
		},
	} {
		t.Run(name, func(t *testing.T) {
			h := newHarness(t, Config{SNAT: true})
			foreign := "-p tcp -m tcp --dport 22 -j ACCEPT"
			h.ipt.SetRules("filter", "FORWARD", foreign)
			sync1(t, h.plane, want)
			drift(h)
			h.clk.t = h.clk.t.Add(DefaultResyncInterval)
			sync1(t, h.plane, want)
			if err := h.plane.Settle(ctx); err != nil {
				t.Fatal(err)
			}
			if got := h.dnat.Elements(); !maps.Equal(got, elems(10500, "198.19.2.2:30000", 10501, "198.19.2.3:30000")) {
				t.Errorf("map = %v", got)
			}
			if _, present := h.dnat.Layout(); !present {
				t.Error("table not recreated")
			}
			if got := specs(h.table(t, "filter").ChainRules(ChainForward)); !slices.Equal(got, []string{forwardSpec(publicIP, testPorts)}) {
				t.Errorf("%s = %q", ChainForward, got)
			}
			if got := specs(h.table(t, "nat").ChainRules(ChainSNAT)); !slices.Equal(got, []string{snatSpec(publicIP, testPorts)}) {
				t.Errorf("%s = %q", ChainSNAT, got)
			}
			if !slices.Contains(specs(h.table(t, "filter").ChainRules("FORWARD")), foreign) && name != "jump gone" {
				t.Error("foreign FORWARD rule removed")
			}
			if h.table(t, "nat").HasChain(legacyShardPrefix + "10496") {
				t.Error("legacy chain left")
			}
		})
	}
}

func TestResyncIntervalZeroReadsBackEverySync(t *testing.T) {
	h := newHarness(t, Config{})
	h.plane = h.newPlane(t, Config{}, WithResyncInterval(0))
	want := map[string][]Mapping{"a": one(10500, "198.19.2.2:30000")}
	sync1(t, h.plane, want)
	h.dnat.DeleteElement(10500)
	sync1(t, h.plane, want)
	if n := len(h.dnat.Applied()); n != 2 {
		t.Fatalf("drift not repaired on the next Sync: %d transactions", n)
	}
}

// TestSyncRetriesFromTheKernelWhenAChangeFails: a change the kernel refuses (the picture was
// wrong) is planned again from a read-back, in the same Sync.
func TestSyncRetriesFromTheKernelWhenAChangeFails(t *testing.T) {
	h := newHarness(t, Config{})
	sync1(t, h.plane, map[string][]Mapping{"a": one(10500, "198.19.2.2:30000")})
	h.dnat.DeleteElement(10500)
	h.dnat.SetElement(10501, backend("198.19.2.9:30000"))
	sync1(t, h.plane, map[string][]Mapping{"b": one(10501, "198.19.2.3:30000")})
	if got := h.dnat.Elements(); !maps.Equal(got, elems(10501, "198.19.2.3:30000")) {
		t.Fatalf("map = %v", got)
	}
}

func TestSyncReportsKernelFailure(t *testing.T) {
	for name, fail := range map[string]func(h *harness){
		"map":      func(h *harness) { h.dnat.FailNext(errors.New("netlink receive: operation not permitted")) },
		"iptables": func(h *harness) { h.ipt.FailRestore = errors.New("iptables-restore: operation not permitted") },
	} {
		t.Run(name, func(t *testing.T) {
			h := newHarness(t, Config{})
			want := map[string][]Mapping{"a": one(10500, "198.19.2.2:30000")}
			fail(h)
			// The retry after a read-back meets the failure too when it lasts.
			h.dnat.FailNext(errors.New("netlink receive: operation not permitted"))
			if err := h.plane.Sync(context.Background(), want); err == nil || !strings.Contains(err.Error(), "operation not permitted") {
				t.Fatalf("Sync error = %v", err)
			}
			h.ipt.FailRestore = nil
			sync1(t, h.plane, want)
			if got := h.dnat.Elements(); !maps.Equal(got, elems(10500, "198.19.2.2:30000")) {
				t.Fatalf("map after recovery = %v", got)
			}
		})
	}
}

// TestLegacyRulesMoveIntoTheMap: an edge that finds an earlier version's per-port chains keeps
// their ports from new routes, puts the ports its routes claim into the map, and only then
// removes the chains; a port whose backend stays keeps its conntrack entries.
func TestLegacyRulesMoveIntoTheMap(t *testing.T) {
	h := newHarness(t, Config{Quarantine: time.Minute})
	dnat := func(port int, b string) string {
		return `-d 198.18.1.1/32 -p udp -m udp --dport ` + strconv.Itoa(port) + ` -m comment --comment "lg:` +
			strconv.Itoa(port) + `" -j DNAT --to-destination ` + b
	}
	shard := legacyShardPrefix + "10496"
	h.ipt.SetRules("nat", "PREROUTING", `-m comment --comment "livegate media DNAT" -j LIVEGATE-DNAT`, "-p tcp -j ACCEPT")
	h.ipt.SetRules("nat", "OUTPUT", `-m comment --comment "livegate media DNAT (local)" -j LIVEGATE-DNAT`)
	h.ipt.SetRules("nat", legacyChainDNAT, `-d 198.18.1.1/32 -p udp -m udp --dport 10496:10623 -m comment --comment "lg:shard" -j `+shard)
	h.ipt.SetRules("nat", shard,
		dnat(10500, "198.19.2.2:30000"),
		`-d 198.18.1.1/32 -p udp -m udp --dport 10501 -j RETURN`, dnat(10501, "198.19.2.2:30001"),
		dnat(10502, "198.19.2.2:30002"),
		dnat(10503, "198.19.2.2:30003"))
	h.plane = h.newPlane(t, Config{Quarantine: time.Minute})
	if err := h.plane.Recover(context.Background()); err != nil {
		t.Fatal(err)
	}
	got, err := h.plane.Assign("new", []netip.AddrPort{backend("198.19.2.5:30000")}, nil)
	if err != nil || got[0] != 10501 {
		t.Fatalf("new route got %v, %v, want 10501 (the tombstoned port)", got, err)
	}
	h.plane.Release("new")
	calls := h.ct.count()
	sync1(t, h.plane, map[string][]Mapping{"a": one(10500, "198.19.2.2:30000"), "b": one(10502, "198.19.2.3:30000")})
	if got := h.dnat.Elements(); !maps.Equal(got, elems(10500, "198.19.2.2:30000", 10502, "198.19.2.3:30000")) {
		t.Fatalf("map = %v", got)
	}
	nat := h.table(t, "nat")
	for _, c := range []string{legacyChainDNAT, shard} {
		if nat.HasChain(c) {
			t.Errorf("legacy chain %s left", c)
		}
	}
	if got := specs(nat.ChainRules("PREROUTING")); !slices.Equal(got, []string{"-p tcp -j ACCEPT"}) {
		t.Errorf("PREROUTING = %q", got)
	}
	if got := specs(nat.ChainRules("OUTPUT")); len(got) != 0 {
		t.Errorf("OUTPUT = %q", got)
	}
	flushed := h.ct.since(calls)
	for _, port := range []uint16{10502, 10503} {
		if !slices.Contains(flushed, port) {
			t.Errorf("conntrack of %d not deleted (deleted %v)", port, flushed)
		}
	}
	if slices.Contains(flushed, 10500) {
		t.Errorf("conntrack of 10500, whose backend stayed, deleted (%v)", flushed)
	}
	// The three legacy ports stay reserved, and the released 10501 rests in quarantine.
	if _, free := h.plane.Capacity(); free != 10-4 {
		t.Errorf("free = %d, want 6", free)
	}
}

func TestParseLegacyRule(t *testing.T) {
	tests := []struct {
		spec    string
		port    uint16
		backend string
		ok      bool
	}{
		{spec: `-d 198.18.1.1/32 -p udp -m udp --dport 10500 -m comment --comment "lg:10500" -j DNAT --to-destination 198.19.2.2:30000`,
			port: 10500, backend: "198.19.2.2:30000", ok: true},
		{spec: `-d 198.18.1.1/32 -p udp -m udp --dport 10500 -j RETURN`, port: 10500, ok: true},
		{spec: `-p udp -j ACCEPT`},
		{spec: `-p udp -m udp --dport 0 -j RETURN`},
		{spec: `-p udp -m udp --dport x -j RETURN`},
		{spec: `-p udp -m udp --dport 10500 -j DNAT --to-destination nowhere`},
	}
	for _, tt := range tests {
		port, _, b, ok := parseLegacyRule(strings.Fields(strings.ReplaceAll(tt.spec, `"`, "")))
		want := netip.AddrPort{}
		if tt.backend != "" {
			want = backend(tt.backend)
		}
		if ok != tt.ok || (ok && (port != tt.port || b != want)) {
			t.Errorf("%s: %d %v %v, want %d %v %v", tt.spec, port, b, ok, tt.port, want, tt.ok)
		}
	}
}

func TestLegacyChainNames(t *testing.T) {
	for name, want := range map[string]bool{
		"LIVEGATE-DNAT": true, "LIVEGATE-DNAT-10496": true, "LIVEGATE-DNAT-0": true,
		"LIVEGATE-DNAT-10500": false, "LIVEGATE-DNAT-x": false, "LIVEGATE-DNAT-": false, ChainSNAT: false, "OTHER-10496": false,
	} {
		if got := isLegacyChain(name); got != want {
			t.Errorf("isLegacyChain(%q) = %v", name, got)
		}
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
	if got := h.dnat.Elements(); !maps.Equal(got, elems(10500, "198.19.2.2:30000")) {
		t.Fatalf("map = %v, want only port 10500", got)
	}
}

func TestConntrackFailureIsRetried(t *testing.T) {
	h := newHarness(t, Config{})
	h.ct.mu.Lock()
	h.ct.err = errors.New("netlink: operation not permitted")
	h.ct.mu.Unlock()
	want := map[string][]Mapping{"a": {{PublicPort: 10500, Backend: backend("198.19.2.2:30000")}}}
	// The change is applied and the failure reported; the deletion is tried again in the
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
	// The ports of the start's deletion of every unforwarded port failed with it.
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
	before, applied := len(h.ipt.Restores()), len(h.dnat.Applied())

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
	if len(h.ipt.Restores()) != before || len(h.dnat.Applied()) != applied || h.dnat.Calls().Ensures != 1 {
		t.Fatal("restart with the same state wrote to the kernel")
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
	ipt, dnat := iptablestest.New(), &dnatmaptest.Fake{}
	for name, cfg := range map[string]Config{
		"no public ip": {},
		"ipv6":         {PublicIP: netip.MustParseAddr("2001:db8::1")},
		"bad range":    {PublicIP: publicIP, Ports: portalloc.Range{First: 20, Last: 10}},
		"bad backends": {PublicIP: publicIP, BackendPorts: portalloc.Range{First: 0, Last: 10}},
		"quarantine":   {PublicIP: publicIP, Quarantine: -time.Second},
	} {
		if _, err := New(cfg, WithRunner(ipt), WithDNATMap(dnat)); err == nil {
			t.Errorf("%s: New accepted %+v", name, cfg)
		}
	}
	p, err := New(Config{PublicIP: publicIP}, WithRunner(ipt), WithDNATMap(dnat))
	if err != nil {
		t.Fatal(err)
	}
	if total, _ := p.Capacity(); total != DefaultPorts.Size() {
		t.Fatalf("default range holds %d ports, want %d", total, DefaultPorts.Size())
	}
}

// An added port's conntrack entries are deleted before Sync returns unless the port is clean
// (no mapping since its entries were last deleted) and new to a key that took it from the
// round-robin.
func TestAddedPortFlushedOnlyWhenAnEntryCanMatter(t *testing.T) {
	h := newHarness(t, Config{Quarantine: time.Minute})
	b := backend("198.19.2.2:30000")
	sync1(t, h.plane, nil) // the start's deletion of every unforwarded port
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

func TestCleanupRemovesOnlyOurs(t *testing.T) {
	h := newHarness(t, Config{SNAT: true})
	sync1(t, h.plane, map[string][]Mapping{"a": one(10500, "198.19.2.2:30000"), "b": one(10503, "198.19.2.3:30000")})
	foreign := "-p tcp -m tcp --dport 22 -j ACCEPT"
	h.ipt.SetRules("filter", "FORWARD", append(specs(h.table(t, "filter").ChainRules("FORWARD")), foreign)...)
	h.ipt.SetRules("nat", legacyShardPrefix+"10496", "-d 198.18.1.1/32 -p udp -m udp --dport 10505 -j DNAT --to-destination 198.19.2.2:1")
	calls := h.ct.count()
	if err := Cleanup(context.Background(), WithRunner(h.ipt), WithDNATMap(h.dnat), WithConntrack(h.ct)); err != nil {
		t.Fatal(err)
	}
	if _, present := h.dnat.Layout(); present {
		t.Error("table left")
	}
	out, err := h.ipt.Save(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), "LIVEGATE") || strings.Contains(string(out), "livegate") {
		t.Errorf("livegate rules left:\n%s", out)
	}
	if !strings.Contains(string(out), foreign) {
		t.Errorf("foreign rule removed:\n%s", out)
	}
	if got := h.ct.since(calls); !slices.Equal(got, []uint16{10500, 10503, 10505}) {
		t.Errorf("conntrack deleted %v", got)
	}
	if !h.dnat.Closed() {
		t.Error("Cleanup left the map's socket open")
	}
	if err := Cleanup(context.Background(), WithRunner(h.ipt), WithDNATMap(&dnatmaptest.Fake{}), WithConntrack(h.ct)); err != nil {
		t.Fatalf("second Cleanup: %v", err)
	}
}

// heldRead lets a test hold a read-back after the map was read, so that changes can run between
// the read and its use.
type heldRead struct {
	*dnatmaptest.Fake
	mu   sync.Mutex
	hold chan struct{}
	read chan struct{}
}

func (h *heldRead) holdNext() (read, release chan struct{}) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.hold, h.read = make(chan struct{}), make(chan struct{})
	return h.read, h.hold
}

func (h *heldRead) Read(ctx context.Context, l dnatmap.Layout) (dnatmap.State, error) {
	st, err := h.Fake.Read(ctx, l)
	h.mu.Lock()
	hold, read := h.hold, h.read
	h.hold, h.read = nil, nil
	h.mu.Unlock()
	if hold != nil {
		close(read)
		<-hold
	}
	return st, err
}

func newHeldHarness(t *testing.T) (*harness, *heldRead) {
	t.Helper()
	h := &harness{ipt: iptablestest.New(), dnat: &dnatmaptest.Fake{}, ct: &fakeCleaner{},
		clk: &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}}
	held := &heldRead{Fake: h.dnat}
	h.plane = h.newPlane(t, Config{}, WithDNATMap(held))
	return h, held
}

// TestReadBackRunsBehindChanges: a due read-back does not hold up the changes that follow it;
// it repairs the drift it finds, and keeps what changes wrote meanwhile instead of taking the
// older read for drift (which would add those elements a second time, and be refused).
func TestReadBackRunsBehindChanges(t *testing.T) {
	h, held := newHeldHarness(t)
	ctx := context.Background()
	a := one(10500, "198.19.2.2:30000")
	sync1(t, h.plane, map[string][]Mapping{"a": a})
	h.dnat.DeleteElement(10500)

	h.clk.t = h.clk.t.Add(DefaultResyncInterval)
	read, release := held.holdNext()
	if err := h.plane.Sync(ctx, map[string][]Mapping{"a": a}); err != nil {
		t.Fatal(err)
	}
	<-read
	b := one(10501, "198.19.2.3:30000")
	if err := h.plane.Sync(ctx, map[string][]Mapping{"a": a, "b": b}); err != nil {
		t.Fatal(err)
	}
	close(release)
	if err := h.plane.Settle(ctx); err != nil {
		t.Fatal(err)
	}
	if got := h.dnat.Elements(); !maps.Equal(got, elems(10500, "198.19.2.2:30000", 10501, "198.19.2.3:30000")) {
		t.Fatalf("map = %v", got)
	}
	if n := len(h.dnat.Applied()); n != 3 {
		t.Fatalf("%d transactions, want 3 (first, 10501, the repair)", n)
	}
}

// TestReadBackDroppedWhenLayoutChanged: a read-back overlapping a change that rewrote the
// table's layout is not used; the next Sync reads again, and that one repairs.
func TestReadBackDroppedWhenLayoutChanged(t *testing.T) {
	h, held := newHeldHarness(t)
	ctx := context.Background()
	a := one(10500, "198.19.2.2:30000")
	want := map[string][]Mapping{"a": a}
	sync1(t, h.plane, want)
	h.clk.t = h.clk.t.Add(DefaultResyncInterval)
	read, release := held.holdNext()
	if err := h.plane.Sync(ctx, want); err != nil {
		t.Fatal(err)
	}
	<-read
	// Flushed after the read: the read saw the element, the failed change that follows reads
	// the kernel back in front of itself and rewrites the layout.
	h.dnat.Drop()
	if err := h.plane.Sync(ctx, map[string][]Mapping{"a": a, "b": one(10501, "198.19.2.3:30000")}); err != nil {
		t.Fatal(err)
	}
	close(release)
	if err := h.plane.Settle(ctx); err != nil {
		t.Fatal(err)
	}
	if got := h.dnat.Elements(); !maps.Equal(got, elems(10500, "198.19.2.2:30000", 10501, "198.19.2.3:30000")) {
		t.Fatalf("map = %v", got)
	}
}

// heldApply holds the map's transactions while hold is set, after telling entered.
type heldApply struct {
	*dnatmaptest.Fake
	entered, hold chan struct{}
	once          sync.Once
}

func (h *heldApply) Apply(ctx context.Context, c dnatmap.Change) error {
	h.once.Do(func() {
		close(h.entered)
		<-h.hold
	})
	return h.Fake.Apply(ctx, c)
}

func TestAssignDoesNotWaitForAChange(t *testing.T) {
	held := &heldApply{Fake: &dnatmaptest.Fake{}, entered: make(chan struct{}), hold: make(chan struct{})}
	p, err := New(Config{PublicIP: publicIP, Ports: testPorts},
		WithRunner(iptablestest.New()), WithDNATMap(held), WithConntrack(&fakeCleaner{}))
	if err != nil {
		t.Fatal(err)
	}
	synced := make(chan error, 1)
	go func() {
		synced <- p.Sync(context.Background(), map[string][]Mapping{"a": one(10500, "198.19.2.2:30000")})
	}()
	<-held.entered
	// The change is in the kernel's hands: the planner's calls go on meanwhile.
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

func TestCloseClosesTheMap(t *testing.T) {
	h := newHarness(t, Config{})
	sync1(t, h.plane, map[string][]Mapping{"a": one(10500, "198.19.2.2:30000")})
	h.plane.Close()
	h.plane.Close()
	if !h.dnat.Closed() {
		t.Fatal("map's socket left open")
	}
	if err := h.plane.Sync(context.Background(), nil); err == nil {
		t.Fatal("Sync after Close succeeded")
	}
	if got := h.dnat.Elements(); len(got) != 1 {
		t.Fatalf("Close changed the map: %v", got)
	}
}

// TestFlushOwedAfterAFailedSync: a change that reached the kernel in a sync that then failed
// (the iptables rules after it) still has its ports' entries deleted by the next sync, which
// finds the map already right and plans nothing for them.
func TestFlushOwedAfterAFailedSync(t *testing.T) {
	for name, start := range map[string]func(h *harness){
		"re-pointed port": func(h *harness) {
			sync1(t, h.plane, map[string][]Mapping{"a": one(10500, "198.19.2.2:30000")})
			h.ipt.SetRules("filter", ChainForward) // the next sync needs a restore
		},
		"legacy rule of another backend": func(h *harness) {
			h.ipt.SetRules("nat", legacyShardPrefix+"10496",
				`-d 198.18.1.1/32 -p udp -m udp --dport 10500 -m comment --comment "lg:10500" -j DNAT --to-destination 198.19.2.2:30000`)
		},
	} {
		t.Run(name, func(t *testing.T) {
			h := newHarness(t, Config{})
			h.plane = h.newPlane(t, Config{}, WithResyncInterval(0))
			start(h)
			h.ipt.FailRestore = errors.New("iptables-restore: another app holds the xtables lock")
			// Both tries fail: the map's change went through before the restore each time.
			if err := h.plane.Sync(context.Background(), map[string][]Mapping{"a": one(10500, "198.19.2.9:30000")}); err == nil {
				t.Fatal("Sync hid the failed restore")
			}
			h.ipt.FailRestore = nil
			calls := h.ct.count()
			sync1(t, h.plane, map[string][]Mapping{"a": one(10500, "198.19.2.9:30000")})
			if got := h.ct.since(calls); !slices.Contains(got, 10500) {
				t.Fatalf("conntrack deleted %v after the failed sync, want 10500", got)
			}
			if got := h.dnat.Elements(); !maps.Equal(got, elems(10500, "198.19.2.9:30000")) {
				t.Fatalf("map = %v", got)
			}
		})
	}
}

// gatedCleaner holds the first deletion that includes port gate until release is closed, and
// records which deletions of gate ran, in order: "background" ones carry the flusher's deadline.
type gatedCleaner struct {
	fakeCleaner
	gate             uint16
	entered, release chan struct{}
	once             sync.Once
	order            []string
}

func (g *gatedCleaner) DeleteUDP(ctx context.Context, dst netip.Addr, ports []uint16) error {
	if !slices.Contains(ports, g.gate) || g.release == nil {
		return g.fakeCleaner.DeleteUDP(ctx, dst, ports)
	}
	held := false
	g.once.Do(func() { held = true })
	if held {
		close(g.entered)
		<-g.release
	}
	kind := "foreground"
	if _, ok := ctx.Deadline(); ok {
		kind = "background"
	}
	g.mu.Lock()
	g.order = append(g.order, kind)
	g.mu.Unlock()
	return g.fakeCleaner.DeleteUDP(ctx, dst, ports)
}

// TestReaddedPortWaitsForTheDeletionUnderWay: a port forwarded again while the background
// deletion of its entries is under way has its own deletion done after that one, never before,
// so the background one cannot delete the new flow's entry.
func TestReaddedPortWaitsForTheDeletionUnderWay(t *testing.T) {
	h := newHarness(t, Config{})
	g := &gatedCleaner{gate: 10500}
	h.plane = h.newPlane(t, Config{}, WithConntrack(g))
	want := map[string][]Mapping{"a": one(10500, "198.19.2.2:30000")}
	sync1(t, h.plane, want)
	g.entered, g.release = make(chan struct{}), make(chan struct{})
	if err := h.plane.Sync(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	<-g.entered
	synced := make(chan error, 1)
	go func() { synced <- h.plane.Sync(context.Background(), want) }()
	// Without the wait, the re-adding Sync would delete and return at once. (Correct code never
	// returns here, however long this lasts: it is no timing assertion.)
	select {
	case err := <-synced:
		t.Fatalf("the re-adding Sync returned (%v) while the background deletion was under way", err)
	case <-time.After(100 * time.Millisecond):
	}
	close(g.release)
	if err := <-synced; err != nil {
		t.Fatal(err)
	}
	if err := h.plane.Settle(context.Background()); err != nil {
		t.Fatal(err)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if !slices.Equal(g.order, []string{"background", "foreground"}) {
		t.Fatalf("deletions of 10500: %v, want the background one, then the re-added port's", g.order)
	}
}

// TestCloseStopsTheBackgroundDeletions: Close does not wait out a failing deletion's retries.
func TestCloseStopsTheBackgroundDeletions(t *testing.T) {
	h := newHarness(t, Config{})
	h.plane = h.newPlane(t, Config{}, func(o *options) { o.flushRetry = time.Hour })
	h.ct.setErr(errors.New("netlink: operation not permitted"))
	if err := h.plane.Sync(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	closed := make(chan struct{})
	go func() {
		h.plane.Close()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(time.Minute):
		t.Fatal("Close waited for the hour-long retry")
	}
	if err := h.plane.Settle(context.Background()); err == nil {
		t.Fatal("Settle after Close: want the deletion's failure")
	}
}
