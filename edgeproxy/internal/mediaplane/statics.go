package mediaplane

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/livegate/livegate/edgeproxy/internal/iptables"
	"github.com/livegate/livegate/edgeproxy/internal/portalloc"
)

// Chains livegate owns in iptables. The DNAT itself is an nftables map (package dnatmap); what
// stays in iptables is what must sit where the host's own rules are: the masquerade of forwarded
// media, and the accept ahead of a FORWARD policy of DROP (a verdict of iptables' filter table
// is not overruled by an accept in another table). Both rules are static: one per chain, whatever
// the number of mappings.
const (
	// ChainSNAT (nat) masquerades forwarded media so replies come back through the edge.
	ChainSNAT = "LIVEGATE-SNAT"
	// ChainForward (filter) accepts the DNATed media in both directions, so a DROP policy on
	// FORWARD does not break it.
	ChainForward = "LIVEGATE-FWD"
)

// Chains of earlier versions, which held one DNAT rule per public port: LIVEGATE-DNAT dispatched
// to shard chains LIVEGATE-DNAT-<first port> of legacyShardSize ports each. The first sync
// removes them once the map holds their ports (see legacyState).
const (
	legacyChainDNAT   = "LIVEGATE-DNAT"
	legacyShardPrefix = legacyChainDNAT + "-"
	legacyShardSize   = 128
)

const (
	tableNAT    = "nat"
	tableFilter = "filter"
)

type jump struct {
	table, from, to, comment string
}

// jumps are the only rules livegate puts in built-in chains. They go first in their chain so a
// host firewall's trailing REJECT cannot shadow them.
var jumps = []jump{
	{table: tableNAT, from: "POSTROUTING", to: ChainSNAT, comment: "livegate media SNAT"},
	{table: tableFilter, from: "FORWARD", to: ChainForward, comment: "livegate media forward"},
}

var ownChains = []struct{ table, chain string }{
	{tableNAT, ChainSNAT},
	{tableFilter, ChainForward},
}

func (j jump) spec() string {
	return fmt.Sprintf("-m comment --comment %s -j %s", iptables.Quote(j.comment), j.to)
}

func isLegacyShard(name string) bool {
	n, err := strconv.ParseUint(strings.TrimPrefix(name, legacyShardPrefix), 10, 16)
	return strings.HasPrefix(name, legacyShardPrefix) && err == nil && n%legacyShardSize == 0
}

func isLegacyChain(name string) bool { return name == legacyChainDNAT || isLegacyShard(name) }

// ctMatch selects the flows the DNAT created, in both directions: conntrack keeps the original
// destination, so one rule covers every public port.
func ctMatch(public netip.Addr, ports portalloc.Range) string {
	portSpec := strconv.Itoa(int(ports.First))
	if ports.Last != ports.First {
		portSpec += ":" + strconv.Itoa(int(ports.Last))
	}
	return fmt.Sprintf("-p udp -m conntrack --ctstate DNAT --ctorigdst %s --ctorigdstport %s", public, portSpec)
}

func snatSpec(public netip.Addr, ports portalloc.Range) string {
	return ctMatch(public, ports) + ` -m comment --comment "lg:snat" -j MASQUERADE`
}

func forwardSpec(public netip.Addr, ports portalloc.Range) string {
	return ctMatch(public, ports) + ` -m comment --comment "lg:fwd" -j ACCEPT`
}

// staticState is livegate's part of iptables: its chains, the jumps to them, their rules, and
// what an earlier version left.
type staticState struct {
	// chains holds each own chain that exists (true) or not.
	chains map[string]bool
	// jumps holds, per built-in chain that should jump to one of ours ("table/chain"), the specs
	// of its rules that jump to that chain of ours.
	jumps   map[string][]string
	snat    []string
	forward []string
	legacy  legacyState
}

// legacyState is what an earlier version's per-port DNAT left in the nat table.
type legacyState struct {
	// chains are the legacy chains that exist, shards first.
	chains []string
	// jumps are the rules of other chains that jump to a legacy chain.
	jumps []ruleRef
	// dnat is the backend of each port a legacy rule forwards: the first DNAT rule of the port
	// in its shard, unless a RETURN for the port (a tombstone) comes ahead of it; public is the
	// address that rule matched.
	dnat   map[uint16]netip.AddrPort
	public map[uint16]netip.Addr
}

