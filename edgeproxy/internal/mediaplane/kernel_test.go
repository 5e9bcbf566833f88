package mediaplane_test

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/livegate/livegate/edgeproxy/internal/conntrack"
	"github.com/livegate/livegate/edgeproxy/internal/iptables"
	"github.com/livegate/livegate/edgeproxy/internal/mediaplane"
	"github.com/livegate/livegate/edgeproxy/internal/mediaplane/internal/dnatmap"
	"github.com/livegate/livegate/edgeproxy/internal/mediaplane/internal/netlab"
	"github.com/livegate/livegate/edgeproxy/internal/portalloc"
)

const answerWait = 2 * time.Second

// countingRunner counts restore batches so a test can prove that nothing was written.
type countingRunner struct {
	iptables.Runner
	restores atomic.Int32
}

func (c *countingRunner) Restore(ctx context.Context, payload []byte) error {
	c.restores.Add(1)
	return c.Runner.Restore(ctx, payload)
}

// countingMap counts the calls that may write the map (an Ensure that finds the layout current
// writes nothing, so it is counted only by what follows it).
type countingMap struct {
	mediaplane.DNATMap
	writes atomic.Int32
}

func (c *countingMap) Apply(ctx context.Context, ch dnatmap.Change) error {
	c.writes.Add(1)
	return c.DNATMap.Apply(ctx, ch)
}

func (c *countingMap) Ensure(ctx context.Context, l dnatmap.Layout) (map[uint16]netip.AddrPort, error) {
	c.writes.Add(1)
	return c.DNATMap.Ensure(ctx, l)
}

func newPlane(t *testing.T, lab *netlab.Lab, cfg mediaplane.Config, opts ...mediaplane.Option) *mediaplane.Plane {
	t.Helper()
	cfg.PublicIP = netlab.PublicAddr
	opts = append([]mediaplane.Option{mediaplane.WithNetns(lab.Edge), mediaplane.WithLogger(zerolog.New(zerolog.NewTestWriter(t)))}, opts...)
	p, err := mediaplane.New(cfg, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

func openMap(t *testing.T, lab *netlab.Lab) *dnatmap.Kernel {
	t.Helper()
	k, err := dnatmap.Open(dnatmap.WithNetns(lab.Edge))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { k.Close() })
	return k
}

// mapElements is the DNAT map of the edge, read on a socket of its own.
func mapElements(t *testing.T, lab *netlab.Lab) map[uint16]netip.AddrPort {
	t.Helper()
	st, err := openMap(t, lab).Read(context.Background(), dnatmap.Layout{})
	if err != nil {
		t.Fatal(err)
	}
	return st.Elements
}

func ourRules(t *testing.T, lab *netlab.Lab) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	for _, table := range []string{"nat", "filter"} {
		rs, err := iptables.ParseSave([]byte(lab.Exec(t, lab.Edge, "iptables-save", "-t", table)))
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rs.Table(table).Rules {
			if strings.Contains(r.Spec, "LIVEGATE") || strings.HasPrefix(r.Chain, "LIVEGATE") {
				out[r.Chain] = append(out[r.Chain], r.Spec)
			}
		}
	}
	return out
}

// twoNodes is a lab with an echo on each node's port 30000 and a client: the start of the tests
// that move a mapping between the nodes. It returns node-a's echo.
func twoNodes(t *testing.T) (*netlab.Lab, *netlab.Echo, *netlab.Client) {
	t.Helper()
	lab := netlab.New(t)
	echoA := lab.StartEcho(t, "node-a", netip.AddrPortFrom(netlab.NodeA, 30000))
	lab.StartEcho(t, "node-b", netip.AddrPortFrom(netlab.NodeB, 30000))
	return lab, echoA, lab.NewClient(t)
}

