package dnatmap_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/livegate/livegate/edgeproxy/internal/mediaplane/internal/dnatmap"
	"github.com/livegate/livegate/edgeproxy/internal/mediaplane/internal/netlab"
	"github.com/livegate/livegate/edgeproxy/internal/portalloc"
)

var netnsSeq atomic.Int32

// kernelIn opens a Kernel in a throwaway namespace, or skips the test without root or nft.
func kernelIn(t *testing.T) (*dnatmap.Kernel, string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
	for _, bin := range []string{"ip", "nft"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("needs %s: %v", bin, err)
		}
	}
	ns := fmt.Sprintf("lgdm%d-%d", os.Getpid(), netnsSeq.Add(1))
	run(t, "ip", "netns", "add", ns)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
			t.Logf("delete namespace %s: %v: %s", ns, err, out)
		}
	})
	return open(t, ns), ns
}

func open(t *testing.T, ns string) *dnatmap.Kernel {
	t.Helper()
	k, err := dnatmap.Open(dnatmap.WithNetns(ns))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := k.Close(); err != nil {
			t.Error(err)
		}
	})
	return k
}

func run(t *testing.T, argv ...string) string {
	t.Helper()
	out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(argv, " "), err, out)
	}
	return string(out)
}

func nft(t *testing.T, ns string, args ...string) string {
	t.Helper()
	return run(t, append([]string{"ip", "netns", "exec", ns, "nft"}, args...)...)
}

var layout = dnatmap.Layout{Public: netip.MustParseAddr("198.18.1.1"), Ports: portalloc.Range{First: 10500, Last: 20000}}

func ruleset(public string, ports string) string {
	rule := fmt.Sprintf("ip daddr %s udp dport %s dnat ip to udp dport map @media", public, ports)
	return fmt.Sprintf(`table ip livegate {
	map media {
		type inet_service : ipv4_addr . inet_service
		size 65536
	}

	chain prerouting {
		type nat hook prerouting priority dstnat - 10; policy accept;
		%s
	}

	chain output {
		type nat hook output priority -110; policy accept;
		%s
	}
}
`, rule, rule)
}