func (l legacyState) present() bool { return len(l.chains) > 0 || len(l.jumps) > 0 }

type ruleRef struct {
	chain, spec string
}

func jumpKey(j jump) string { return j.table + "/" + j.from }

// readStatic extracts livegate's part of the two tables; rules of other chains are ignored.
func readStatic(nat, filter *iptables.Table) staticState {
	s := staticState{chains: map[string]bool{}, jumps: map[string][]string{}}
	tables := map[string]*iptables.Table{tableNAT: nat, tableFilter: filter}
	rules := map[string]map[string][]iptables.Rule{tableNAT: nat.RulesByChain(), tableFilter: filter.RulesByChain()}
	for _, c := range ownChains {
		s.chains[c.chain] = tables[c.table].HasChain(c.chain)
	}
	for _, j := range jumps {
		for _, r := range rules[j.table][j.from] {
			if jumpsTo(r.Args, j.to) {
				s.jumps[jumpKey(j)] = append(s.jumps[jumpKey(j)], r.Spec)
			}
		}
	}
	s.snat = specsOf(rules[tableNAT][ChainSNAT])
	s.forward = specsOf(rules[tableFilter][ChainForward])
	s.legacy = readLegacy(nat)
	return s
}

func specsOf(rules []iptables.Rule) []string {
	out := make([]string, 0, len(rules))
	for _, r := range rules {
		out = append(out, r.Spec)
	}
	return out
}

func readLegacy(nat *iptables.Table) legacyState {
	l := legacyState{dnat: map[uint16]netip.AddrPort{}, public: map[uint16]netip.Addr{}}
	var shards []string
	hasDispatch := false
	for name := range nat.Chains {
		switch {
		case isLegacyShard(name):
			shards = append(shards, name)
		case name == legacyChainDNAT:
			hasDispatch = true
		}
	}
	slices.Sort(shards)
	l.chains = shards
	if hasDispatch {
		l.chains = append(l.chains, legacyChainDNAT)
	}
	byChain := nat.RulesByChain()
	for _, chain := range shards {
		seen := map[uint16]bool{}
		for _, r := range byChain[chain] {
			port, public, backend, ok := parseLegacyRule(r.Args)
			if !ok || seen[port] {
				continue
			}
			seen[port] = true
			if backend.IsValid() {
				l.dnat[port], l.public[port] = backend, public
			}
		}
	}
	for _, r := range nat.Rules {
		if isLegacyChain(r.Chain) {
			continue
		}
		for _, c := range l.chains {
			if jumpsTo(r.Args, c) {
				l.jumps = append(l.jumps, ruleRef{chain: r.Chain, spec: r.Spec})
				break
			}
		}
	}
	return l
}

// parseLegacyRule reads a legacy shard rule: the port and destination address it matches and,
// for a DNAT rule, the backend (invalid for anything else, which shadows the port's later rules).
func parseLegacyRule(args []string) (port uint16, public netip.Addr, backend netip.AddrPort, ok bool) {
	var target string
	for i := 0; i+1 < len(args); i++ {
		switch args[i] {
		case "-d":
			if p, err := netip.ParsePrefix(args[i+1]); err == nil && p.IsSingleIP() {
				public = p.Addr()
			} else if a, err := netip.ParseAddr(args[i+1]); err == nil {
				public = a
			}
		case "--dport":
			n, err := strconv.ParseUint(args[i+1], 10, 16)
			if err != nil || n == 0 {
				return 0, netip.Addr{}, netip.AddrPort{}, false
			}
			port = uint16(n)
		case "-j":
			target = args[i+1]
		case "--to-destination":
			ap, err := netip.ParseAddrPort(args[i+1])
			if err != nil {
				return 0, netip.Addr{}, netip.AddrPort{}, false
			}
			backend = ap
		}
	}
	if port == 0 {
		return 0, netip.Addr{}, netip.AddrPort{}, false
	}
	if target != "DNAT" {
		backend = netip.AddrPort{}
	}
	return port, public, backend, true
}

