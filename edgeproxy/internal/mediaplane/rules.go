package mediaplane

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/livegate/livegate/edgeproxy/internal/iptables"
	"github.com/livegate/livegate/edgeproxy/internal/portalloc"
)

// Chains livegate owns. Every rule the media plane writes lives in one of them; the built-in
// chains only get one jump each.
const (
	// ChainDNAT (nat) dispatches by port range to the shard chains, which hold one DNAT rule
	// per public port.
	ChainDNAT = "LIVEGATE-DNAT"
	// ShardPrefix starts the name of each shard chain (nat): ShardPrefix + the shard's first
	// port, e.g. LIVEGATE-DNAT-10496 for ports 10496-10623.
	ShardPrefix = ChainDNAT + "-"
	// ShardSize is the number of ports a shard chain covers. Shards keep each chain short:
	// iptables-nft reads the whole chain to delete one rule from it, and a new flow's first
	// packet walks at most the dispatch rules plus one shard instead of every mapping.
	ShardSize = 128
	// ChainSNAT (nat) masquerades forwarded media so replies come back through the edge.
	ChainSNAT = "LIVEGATE-SNAT"
	// ChainForward (filter) accepts the DNATed media in both directions, so a DROP policy on
	// FORWARD does not break it.
	ChainForward = "LIVEGATE-FWD"
)

const (
	tableNAT    = "nat"
	tableFilter = "filter"
)

type jump struct {
	table, from, to, comment string
}

// jumps are the only rules livegate puts in built-in chains. They go first in their chain so a
// host firewall's trailing REJECT cannot shadow them. The nat OUTPUT jump makes the public
// ports work from the edge host itself too (probes, health checks).
var jumps = []jump{
	{table: tableNAT, from: "PREROUTING", to: ChainDNAT, comment: "livegate media DNAT"},
	{table: tableNAT, from: "OUTPUT", to: ChainDNAT, comment: "livegate media DNAT (local)"},
	{table: tableNAT, from: "POSTROUTING", to: ChainSNAT, comment: "livegate media SNAT"},
	{table: tableFilter, from: "FORWARD", to: ChainForward, comment: "livegate media forward"},
}

var ownChains = []struct{ table, chain string }{
	{tableNAT, ChainDNAT},
	{tableNAT, ChainSNAT},
	{tableFilter, ChainForward},
}

func (j jump) spec() string {
	return fmt.Sprintf("-m comment --comment %s -j %s", iptables.Quote(j.comment), j.to)
}

func shardBase(port uint16) uint16 { return port &^ (ShardSize - 1) }

func shardChain(base uint16) string { return ShardPrefix + strconv.Itoa(int(base)) }

func isShardChain(name string) bool {
	n, err := strconv.ParseUint(strings.TrimPrefix(name, ShardPrefix), 10, 16)
	return strings.HasPrefix(name, ShardPrefix) && err == nil && uint16(n) == shardBase(uint16(n))
}

// dispatchSpec sends a shard's port range to its chain.
func dispatchSpec(public netip.Addr, base uint16) string {
	return fmt.Sprintf(`-d %s/32 -p udp -m udp --dport %d:%d -m comment --comment "lg:shard" -j %s`,
		public, base, int(base)+ShardSize-1, shardChain(base))
}

// dnatSpec is the rule of one public port, written exactly as iptables-save prints it so a
// read-back compares equal.
func dnatSpec(public netip.Addr, port uint16, backend netip.AddrPort) string {
	return fmt.Sprintf(`-d %s/32 -p udp -m udp --dport %d -m comment --comment "lg:%d" -j DNAT --to-destination %s`,
		public, port, port, backend)
}

// ctMatch selects the flows our DNAT rules created, in both directions: conntrack keeps the
// original destination, so one rule covers every public port without per-port rules.
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

// tombstoneSpec ends a port without deleting its DNAT rule: inserted ahead of it, it sends the
// port's packets back out of the shard before they reach the DNAT. It holds only payload matches
// and a verdict, no xtables expression, so adding it does not make the kernel wait for the rules
// deleted by the last batches to be freed (nft_compat_wait_for_destructors), which every rule with
// an xtables match or target (the comment, -j DNAT) does. A sweep later deletes it together with
// the rules it shadows. Written exactly as iptables-save prints it.
func tombstoneSpec(public netip.Addr, port uint16) string {
	return fmt.Sprintf(`-d %s/32 -p udp -m udp --dport %d -j RETURN`, public, port)
}