func TestKernelForwardRemoveReadd(t *testing.T) {
	lab, echoA, client := twoNodes(t)
	ctx := context.Background()

	plane := newPlane(t, lab, mediaplane.Config{SNAT: true, Quarantine: time.Minute})
	backendA := netip.AddrPortFrom(netlab.NodeA, 30000)
	ports, err := plane.Assign("inst-a", []netip.AddrPort{backendA}, nil)
	if err != nil {
		t.Fatal(err)
	}
	port := ports[0]
	if err := plane.Sync(ctx, map[string][]mediaplane.Mapping{"inst-a": {{PublicPort: port, Backend: backendA}}}); err != nil {
		t.Fatal(err)
	}

	if got := client.Ask(t, port, "hello", answerWait); got != "node-a:hello" {
		t.Fatalf("answer through public port %d = %q, want node-a:hello", port, got)
	}
	srcs := echoA.Sources()
	if len(srcs) == 0 || srcs[0].Addr() != netlab.EdgeInner {
		t.Fatalf("node saw sources %v, want the edge %s (SNAT)", srcs, netlab.EdgeInner)
	}
	if got := lab.Conntrack(t, port); len(got) != 1 {
		t.Fatalf("conntrack entries for %d = %q, want one", port, got)
	}

	local := lab.NewClientIn(t, lab.Edge)
	if got := local.Ask(t, port, "from-the-edge", answerWait); got != "node-a:from-the-edge" {
		t.Fatalf("answer to a datagram sent from the edge host itself = %q", got)
	}

	plane.Release("inst-a")
	if err := plane.Sync(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if err := plane.Settle(ctx); err != nil {
		t.Fatal(err)
	}
	if got := mapElements(t, lab); len(got) != 0 {
		t.Fatalf("map after removal = %v, want empty", got)
	}
	if got := lab.Conntrack(t, port); len(got) != 0 {
		t.Fatalf("conntrack entries for %d after removal = %q, want none", port, got)
	}
	if got := client.Ask(t, port, "after-removal", 300*time.Millisecond); got != "" {
		t.Fatalf("removed port %d still answers %q", port, got)
	}
	if got := lab.NewClient(t).Ask(t, port, "new-flow", 300*time.Millisecond); got != "" {
		t.Fatalf("removed port %d answers a new flow: %q", port, got)
	}

	// The client kept sending while the port was unrouted, which left a non-NAT conntrack
	// entry behind; the new mapping must not be shadowed by it. (The port is mapped directly
	// here: the allocator would keep it in quarantine from other routes for a minute.)
	backendB := netip.AddrPortFrom(netlab.NodeB, 30000)
	if err := plane.Sync(ctx, map[string][]mediaplane.Mapping{"inst-b": {{PublicPort: port, Backend: backendB}}}); err != nil {
		t.Fatal(err)
	}
	if err := plane.Settle(ctx); err != nil {
		t.Fatal(err)
	}
	if got := client.Ask(t, port, "again", answerWait); got != "node-b:again" {
		t.Fatalf("answer after re-adding port %d = %q, want node-b:again", port, got)
	}
	if got := mapElements(t, lab); !maps.Equal(got, map[uint16]netip.AddrPort{port: backendB}) {
		t.Fatalf("map after re-adding = %v", got)
	}
}

func TestKernelSwitchBackendKeepsPort(t *testing.T) {
	lab, _, client := twoNodes(t)
	ctx := context.Background()
	plane := newPlane(t, lab, mediaplane.Config{SNAT: true})
	const port = 10600
	for i, b := range []netip.Addr{netlab.NodeA, netlab.NodeB, netlab.NodeA} {
		if err := plane.Sync(ctx, map[string][]mediaplane.Mapping{"x": {{PublicPort: port, Backend: netip.AddrPortFrom(b, 30000)}}}); err != nil {
			t.Fatal(err)
		}
		// The flow keeps its entry, and so its old backend, until the deletion has run.
		if err := plane.Settle(ctx); err != nil {
			t.Fatal(err)
		}
		want := map[netip.Addr]string{netlab.NodeA: "node-a", netlab.NodeB: "node-b"}[b]
		msg := fmt.Sprintf("m%d", i)
		if got := client.Ask(t, port, msg, answerWait); got != want+":"+msg {
			t.Fatalf("step %d: answer %q, want %s:%s", i, got, want, msg)
		}
	}
}

func TestKernelWithoutSNAT(t *testing.T) {
	lab := netlab.New(t)
	echo := lab.StartEcho(t, "node-a", netip.AddrPortFrom(netlab.NodeA, 30000))
	lab.Exec(t, lab.Node, "ip", "route", "add", "198.18.1.0/24", "via", netlab.EdgeInner.String())
	client := lab.NewClient(t)
	plane := newPlane(t, lab, mediaplane.Config{SNAT: false})
	if err := plane.Sync(context.Background(), map[string][]mediaplane.Mapping{"x": {{PublicPort: 10500, Backend: netip.AddrPortFrom(netlab.NodeA, 30000)}}}); err != nil {
		t.Fatal(err)
	}
	if got := client.Ask(t, 10500, "direct", answerWait); got != "node-a:direct" {
		t.Fatalf("answer = %q", got)
	}
	if srcs := echo.Sources(); len(srcs) == 0 || srcs[0].Addr() != netlab.ClientAddr {
		t.Fatalf("node saw %v, want the client's own address without SNAT", srcs)
	}
	if rules := ourRules(t, lab)[mediaplane.ChainSNAT]; len(rules) != 0 {
		t.Fatalf("SNAT rules with SNAT off: %q", rules)
	}
}

func TestKernelRestartKeepsMappingsAndFlows(t *testing.T) {
	lab := netlab.New(t)
	lab.StartEcho(t, "node-a", netip.AddrPortFrom(netlab.NodeA, 30000))
	lab.StartEcho(t, "node-b", netip.AddrPortFrom(netlab.NodeB, 30001))
	ctx := context.Background()
	cfg := mediaplane.Config{SNAT: true, Quarantine: time.Minute}

	backends := []netip.AddrPort{netip.AddrPortFrom(netlab.NodeA, 30000), netip.AddrPortFrom(netlab.NodeB, 30001)}
	first := newPlane(t, lab, cfg)
	ports, err := first.Assign("inst-a", backends, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]mediaplane.Mapping{"inst-a": {{PublicPort: ports[0], Backend: backends[0]}, {PublicPort: ports[1], Backend: backends[1]}}}
	if err := first.Sync(ctx, want); err != nil {
		t.Fatal(err)
	}
	before := fmt.Sprint(ourRules(t, lab), mapElements(t, lab))

	client := lab.NewClient(t)
	var (
		stop     = make(chan struct{})
		done     = make(chan struct{})
		mu       sync.Mutex
		answered int
		missed   []string
	)
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			msg := fmt.Sprintf("flow-%d", i)
			got, err := client.Try(ports[0], msg, answerWait)
			mu.Lock()
			if err == nil && got == "node-a:"+msg {
				answered++
			} else {
				missed = append(missed, fmt.Sprintf("%s→%q (%v)", msg, got, err))
			}
			mu.Unlock()
			time.Sleep(5 * time.Millisecond)
		}
	}()
	waitAnswers := func(n int) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			mu.Lock()
			a := answered
			mu.Unlock()
			if a >= n {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("flow answered %d datagrams, want %d", a, n)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitAnswers(5)
	conntrackBefore := lab.Conntrack(t, ports[0])

	// A new process: new plane, ports recovered as preferred from livegate_endpoints.
	counter := &countingRunner{Runner: iptables.NewExec(iptables.WithNetns(lab.Edge))}
	dnat := openMap(t, lab)
	counted := &countingMap{DNATMap: dnat}
	second := newPlane(t, lab, cfg, mediaplane.WithRunner(counter), mediaplane.WithDNATMap(counted))
	if err := second.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	got, err := second.Assign("inst-a", backends, ports)
	if err != nil || fmt.Sprint(got) != fmt.Sprint(ports) {
		t.Fatalf("Assign after restart = %v, %v, want %v", got, err, ports)
	}
	if err := second.Sync(ctx, want); err != nil {
		t.Fatal(err)
	}
	if n, m := counter.restores.Load(), counted.writes.Load(); n != 0 || m != 0 {
		t.Fatalf("restart with the same state wrote %d iptables batches and %d map changes, want none", n, m)
	}
	mu.Lock()
	mark := answered
	mu.Unlock()
	waitAnswers(mark + 20)
	close(stop)
	<-done
	if len(missed) > 0 {
		t.Fatalf("flow lost datagrams across the restart: %v", missed)
	}
	if after := fmt.Sprint(ourRules(t, lab), mapElements(t, lab)); after != before {
		t.Fatalf("rules or map changed across restart:\nbefore %v\nafter  %v", before, after)
	}
	conntrackAfter := lab.Conntrack(t, ports[0])
	if len(conntrackBefore) != 1 || len(conntrackAfter) != 1 || connTuple(conntrackBefore[0]) != connTuple(conntrackAfter[0]) {
		t.Fatalf("flow's conntrack entry changed across restart:\nbefore %q\nafter  %q", conntrackBefore, conntrackAfter)
	}
	t.Logf("flow answered %d datagrams, none lost, across the restart", mark+20)
}