func jumpsTo(args []string, chain string) bool {
	for i := 0; i+1 < len(args); i++ {
		if (args[i] == "-j" || args[i] == "-g") && args[i+1] == chain {
			return true
		}
	}
	return false
}

// settings are the parts of the configuration the rules depend on.
type settings struct {
	public netip.Addr
	ports  portalloc.Range
	snat   bool
}

// planStatic computes the restore batch that turns cur into livegate's static rules for cfg,
// and removes what an earlier version left, and the state once it is applied. An empty batch
// means iptables is already right.
func planStatic(cur staticState, cfg settings) (*iptables.Batch, staticState) {
	b := iptables.NewBatch()
	next := staticState{chains: map[string]bool{}, jumps: map[string][]string{}}
	for _, c := range ownChains {
		if !cur.chains[c.chain] {
			b.DeclareChain(c.table, c.chain)
		}
		next.chains[c.chain] = true
	}
	for _, j := range jumps {
		have := cur.jumps[jumpKey(j)]
		canonical := j.spec()
		if len(have) == 1 && have[0] == canonical {
			next.jumps[jumpKey(j)] = have
			continue
		}
		for _, spec := range have {
			b.Delete(j.table, j.from, spec)
		}
		b.Insert(j.table, j.from, 1, canonical)
		next.jumps[jumpKey(j)] = []string{canonical}
	}
	var wantSNAT []string
	if cfg.snat {
		wantSNAT = []string{snatSpec(cfg.public, cfg.ports)}
	}
	next.snat = rewriteChain(b, tableNAT, ChainSNAT, cur.chains[ChainSNAT], cur.snat, wantSNAT)
	next.forward = rewriteChain(b, tableFilter, ChainForward, cur.chains[ChainForward], cur.forward,
		[]string{forwardSpec(cfg.public, cfg.ports)})
	removeLegacy(b, cur.legacy)
	return b, next
}

// removeLegacy deletes the jumps to the legacy chains, then empties and deletes the chains, so
// nothing is referenced after it is gone.
func removeLegacy(b *iptables.Batch, l legacyState) {
	for _, r := range l.jumps {
		b.Delete(tableNAT, r.chain, r.spec)
	}
	for _, c := range l.chains {
		b.DeclareChain(tableNAT, c)
	}
	for _, c := range l.chains {
		b.DeleteChain(tableNAT, c)
	}
}

// rewriteChain replaces a small static chain wholesale when it differs from want: declaring
// an existing chain under --noflush empties it, and the batch refills it in the same
// transaction.
func rewriteChain(b *iptables.Batch, table, chain string, exists bool, have, want []string) []string {
	if slices.Equal(have, want) {
		return want
	}
	if exists {
		b.DeclareChain(table, chain)
	}
	for _, spec := range want {
		b.Append(table, chain, spec)
	}
	return want
}

// cleanupBatch removes every jump to livegate's chains, then the chains themselves, legacy ones
// included.
func cleanupBatch(nat, filter *iptables.Table) *iptables.Batch {
	b := iptables.NewBatch()
	tables := map[string]*iptables.Table{tableNAT: nat, tableFilter: filter}
	for _, name := range []string{tableNAT, tableFilter} {
		t := tables[name]
		var ours []string
		for _, c := range ownChains {
			if c.table == name && t.HasChain(c.chain) {
				ours = append(ours, c.chain)
			}
		}
		if name == tableNAT {
			ours = append(ours, readLegacy(t).chains...)
		}
		for _, r := range t.Rules {
			if slices.Contains(ours, r.Chain) {
				continue
			}
			for _, c := range ours {
				if jumpsTo(r.Args, c) {
					b.Delete(name, r.Chain, r.Spec)
					break
				}
			}
		}
		for _, c := range ours {
			b.DeclareChain(name, c)
		}
		for _, c := range ours {
			b.DeleteChain(name, c)
		}
	}
	return b
}

// describe renders a port list for logs, shortened when long.
func describe(ports []uint16) string {
	const max = 8
	var sb strings.Builder
	for i, p := range ports {
		if i == max {
			fmt.Fprintf(&sb, " …(+%d)", len(ports)-max)
			break
		}
		if i > 0 {
			sb.WriteByte(' ')
		}
		sb.WriteString(strconv.Itoa(int(p)))
	}
	return sb.String()
}