// shardRule is one parsed rule of a shard chain: a port's DNAT, or its tombstone.
type shardRule struct {
	public    netip.Addr
	port      uint16
	backend   netip.AddrPort
	tombstone bool
}

// parseShardRule reads a rule of a shard chain by meaning rather than by text, so a different but
// equivalent rendering by another iptables version is not taken for drift. Anything with an
// option we never write is not ours in that shape and does not parse.
func parseShardRule(args []string) (shardRule, bool) {
	var (
		r                shardRule
		comment, target  string
		proto, dportText string
	)
	if len(args)%2 != 0 {
		return shardRule{}, false
	}
	for i := 0; i < len(args); i += 2 {
		opt, val := args[i], args[i+1]
		switch opt {
		case "-d":
			p, err := netip.ParsePrefix(val)
			if err != nil {
				a, aerr := netip.ParseAddr(val)
				if aerr != nil {
					return shardRule{}, false
				}
				p = netip.PrefixFrom(a, a.BitLen())
			}
			if p.Bits() != p.Addr().BitLen() {
				return shardRule{}, false
			}
			r.public = p.Addr()
		case "-p":
			proto = val
		case "-m":
			if val != "udp" && val != "comment" {
				return shardRule{}, false
			}
		case "--dport":
			dportText = val
		case "--comment":
			comment = val
		case "-j":
			target = val
		case "--to-destination":
			ap, err := netip.ParseAddrPort(val)
			if err != nil {
				return shardRule{}, false
			}
			r.backend = ap
		default:
			return shardRule{}, false
		}
	}
	port, err := strconv.ParseUint(dportText, 10, 16)
	if err != nil || port == 0 || proto != "udp" || !r.public.IsValid() {
		return shardRule{}, false
	}
	r.port = uint16(port)
	switch {
	case target == "DNAT" && r.backend.IsValid() && comment == "lg:"+dportText:
		return r, true
	case target == "RETURN" && !r.backend.IsValid() && comment == "":
		r.tombstone = true
		return r, true
	}
	return shardRule{}, false
}

// kernelState is what the kernel holds in livegate's chains and jumps.
type kernelState struct {
	// chains holds the fixed chains that exist (true) or not, and every shard chain that exists.
	chains map[string]bool
	// jumps holds, per built-in chain that should jump to one of ours ("table/chain"), the
	// specs of its rules that jump to that chain of ours.
	jumps map[string][]string
	// dispatch holds the specs of ChainDNAT's rules.
	dispatch []string
	// dnat holds the rule of each forwarded public port: the first of the port's rules in its
	// shard, when that is a DNAT rule. The first rule is the one packets take.
	dnat map[uint16]dnatEntry
	// dead holds, per port, the specs of its rules that no packet reaches, in chain order: a
	// tombstone first and what it shadows, or the DNAT rules behind the port's current one.
	// They wait for a sweep, which deletes them all in one batch.
	dead map[uint16][]string
	// strays are shard rules that must go: foreign shapes, another public address, or the
	// wrong shard.
	strays []ruleRef
	// strayPorts are ports whose rules were strays; their conntrack entries may follow a
	// wrong binding.
	strayPorts []uint16
	snat       []string
	forward    []string
}

type ruleRef struct {
	chain, spec string
}

type dnatEntry struct {
	backend netip.AddrPort
	spec    string
}

func newState() *kernelState {
	return &kernelState{chains: map[string]bool{}, jumps: map[string][]string{}, dnat: map[uint16]dnatEntry{},
		dead: map[uint16][]string{}}
}

// deadRules counts the rules waiting for a sweep.
func (s *kernelState) deadRules() int {
	n := 0
	for _, specs := range s.dead {
		n += len(specs)
	}
	return n
}

func jumpKey(j jump) string { return j.table + "/" + j.from }