// connTuple keeps the addresses and ports of a conntrack -L line, dropping counters and timers.
func connTuple(line string) string {
	var keep []string
	for _, f := range strings.Fields(line) {
		if strings.HasPrefix(f, "src=") || strings.HasPrefix(f, "dst=") || strings.HasPrefix(f, "sport=") || strings.HasPrefix(f, "dport=") {
			keep = append(keep, f)
		}
	}
	return strings.Join(keep, " ")
}

// TestKernelLegacyRulesGiveWay: an edge of an earlier version left its per-port DNAT chains and
// a flow through them; the new plane puts the port in the map, removes the chains, and the flow
// goes on without losing a datagram to the change.
func TestKernelLegacyRulesGiveWay(t *testing.T) {
	lab, _, client := twoNodes(t)
	ctx := context.Background()
	backendA := netip.AddrPortFrom(netlab.NodeA, 30000)
	rules := fmt.Sprintf(`*nat
:LIVEGATE-DNAT - [0:0]
:LIVEGATE-DNAT-10496 - [0:0]
-I PREROUTING 1 -m comment --comment "livegate media DNAT" -j LIVEGATE-DNAT
-I OUTPUT 1 -m comment --comment "livegate media DNAT (local)" -j LIVEGATE-DNAT
-A LIVEGATE-DNAT -d %[1]s/32 -p udp -m udp --dport 10496:10623 -m comment --comment "lg:shard" -j LIVEGATE-DNAT-10496
-A LIVEGATE-DNAT-10496 -d %[1]s/32 -p udp -m udp --dport 10500 -m comment --comment "lg:10500" -j DNAT --to-destination %[2]s
-A LIVEGATE-DNAT-10496 -d %[1]s/32 -p udp -m udp --dport 10501 -m comment --comment "lg:10501" -j DNAT --to-destination %[2]s
COMMIT
*filter
:LIVEGATE-FWD - [0:0]
-I FORWARD 1 -m comment --comment "livegate media forward" -j LIVEGATE-FWD
-A LIVEGATE-FWD -p udp -m conntrack --ctstate DNAT --ctorigdst %[1]s --ctorigdstport 10500:20000 -m comment --comment "lg:fwd" -j ACCEPT
COMMIT
`, netlab.PublicAddr, backendA)
	if err := iptables.NewExec(iptables.WithNetns(lab.Edge)).Restore(ctx, []byte(rules)); err != nil {
		t.Fatal(err)
	}
	lab.Exec(t, lab.Edge, "iptables", "-t", "nat", "-A", "POSTROUTING", "-m", "conntrack", "--ctstate", "DNAT", "-j", "MASQUERADE")
	if got := client.Ask(t, 10500, "legacy", answerWait); got != "node-a:legacy" {
		t.Fatalf("answer through the legacy rule = %q", got)
	}
	plane := newPlane(t, lab, mediaplane.Config{SNAT: true, Quarantine: time.Minute})
	if err := plane.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	if got, err := plane.Assign("other", []netip.AddrPort{backendA}, nil); err != nil || got[0] == 10500 || got[0] == 10501 {
		t.Fatalf("a new route got %v, %v: a port the legacy rules forward", got, err)
	}
	plane.Release("other")
	if err := plane.Sync(ctx, map[string][]mediaplane.Mapping{"inst-a": {{PublicPort: 10500, Backend: backendA}}}); err != nil {
		t.Fatal(err)
	}
	if err := plane.Settle(ctx); err != nil {
		t.Fatal(err)
	}
	if save := lab.Exec(t, lab.Edge, "iptables-save", "-t", "nat"); strings.Contains(save, "LIVEGATE-DNAT") {
		t.Fatalf("legacy chains left:\n%s", save)
	}
	if got := mapElements(t, lab); !maps.Equal(got, map[uint16]netip.AddrPort{10500: backendA}) {
		t.Fatalf("map = %v", got)
	}
	if got := client.Ask(t, 10500, "moved", answerWait); got != "node-a:moved" {
		t.Fatalf("answer through the map = %q", got)
	}
	if got := lab.NewClient(t).Ask(t, 10501, "gone", 300*time.Millisecond); got != "" {
		t.Fatalf("port 10501, whose legacy rule went, answers %q", got)
	}
}