// handles lists the handles of the table's objects, which a kernel change would renumber.
func handles(t *testing.T, ns string) string {
	t.Helper()
	var doc struct {
		Nftables []map[string]struct {
			Name   string `json:"name"`
			Chain  string `json:"chain"`
			Handle int    `json:"handle"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(nft(t, ns, "-j", "list", "table", "ip", "livegate")), &doc); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, obj := range doc.Nftables {
		for kind, o := range obj {
			if kind != "metainfo" {
				out = append(out, fmt.Sprintf("%s %s%s #%d", kind, o.Name, o.Chain, o.Handle))
			}
		}
	}
	return strings.Join(out, ", ")
}

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

func TestKernelEnsureCreatesTheRuleset(t *testing.T) {
	k, ns := kernelIn(t)
	ctx := context.Background()
	elems, err := k.Ensure(ctx, layout)
	if err != nil {
		t.Fatal(err)
	}
	if len(elems) != 0 {
		t.Fatalf("elements of a new map = %v", elems)
	}
	if got, want := nft(t, ns, "list", "table", "ip", "livegate"), ruleset("198.18.1.1", "10500-20000"); got != want {
		t.Fatalf("ruleset:\n%s\nwant:\n%s", got, want)
	}
	st, err := k.Read(ctx, layout)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Current || len(st.Elements) != 0 {
		t.Fatalf("Read after Ensure = %+v, want current and empty", st)
	}
	other := layout
	other.Ports.Last = 19999
	if st, err := k.Read(ctx, other); err != nil || st.Current || st.Layout != layout {
		t.Fatalf("Read of another layout = %+v, %v; want not current, and the layout found", st, err)
	}
	if st, err := k.Read(ctx, dnatmap.Layout{}); err != nil || st.Current || st.Layout != layout {
		t.Fatalf("Read without a layout = %+v, %v; want the layout found", st, err)
	}
}

func TestKernelEnsureTwiceChangesNothing(t *testing.T) {
	k, ns := kernelIn(t)
	ctx := context.Background()
	if _, err := k.Ensure(ctx, layout); err != nil {
		t.Fatal(err)
	}
	if err := k.Apply(ctx, dnatmap.Change{Set: map[uint16]netip.AddrPort{10500: ap("198.19.2.2:30000")}}); err != nil {
		t.Fatal(err)
	}
	before := handles(t, ns)
	// A second Kernel, as after a restart: nothing it remembers can make the call a no-op.
	elems, err := open(t, ns).Ensure(ctx, layout)
	if err != nil {
		t.Fatal(err)
	}
	if want := map[uint16]netip.AddrPort{10500: ap("198.19.2.2:30000")}; !maps.Equal(elems, want) {
		t.Fatalf("elements = %v, want %v", elems, want)
	}
	if after := handles(t, ns); after != before {
		t.Fatalf("handles after a second Ensure = %s, before %s", after, before)
	}
	// A changed table gets new handles: the comparison above would see a change.
	other := layout
	other.Ports.First = 10600
	if _, err := k.Ensure(ctx, other); err != nil {
		t.Fatal(err)
	}
	if after := handles(t, ns); after == before {
		t.Fatalf("handles after a changed Ensure = %s, unchanged", after)
	}
}

func TestKernelEnsureReplacesRulesKeepsElements(t *testing.T) {
	k, ns := kernelIn(t)
	ctx := context.Background()
	if _, err := k.Ensure(ctx, layout); err != nil {
		t.Fatal(err)
	}
	want := map[uint16]netip.AddrPort{10500: ap("198.19.2.2:30000"), 10501: ap("198.19.2.3:30001")}
	if err := k.Apply(ctx, dnatmap.Change{Set: want}); err != nil {
		t.Fatal(err)
	}
	for _, l := range []dnatmap.Layout{
		{Public: netip.MustParseAddr("198.18.7.7"), Ports: portalloc.Range{First: 10500, Last: 20000}},
		{Public: netip.MustParseAddr("198.18.7.7"), Ports: portalloc.Range{First: 10500, Last: 10500}},
	} {
		elems, err := k.Ensure(ctx, l)
		if err != nil {
			t.Fatal(err)
		}
		if !maps.Equal(elems, want) {
			t.Fatalf("elements after Ensure(%v) = %v, want %v", l, elems, want)
		}
		ports := l.Ports.String()
		if l.Ports.First == l.Ports.Last {
			ports = fmt.Sprint(l.Ports.First)
		}
		got := nft(t, ns, "list", "table", "ip", "livegate")
		if wantText := ruleset(l.Public.String(), ports); !strings.Contains(got, strings.SplitN(wantText, "\n\n", 2)[1]) {
			t.Fatalf("ruleset after Ensure(%v):\n%s\nwant the chains of:\n%s", l, got, wantText)
		}
		if st, err := k.Read(ctx, l); err != nil || !st.Current || !maps.Equal(st.Elements, want) {
			t.Fatalf("Read(%v) = %+v, %v", l, st, err)
		}
		if st, err := k.Read(ctx, layout); err != nil || st.Current {
			t.Fatalf("Read of the old layout = %+v, %v; want not current", st, err)
		}
	}
}

func TestKernelEnsureRepairs(t *testing.T) {
	k, ns := kernelIn(t)
	ctx := context.Background()
	for _, tc := range []struct {
		name, script string
		keeps        bool // the elements survive
	}{
		{"extra rule", "add rule ip livegate prerouting udp dport 1 accept", true},
		{"missing chain", "delete chain ip livegate output", true},
		{"missing rule", "flush chain ip livegate output", true},
		{"extra chain", "add chain ip livegate other { type nat hook input priority 0; }", true},
		{"wrong priority", "delete chain ip livegate output; add chain ip livegate output { type nat hook output priority -100; }", true},
		{"policy drop", "delete chain ip livegate output; add chain ip livegate output { type nat hook output priority -110; policy drop; }", true},
		{"dormant table", "add table ip livegate { flags dormant; }", true},
		{"map of another type", "flush table ip livegate; delete map ip livegate media; add map ip livegate media { type inet_service : ipv4_addr; elements = { 1 : 198.19.2.2 } }", false},
		{"map without a size", "flush table ip livegate; delete map ip livegate media; add map ip livegate media { type inet_service : ipv4_addr . inet_service; }", false},
		{"set instead of map", "flush table ip livegate; delete map ip livegate media; add set ip livegate media { type inet_service; elements = { 1 } }", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := k.Ensure(ctx, layout); err != nil {
				t.Fatal(err)
			}
			if err := k.Remove(ctx); err != nil {
				t.Fatal(err)
			}
			if _, err := k.Ensure(ctx, layout); err != nil {
				t.Fatal(err)
			}
			elems := map[uint16]netip.AddrPort{10500: ap("198.19.2.2:30000")}
			if err := k.Apply(ctx, dnatmap.Change{Set: elems}); err != nil {
				t.Fatal(err)
			}
			run(t, "ip", "netns", "exec", ns, "nft", tc.script)
			st, err := k.Read(ctx, layout)
			if err != nil {
				t.Fatal(err)
			}
			if st.Current {
				t.Fatal("Read reports the damaged table current")
			}
			got, err := k.Ensure(ctx, layout)
			if err != nil {
				t.Fatal(err)
			}
			if !tc.keeps {
				elems = map[uint16]netip.AddrPort{}
			}
			if !maps.Equal(got, elems) {
				t.Fatalf("elements after the repair = %v, want %v", got, elems)
			}
			if st, err := k.Read(ctx, layout); err != nil || !st.Current || !maps.Equal(st.Elements, elems) {
				t.Fatalf("Read after the repair = %+v, %v", st, err)
			}
			text := nft(t, ns, "list", "table", "ip", "livegate")
			if !tc.keeps {
				if want := ruleset("198.18.1.1", "10500-20000"); text != want {
					t.Fatalf("ruleset after the repair:\n%s\nwant:\n%s", text, want)
				}
			} else if !strings.Contains(text, "10500 : 198.19.2.2 . 30000") || strings.Count(text, "dnat ip to") != 2 || strings.Contains(text, "dormant") || strings.Contains(text, "other") {
				t.Fatalf("ruleset after the repair:\n%s", text)
			}
		})
	}
}

func TestKernelApply(t *testing.T) {
	k, ns := kernelIn(t)
	ctx := context.Background()
	if _, err := k.Ensure(ctx, layout); err != nil {
		t.Fatal(err)
	}
	if err := k.Apply(ctx, dnatmap.Change{}); err != nil {
		t.Fatalf("empty change: %v", err)
	}
	want := map[uint16]netip.AddrPort{}
	errIPv6 := errors.New("not IPv4")
	steps := []struct {
		name   string
		change dnatmap.Change
		err    error // nil: committed
	}{
		{"add", dnatmap.Change{Set: map[uint16]netip.AddrPort{10500: ap("198.19.2.2:30000"), 10501: ap("198.19.2.2:30001"), 20000: ap("198.19.2.3:65535")}}, nil},
		{"repoint", dnatmap.Change{Delete: []uint16{10500}, Set: map[uint16]netip.AddrPort{10500: ap("198.19.2.3:40000")}}, nil},
		{"delete", dnatmap.Change{Delete: []uint16{10501}}, nil},
		{"delete absent", dnatmap.Change{Delete: []uint16{20000, 10501}, Set: map[uint16]netip.AddrPort{10502: ap("198.19.2.2:1")}}, fs.ErrNotExist},
		{"delete twice", dnatmap.Change{Delete: []uint16{20000, 20000}}, fs.ErrNotExist},
		{"add present, same backend", dnatmap.Change{Delete: []uint16{20000}, Set: map[uint16]netip.AddrPort{10500: ap("198.19.2.3:40000")}}, fs.ErrExist},
		{"add present, other backend", dnatmap.Change{Set: map[uint16]netip.AddrPort{10502: ap("198.19.2.2:1"), 10500: ap("198.19.2.2:2")}}, fs.ErrExist},
		{"not IPv4", dnatmap.Change{Set: map[uint16]netip.AddrPort{10502: ap("[2001:db8::1]:1")}}, errIPv6},
		{"mapped IPv4", dnatmap.Change{Set: map[uint16]netip.AddrPort{10502: ap("[::ffff:198.19.2.2]:1")}}, nil},
	}
	for _, s := range steps {
		err := k.Apply(ctx, s.change)
		switch {
		case s.err == nil && err != nil:
			t.Fatalf("%s: %v", s.name, err)
		case s.err == errIPv6 && (err == nil || !strings.Contains(err.Error(), "not IPv4")),
			s.err != nil && s.err != errIPv6 && !errors.Is(err, s.err):
			t.Fatalf("%s: Apply error %v, want %v", s.name, err, s.err)
		case err != nil:
			t.Logf("%s: %v", s.name, err)
			if !strings.HasPrefix(err.Error(), "dnatmap: apply") {
				t.Fatalf("%s: error %q lacks context", s.name, err)
			}
		default:
			for _, p := range s.change.Delete {
				delete(want, p)
			}
			for p, b := range s.change.Set {
				want[p] = netip.AddrPortFrom(b.Addr().Unmap(), b.Port())
			}
		}
		st, err := k.Read(ctx, layout)
		if err != nil {
			t.Fatal(err)
		}
		if !st.Current || !maps.Equal(st.Elements, want) {
			t.Fatalf("%s: Read = %+v, want elements %v", s.name, st, want)
		}
	}
	if text := nft(t, ns, "list", "map", "ip", "livegate", "media"); !strings.Contains(text, "10500 : 198.19.2.3 . 40000") || !strings.Contains(text, "20000 : 198.19.2.3 . 65535") {
		t.Fatalf("map as nft lists it:\n%s", text)
	}
}

func TestKernelApplyWithoutTable(t *testing.T) {
	k, _ := kernelIn(t)
	if err := k.Apply(context.Background(), dnatmap.Change{Set: map[uint16]netip.AddrPort{10500: ap("198.19.2.2:1")}}); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Apply without the table: %v, want ErrNotExist", err)
	}
}

func TestKernelReadMissingAndRemove(t *testing.T) {
	k, ns := kernelIn(t)
	ctx := context.Background()
	st, err := k.Read(ctx, layout)
	if err != nil {
		t.Fatal(err)
	}
	if st.Current || st.Elements == nil || len(st.Elements) != 0 {
		t.Fatalf("Read of a missing table = %+v, want not current and an empty map", st)
	}
	if err := k.Remove(ctx); err != nil {
		t.Fatalf("Remove of a missing table: %v", err)
	}
	// Another table of that name in another family is not livegate's.
	nft(t, ns, "add", "table", "inet", "livegate")
	if _, err := k.Ensure(ctx, layout); err != nil {
		t.Fatal(err)
	}
	if err := k.Remove(ctx); err != nil {
		t.Fatal(err)
	}
	if got := nft(t, ns, "list", "tables"); got != "table inet livegate\n" {
		t.Fatalf("tables after Remove = %q", got)
	}
	if st, err := k.Read(ctx, layout); err != nil || st.Current {
		t.Fatalf("Read after Remove = %+v, %v", st, err)
	}
}

func TestKernelContextAndClose(t *testing.T) {
	k, _ := kernelIn(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := k.Ensure(ctx, layout); err == nil {
		t.Fatal("Ensure with a cancelled context succeeded")
	}
	if err := k.Apply(ctx, dnatmap.Change{Delete: []uint16{1}}); err == nil {
		t.Fatal("Apply with a cancelled context succeeded")
	}
	if err := k.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := k.Read(context.Background(), layout); err == nil {
		t.Fatal("Read after Close succeeded")
	}
}

func TestKernelManyElements(t *testing.T) {
	k, ns := kernelIn(t)
	ctx := context.Background()
	if _, err := k.Ensure(ctx, layout); err != nil {
		t.Fatal(err)
	}
	want := map[uint16]netip.AddrPort{}
	for p := layout.Ports.First; p < layout.Ports.First+9500; p++ {
		want[p] = netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 19, 2, byte(2 + p%2)}), 30000+p%1000)
	}
	start := time.Now()
	if err := k.Apply(ctx, dnatmap.Change{Set: want}); err != nil {
		t.Fatal(err)
	}
	applied := time.Since(start)
	start = time.Now()
	st, err := k.Read(ctx, layout)
	if err != nil {
		t.Fatal(err)
	}
	read := time.Since(start)
	if !st.Current || !maps.Equal(st.Elements, want) {
		t.Fatalf("Read returned %d elements, current %v; want %d", len(st.Elements), st.Current, len(want))
	}
	start = time.Now()
	if err := k.Apply(ctx, dnatmap.Change{Delete: []uint16{10500}, Set: map[uint16]netip.AddrPort{10500: ap("198.19.2.3:1")}}); err != nil {
		t.Fatal(err)
	}
	t.Logf("apply of 9,500 elements %v, read of them %v, one re-point %v", applied, read, time.Since(start))
	if got := strings.Count(nft(t, ns, "list", "map", "ip", "livegate", "media"), " : 198.19.2."); got != 9500 {
		t.Fatalf("nft lists %d elements, want 9500", got)
	}
}

func TestKernelTraffic(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
	lab := netlab.New(t)
	lab.Exec(t, lab.Edge, "iptables", "-A", "FORWARD", "-j", "ACCEPT")
	// The node has no route beyond its link: replies come back only to the edge's inner side.
	lab.Exec(t, lab.Edge, "iptables", "-t", "nat", "-A", "POSTROUTING", "-d", "198.19.2.0/24", "-j", "MASQUERADE")
	lab.StartEcho(t, "node-a", netip.AddrPortFrom(netlab.NodeA, 30000))
	lab.StartEcho(t, "node-b", netip.AddrPortFrom(netlab.NodeB, 30000))
	k := open(t, lab.Edge)
	ctx := context.Background()
	l := dnatmap.Layout{Public: netlab.PublicAddr, Ports: layout.Ports}
	if _, err := k.Ensure(ctx, l); err != nil {
		t.Fatal(err)
	}
	const port = 10600
	if err := k.Apply(ctx, dnatmap.Change{Set: map[uint16]netip.AddrPort{port: netip.AddrPortFrom(netlab.NodeA, 30000)}}); err != nil {
		t.Fatal(err)
	}
	client := lab.NewClient(t)
	if got := client.Ask(t, port, "one", 2*time.Second); got != "node-a:one" {
		t.Fatalf("answer = %q, want node-a:one", got)
	}
	if got := lab.NewClientIn(t, lab.Edge).Ask(t, port, "local", 2*time.Second); got != "node-a:local" {
		t.Fatalf("answer to the edge itself = %q, want node-a:local", got)
	}
	start := time.Now()
	if err := k.Apply(ctx, dnatmap.Change{Delete: []uint16{port}, Set: map[uint16]netip.AddrPort{port: netip.AddrPortFrom(netlab.NodeB, 30000)}}); err != nil {
		t.Fatal(err)
	}
	t.Logf("re-point of one element: %v", time.Since(start))
	// A new flow takes the new element; the old one keeps its conntrack entry.
	if got := lab.NewClient(t).Ask(t, port, "two", 2*time.Second); got != "node-b:two" {
		t.Fatalf("answer to a new flow = %q, want node-b:two", got)
	}
	if got := client.Ask(t, port, "three", 2*time.Second); got != "node-a:three" {
		t.Fatalf("answer to the old flow = %q, want node-a:three", got)
	}
	if got := lab.NewClient(t).Ask(t, port+1, "unmapped", 300*time.Millisecond); got != "" {
		t.Fatalf("unmapped port answered %q", got)
	}
}