// readState extracts livegate's part of a ruleset; rules of other chains are ignored.
func readState(nat, filter *iptables.Table, public netip.Addr) *kernelState {
	s := newState()
	tables := map[string]*iptables.Table{tableNAT: nat, tableFilter: filter}
	// One pass over each table: asking for each of ~75 shard chains in turn would walk every
	// rule of the table each time.
	rules := map[string]map[string][]iptables.Rule{tableNAT: nat.RulesByChain(), tableFilter: filter.RulesByChain()}
	natRules := rules[tableNAT]
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
	for _, r := range natRules[ChainDNAT] {
		s.dispatch = append(s.dispatch, r.Spec)
	}
	var shards []string
	for name := range nat.Chains {
		if isShardChain(name) {
			shards = append(shards, name)
			s.chains[name] = true
		}
	}
	slices.Sort(shards)
	seen := map[uint16]bool{}
	for _, chain := range shards {
		for _, r := range natRules[chain] {
			d, ok := parseShardRule(r.Args)
			if !ok || d.public != public || shardChain(shardBase(d.port)) != chain {
				s.strays = append(s.strays, ruleRef{chain: chain, spec: r.Spec})
				if ok {
					s.strayPorts = append(s.strayPorts, d.port)
				}
				continue
			}
			if seen[d.port] || d.tombstone {
				s.dead[d.port] = append(s.dead[d.port], r.Spec)
			} else {
				s.dnat[d.port] = dnatEntry{backend: d.backend, spec: r.Spec}
			}
			seen[d.port] = true
		}
	}
	for _, r := range natRules[ChainSNAT] {
		s.snat = append(s.snat, r.Spec)
	}
	for _, r := range rules[tableFilter][ChainForward] {
		s.forward = append(s.forward, r.Spec)
	}
	return s
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

// change summarises a plan.
type change struct {
	added, removed, updated int
	// flush lists the ports whose conntrack entries must go once the batch is applied.
	flush []uint16
	// created lists the ports of flush that had no rule of any kind before the batch: neither
	// a DNAT rule, nor a dead one, nor a stray one.
	created map[uint16]bool
	// swept is set when the batch deleted dead rules.
	swept bool
}

// plan computes the restore batch that turns cur into want, and the state the kernel holds
// once the batch is applied. An empty batch means the kernel is already right.
//
// Within the nat table the batch creates missing chains, fixes jumps and the static chains,
// deletes strays, adds the rules that come, and last empties and deletes shard chains no longer
// needed, so that nothing is referenced after it is gone. Unless sweep is set it deletes no
// rule of a port: a port that leaves gets a tombstone inserted ahead of its DNAT rule, a port
// whose backend changes gets its new rule inserted ahead of the old one, and the rules so
// shadowed wait in next.dead for a batch with sweep set, which deletes them all before it adds
// anything (see tombstoneSpec for why).
func plan(cur *kernelState, want map[uint16]netip.AddrPort, cfg settings, sweep bool) (*iptables.Batch, *kernelState, change) {
	b := iptables.NewBatch()
	next := newState()
	next.dnat = make(map[uint16]dnatEntry, len(want))
	ch := change{swept: sweep && len(cur.dead) > 0}

	needed := map[string]uint16{}
	for port := range want {
		needed[shardChain(shardBase(port))] = shardBase(port)
	}
	if !sweep {
		// Ports that leave get a tombstone and ports with dead rules keep them: their shards
		// stay until a sweep.
		for port := range cur.dnat {
			needed[shardChain(shardBase(port))] = shardBase(port)
		}
		for port := range cur.dead {
			needed[shardChain(shardBase(port))] = shardBase(port)
		}
	}
	for _, c := range ownChains {
		if !cur.chains[c.chain] {
			b.DeclareChain(c.table, c.chain)
		}
		next.chains[c.chain] = true
	}
	shards := make([]string, 0, len(needed))
	for name := range needed {
		shards = append(shards, name)
	}
	slices.Sort(shards)
	for _, name := range shards {
		if !cur.chains[name] {
			b.DeclareChain(tableNAT, name)
		}
		next.chains[name] = true
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

	var wantSNAT, wantForward []string
	if len(want) > 0 {
		wantForward = []string{forwardSpec(cfg.public, cfg.ports)}
		if cfg.snat {
			wantSNAT = []string{snatSpec(cfg.public, cfg.ports)}
		}
	}
	next.snat = rewriteChain(b, tableNAT, ChainSNAT, cur.chains[ChainSNAT], cur.snat, wantSNAT)
	next.forward = rewriteChain(b, tableFilter, ChainForward, cur.chains[ChainForward], cur.forward, wantForward)

	wantDispatch := make([]string, 0, len(shards))
	for _, name := range shards {
		wantDispatch = append(wantDispatch, dispatchSpec(cfg.public, needed[name]))
	}
	haveDispatch := map[string]bool{}
	for _, spec := range cur.dispatch {
		if haveDispatch[spec] || !slices.Contains(wantDispatch, spec) {
			b.Delete(tableNAT, ChainDNAT, spec)
			continue
		}
		haveDispatch[spec] = true
		next.dispatch = append(next.dispatch, spec)
	}

	flush := map[uint16]bool{}
	for _, p := range cur.strayPorts {
		flush[p] = true
	}
	for _, r := range cur.strays {
		if _, kept := needed[r.chain]; kept {
			b.Delete(tableNAT, r.chain, r.spec)
		}
	}
	inShard := func(port uint16) (string, bool) {
		chain := shardChain(shardBase(port))
		_, kept := needed[chain]
		return chain, kept
	}
	// A sweep deletes every dead rule, each port's all at once: deleting a tombstone alone
	// would uncover the DNAT rule behind it. A delete removes the first rule of its spec, and
	// every rule of the port but one copy of its current spec goes, so which copy a delete hits
	// does not matter. Otherwise dead rules stay as they are.
	for _, port := range slices.Sorted(maps.Keys(cur.dead)) {
		chain, kept := inShard(port)
		if !sweep {
			next.dead[port] = slices.Clone(cur.dead[port])
			continue
		}
		if kept {
			for _, spec := range cur.dead[port] {
				b.Delete(tableNAT, chain, spec)
			}
		}
	}
	// Most ports keep their rule: only those that change are put in order, for a stable batch.
	var gone []uint16
	for port, e := range cur.dnat {
		if backend, keep := want[port]; keep && backend == e.backend {
			next.dnat[port] = e
			continue
		}
		gone = append(gone, port)
	}
	slices.Sort(gone)
	// Outside a sweep nothing is deleted: a port that leaves is shadowed by a tombstone, a port
	// that changes backend by its new rule, inserted ahead (below).
	for _, port := range gone {
		e := cur.dnat[port]
		_, keep := want[port]
		flush[port] = true
		if keep {
			ch.updated++
		} else {
			ch.removed++
		}
		chain, kept := inShard(port)
		switch {
		case sweep && kept:
			b.Delete(tableNAT, chain, e.spec)
		case !sweep && keep:
			next.dead[port] = append([]string{e.spec}, next.dead[port]...)
		case !sweep:
			tomb := tombstoneSpec(cfg.public, port)
			b.Insert(tableNAT, chain, 1, tomb)
			next.dead[port] = append([]string{tomb, e.spec}, next.dead[port]...)
		}
	}
	var come []uint16
	for port := range want {
		if _, ok := next.dnat[port]; !ok {
			come = append(come, port)
		}
	}
	slices.Sort(come)
	for _, port := range come {
		backend := want[port]
		spec := dnatSpec(cfg.public, port, backend)
		chain := shardChain(shardBase(port))
		if len(next.dead[port]) > 0 {
			// Ahead of the port's tombstone or old rule, which packets then no longer reach.
			b.Insert(tableNAT, chain, 1, spec)
		} else {
			b.Append(tableNAT, chain, spec)
		}
		next.dnat[port] = dnatEntry{backend: backend, spec: spec}
		flush[port] = true
		if _, had := cur.dnat[port]; !had {
			ch.added++
			if !slices.Contains(cur.strayPorts, port) && len(cur.dead[port]) == 0 {
				if ch.created == nil {
					ch.created = map[uint16]bool{}
				}
				ch.created[port] = true
			}
		}
	}
	for _, spec := range wantDispatch {
		if !haveDispatch[spec] {
			b.Append(tableNAT, ChainDNAT, spec)
			next.dispatch = append(next.dispatch, spec)
		}
	}

	var obsolete []string
	for name := range cur.chains {
		if _, kept := needed[name]; isShardChain(name) && !kept {
			obsolete = append(obsolete, name)
		}
	}
	slices.Sort(obsolete)
	for _, name := range obsolete {
		b.DeclareChain(tableNAT, name)
	}
	for _, name := range obsolete {
		b.DeleteChain(tableNAT, name)
	}

	for p := range flush {
		ch.flush = append(ch.flush, p)
	}
	slices.Sort(ch.flush)
	return b, next, ch
}

// reshapes reports whether going from cur to next changes anything but per-port DNAT rules: the
// chains, the jumps, the dispatch, the static rules, or strays removed.
func reshapes(cur, next *kernelState) bool {
	return !maps.Equal(cur.chains, next.chains) || !maps.EqualFunc(cur.jumps, next.jumps, slices.Equal) ||
		!slices.Equal(cur.dispatch, next.dispatch) || !slices.Equal(cur.snat, next.snat) ||
		!slices.Equal(cur.forward, next.forward) || len(cur.strays) != len(next.strays)
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

// cleanupBatch removes every jump to livegate's chains, then the chains themselves.
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
		var shards []string
		for c := range t.Chains {
			if isShardChain(c) {
				shards = append(shards, c)
			}
		}
		slices.Sort(shards)
		ours = append(ours, shards...)
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