func TestKernel9500Routes(t *testing.T) {
	lab, _, client := twoNodes(t)
	ctx := context.Background()
	const routes = 9500
	plane := newPlane(t, lab, mediaplane.Config{SNAT: true, Ports: portalloc.Range{First: 10500, Last: 10500 + routes - 1}})

	nodes := []netip.Addr{netlab.NodeA, netlab.NodeB}
	want := make(map[string][]mediaplane.Mapping, routes)
	for i := range routes {
		key := fmt.Sprintf("inst-%d", i)
		b := netip.AddrPortFrom(nodes[i%2], 30000)
		ports, err := plane.Assign(key, []netip.AddrPort{b}, nil)
		if err != nil {
			t.Fatalf("route %d: %v", i, err)
		}
		want[key] = []mediaplane.Mapping{{PublicPort: ports[0], Backend: b}}
	}
	if _, err := plane.Assign("one-too-many", []netip.AddrPort{netip.AddrPortFrom(netlab.NodeA, 30000)}, nil); err == nil {
		t.Fatal("route beyond the range was accepted")
	}
	if total, free := plane.Capacity(); total != routes || free != 0 {
		t.Fatalf("Capacity = %d, %d", total, free)
	}

	start := time.Now()
	if err := plane.Sync(ctx, want); err != nil {
		t.Fatal(err)
	}
	t.Logf("programmed %d routes in one Sync in %s", routes, time.Since(start))
	if n := len(mapElements(t, lab)); n != routes {
		t.Fatalf("map holds %d elements, want %d", n, routes)
	}
	first, last := want["inst-0"][0].PublicPort, want[fmt.Sprintf("inst-%d", routes-1)][0].PublicPort
	if got := client.Ask(t, first, "first", answerWait); got != "node-a:first" {
		t.Fatalf("first route answered %q", got)
	}
	if got := client.Ask(t, last, "last", answerWait); got != "node-b:last" {
		t.Fatalf("last route answered %q", got)
	}

	const single = 20
	start = time.Now()
	for i := range single {
		key := fmt.Sprintf("inst-%d", i)
		m := want[key][0]
		m.Backend = netip.AddrPortFrom(nodes[(i+1)%2], 30000)
		want[key] = []mediaplane.Mapping{m}
		if err := plane.Sync(ctx, want); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("%d single-route changes on %d routes: %s per Sync", single, routes, time.Since(start)/single)
	if got := client.Ask(t, first, "moved", answerWait); got != "node-b:moved" {
		t.Fatalf("moved route answered %q", got)
	}

	for key := range want {
		plane.Release(key)
	}
	start = time.Now()
	if err := plane.Sync(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if err := plane.Settle(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("removed %d routes in %s", routes, time.Since(start))
	if n := len(mapElements(t, lab)); n != 0 {
		t.Fatalf("map holds %d elements after removing every route", n)
	}
	if got := lab.Conntrack(t, first); len(got) != 0 {
		t.Fatalf("conntrack entries left for %d: %q", first, got)
	}
}

func TestKernelCleanup(t *testing.T) {
	lab := netlab.New(t)
	lab.StartEcho(t, "node-a", netip.AddrPortFrom(netlab.NodeA, 30000))
	client := lab.NewClient(t)
	ctx := context.Background()
	// A rule that is not ours, in a built-in chain we also jump from.
	lab.Exec(t, lab.Edge, "iptables", "-t", "nat", "-A", "POSTROUTING", "-p", "tcp", "--dport", "8080", "-j", "MASQUERADE")

	plane := newPlane(t, lab, mediaplane.Config{SNAT: true})
	if err := plane.Sync(ctx, map[string][]mediaplane.Mapping{"x": {{PublicPort: 10500, Backend: netip.AddrPortFrom(netlab.NodeA, 30000)}}}); err != nil {
		t.Fatal(err)
	}
	if got := client.Ask(t, 10500, "before", answerWait); got != "node-a:before" {
		t.Fatalf("answer = %q", got)
	}
	if err := mediaplane.Cleanup(ctx, mediaplane.WithNetns(lab.Edge)); err != nil {
		t.Fatal(err)
	}
	save := lab.Exec(t, lab.Edge, "iptables-save")
	if strings.Contains(save, "LIVEGATE") || strings.Contains(save, "livegate") {
		t.Fatalf("cleanup left livegate rules:\n%s", save)
	}
	if !strings.Contains(save, "--dport 8080") {
		t.Fatalf("cleanup removed a rule that is not ours:\n%s", save)
	}
	if st, err := openMap(t, lab).Read(ctx, dnatmap.Layout{}); err != nil || st.Current || len(st.Elements) != 0 {
		t.Fatalf("cleanup left the table: %+v, %v", st, err)
	}
	if got := lab.Conntrack(t, 10500); len(got) != 0 {
		t.Fatalf("cleanup left conntrack entries: %q", got)
	}
	if got := client.Ask(t, 10500, "after", 300*time.Millisecond); got != "" {
		t.Fatalf("port still forwarded after cleanup: %q", got)
	}
	if err := mediaplane.Cleanup(ctx, mediaplane.WithNetns(lab.Edge)); err != nil {
		t.Fatalf("a second cleanup: %v", err)
	}
}

// TestKernelConntrackDeleteIsScoped deletes the entries of one public port, by the kernel-side
// filter, by the dump, and by the tuples conntrack.Tracked learned (from its first dump, or
// from the events of flows made after it started), and checks that the entries of the other
// ports, and of the same port on another address, are left alone.
func TestKernelConntrackDeleteIsScoped(t *testing.T) {
	for _, tc := range []struct {
		name      string
		filterMax int
		// tracked: a conntrack.Tracked, opened before the flows (events) or after them (dump);
		// eventsOff turns the namespace's conntrack events off once it is open, before the
		// flows, so that it hears of none of them, and on again at the end.
		tracked, events, eventsOff bool
	}{
		{name: "filtered", filterMax: conntrack.DefaultFilterMax},
		{name: "dumped"},
		{name: "tracked from its dump", tracked: true},
		{name: "tracked from events", tracked: true, events: true},
		{name: "tracked, events turned off", tracked: true, events: true, eventsOff: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lab := netlab.New(t)
			client := lab.NewClient(t)
			ctx := context.Background()
			// One mapping makes the namespace track connections; the ports below have no rule,
			// so each datagram leaves an unreplied entry in the edge's table.
			plane := newPlane(t, lab, mediaplane.Config{SNAT: true})
			if err := plane.Sync(ctx, map[string][]mediaplane.Mapping{"x": {{PublicPort: 10600, Backend: netip.AddrPortFrom(netlab.NodeA, 30000)}}}); err != nil {
				t.Fatal(err)
			}
			// The plane's first deletion of every unforwarded port, which would take the
			// entries below with it.
			if err := plane.Settle(ctx); err != nil {
				t.Fatal(err)
			}
			var c conntrack.Cleaner
			open := func() {
				if !tc.tracked {
					c = conntrack.NewNetlink(conntrack.WithNetns(lab.Edge), conntrack.WithFilterMax(tc.filterMax))
					return
				}
				tr, err := conntrack.NewTracked(netlab.PublicAddr, conntrack.WithNetns(lab.Edge))
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = tr.Close() })
				c = tr
			}
			if tc.events {
				open()
			}
			events := func(on int) {
				lab.Exec(t, lab.Edge, "sysctl", "-qw", fmt.Sprintf("net.netfilter.nf_conntrack_events=%d", on))
			}
			if tc.eventsOff {
				events(0)
			}
			// 10503's flow is in a conntrack zone, which a delete by tuple must name.
			lab.Exec(t, lab.Edge, "iptables", "-t", "raw", "-A", "PREROUTING", "-p", "udp", "--dport", "10503", "-j", "CT", "--zone", "7")
			ports := []uint16{10500, 10501, 10502, 10503}
			for _, p := range ports {
				client.Ask(t, p, "x", time.Millisecond)
			}
			for _, p := range ports {
				if got := lab.Conntrack(t, p); len(got) != 1 {
					t.Fatalf("entries for %d before the delete = %q, want one", p, got)
				}
			}
			if !tc.events {
				open()
			}
			if err := c.DeleteUDP(ctx, netip.MustParseAddr("198.18.250.1"), []uint16{10501}); err != nil {
				t.Fatal(err)
			}
			if got := lab.Conntrack(t, 10501); len(got) != 1 {
				t.Fatalf("a delete for another address removed %q", got)
			}
			if err := c.DeleteUDP(ctx, netlab.PublicAddr, []uint16{10501, 10503}); err != nil {
				t.Fatal(err)
			}
			want := map[uint16]int{10500: 1, 10501: 0, 10502: 1, 10503: 0}
			for _, p := range ports {
				if got := lab.Conntrack(t, p); len(got) != want[p] {
					t.Fatalf("entries for %d after deleting 10501 and 10503 = %q, want %d", p, got, want[p])
				}
			}
			// Only the delete for another address walks the table, and, with the events off,
			// the delete that cannot know the flows.
			wantFallbacks := int64(1)
			if tc.eventsOff {
				wantFallbacks = 2
			}
			if tr, ok := c.(*conntrack.Tracked); ok && tr.Fallbacks() != wantFallbacks {
				t.Fatalf("tracked cleaner fell back %d times, want %d", tr.Fallbacks(), wantFallbacks)
			}
			if !tc.eventsOff {
				return
			}
			// Back on, the cleaner dumps the table again, which holds 10502's flow, made while
			// they were off, and deletes it by its tuple.
			events(1)
			if err := c.DeleteUDP(ctx, netlab.PublicAddr, []uint16{10502}); err != nil {
				t.Fatal(err)
			}
			if got := lab.Conntrack(t, 10502); len(got) != 0 {
				t.Fatalf("entries for 10502 after deleting it with the events back on = %q", got)
			}
			if tr := c.(*conntrack.Tracked); tr.Fallbacks() != wantFallbacks {
				t.Fatalf("tracked cleaner fell back %d times with the events back on, want %d", tr.Fallbacks(), wantFallbacks)
			}
		})
	}
}
