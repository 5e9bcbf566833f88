// Package mediaplane is the edge's media data plane: it allocates one public UDP port per media
// backend and keeps the kernel forwarding each port to its backend. The DNAT is one nftables map
// in livegate's own table (package dnatmap), changed element by element in transactions on a
// netlink socket the plane keeps open; the masquerade that brings replies back through the edge
// and the accept that passes a FORWARD policy of DROP are two static iptables rules in livegate's
// own chains. The conntrack entries of a port are deleted whenever its forwarding changes, so a
// reused port never delivers to the previous backend. Entries of ports that are forwarded after
// a change are deleted before Sync returns, so that no flow the new element should carry keeps a
// stale entry, except for a clean port new to a route that took it from the round-robin, where
// no such entry can exist; those of ports that are no longer forwarded are deleted right after,
// off the caller's path, since such a port is only handed out again after its quarantine. See
// docs/media-forwarding.md.
package mediaplane

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/livegate/livegate/edgeproxy/internal/conntrack"
	"github.com/livegate/livegate/edgeproxy/internal/iptables"
	"github.com/livegate/livegate/edgeproxy/internal/media"
	"github.com/livegate/livegate/edgeproxy/internal/mediaplane/internal/dnatmap"
	"github.com/livegate/livegate/edgeproxy/internal/portalloc"
)

// Mapping forwards one public UDP port to one media backend.
type Mapping = media.Mapping

var _ media.Plane = (*Plane)(nil)

// ErrBackendNotAllowed reports a media backend outside the configured address ranges or ports.
var ErrBackendNotAllowed = errors.New("media backend not allowed")

// DefaultPorts is the public port range when Config.Ports is left zero.
var DefaultPorts = portalloc.Range{First: 10500, Last: 20000}

// DefaultResyncInterval is how old the plane's picture of the kernel may get before Sync reads
// it back.
const DefaultResyncInterval = 10 * time.Second

// Config is what the plane forwards and how.
type Config struct {
	// PublicIP is the IPv4 address media packets arrive at on this host (the DNAT matches it as
	// destination). Behind a 1:1 cloud NAT it is the host's private address.
	PublicIP netip.Addr
	// Ports is the public UDP port range; zero means DefaultPorts.
	Ports portalloc.Range
	// Quarantine is how long a released port rests before it is handed out again.
	Quarantine time.Duration
	// SNAT masquerades forwarded media so that replies return through the edge; without it the
	// backends must route the clients' addresses back through the edge.
	SNAT bool
	// BackendPorts limits media backend ports; zero allows any.
	BackendPorts portalloc.Range
	// BackendCIDRs limits media backend addresses; empty allows any.
	BackendCIDRs []netip.Prefix
}

// DNATMap is the kernel's DNAT map as the plane drives it: dnatmap.Kernel, or a fake in tests
// (mediaplanetest).
type DNATMap interface {
	Read(ctx context.Context, l dnatmap.Layout) (dnatmap.State, error)
	Ensure(ctx context.Context, l dnatmap.Layout) (map[uint16]netip.AddrPort, error)
	Apply(ctx context.Context, c dnatmap.Change) error
	Remove(ctx context.Context) error
	Close() error
}

// Option sets an optional part of the plane.
type Option func(*options)

type options struct {
	runner  iptables.Runner
	dnat    DNATMap
	cleaner conntrack.Cleaner
	now     func() time.Time
	log     zerolog.Logger
	resync  time.Duration
	// flushRetry is the pause before a failed conntrack deletion is tried again.
	flushRetry time.Duration
	// netns is the namespace WithNetns targets; "" is the process's own.
	netns string
	// ownDNAT and ownCleaner are set when buildOptions opened the map or the cleaner itself.
	ownDNAT, ownCleaner bool
}

// WithRunner sets how iptables is run (a fake in unit tests).
func WithRunner(r iptables.Runner) Option {
	return func(o *options) { o.runner = r }
}

// WithDNATMap sets the DNAT map (a fake in unit tests). The plane closes it in Close; when New
// fails, the caller keeps it.
func WithDNATMap(m DNATMap) Option {
	return func(o *options) { o.dnat = m }
}

// WithConntrack sets how conntrack entries are deleted; the plane closes it in Close when it is
// an io.Closer.
func WithConntrack(c conntrack.Cleaner) Option {
	return func(o *options) { o.cleaner = c }
}

// WithNetns programs the named network namespace instead of the current one: iptables runs
// through `ip netns exec`, and the DNAT map and conntrack are reached over netlink sockets opened
// in it.
func WithNetns(name string) Option {
	return func(o *options) {
		o.runner = iptables.NewExec(iptables.WithNetns(name))
		o.netns = name
	}
}

// WithClock sets the clock used for port quarantine and resync timing.
func WithClock(now func() time.Time) Option {
	return func(o *options) { o.now = now }
}

// WithLogger sets the logger.
func WithLogger(l zerolog.Logger) Option {
	return func(o *options) { o.log = l }
}

// WithResyncInterval sets how old the plane's picture of the kernel may get before Sync reads
// it back and repairs drift.
func WithResyncInterval(d time.Duration) Option {
	return func(o *options) { o.resync = d }
}

// buildOptions fills in the defaults. With a valid public address the conntrack entries are
// deleted by their tuples as conntrack.Tracked learns them, or, where it cannot start, by
// filter.
func buildOptions(public netip.Addr, opts []Option) (options, error) {
	o := options{now: time.Now, log: zerolog.Nop(), resync: DefaultResyncInterval, flushRetry: flushRetry}
	for _, opt := range opts {
		opt(&o)
	}
	if o.runner == nil {
		e := iptables.NewExec()
		if err := e.Check(); err != nil {
			return options{}, err
		}
		o.runner = e
	}
	if o.cleaner == nil && public.IsValid() {
		t, err := conntrack.NewTracked(public, conntrack.WithNetns(o.netns), conntrack.WithLogger(o.log))
		if err != nil {
			o.log.Warn().Err(err).Msg("conntrack events unavailable; deleting conntrack entries by filter")
		} else {
			o.cleaner, o.ownCleaner = t, true
		}
	}
	if o.cleaner == nil {
		o.cleaner, o.ownCleaner = conntrack.NewNetlink(conntrack.WithNetns(o.netns)), true
	}
	if o.dnat == nil {
		k, err := dnatmap.Open(dnatmap.WithNetns(o.netns))
		if err != nil {
			if o.ownCleaner {
				closeCleaner(o.cleaner)
			}
			return options{}, err
		}
		o.dnat, o.ownDNAT = k, true
	}
	return o, nil
}

// Plane allocates public ports and keeps the kernel in line with the desired mappings. It is
// safe for concurrent use.
type Plane struct {
	cfg   Config
	o     options
	alloc *portalloc.Allocator
	// deletions counts the conntrack deletions asked of the cleaner.
	deletions atomic.Int64

	// syncMu serialises what writes the kernel (Sync, Recover, the repair after a read-back
	// behind) and owns the fields below that mu does not. It is held across the kernel I/O;
	// mu only around the allocator and the state shared with Assign, Capacity and the
	// flusher, so the planner's calls do not wait behind a change. Lock order: syncMu, then mu.
	syncMu sync.Mutex
	mu     sync.Mutex
	// known is the kernel state as of the last read-back plus the changes applied since; nil
	// when it must be read back. Written under both locks; never changed once set.
	known  *kernelState
	readAt time.Time
	closed bool
	// pendingFlush holds ports whose conntrack entries must still be deleted. flushDone is
	// non-nil while a flusher goroutine works through them, and closed when it stops; flushErr
	// is why the last one stopped with ports left.
	pendingFlush map[uint16]bool
	flushDone    chan struct{}
	flushErr     error
	// inFlight holds the ports of the background deletion under way, and inFlightDone is
	// closed when it is over: a port forwarded again meanwhile waits for it before its own
	// deletion, so that the background one cannot land after the new flow's first datagram.
	inFlight     map[uint16]bool
	inFlightDone chan struct{}
	// owed holds ports whose forwarding a change may have altered in the kernel while the
	// sync that made it failed later: their entries are deleted by the next sync that succeeds,
	// which no longer sees a difference for them. Owned by syncMu.
	owed map[uint16]bool
	// stop ends the background deletions when the plane closes.
	stopCtx context.Context
	stop    context.CancelFunc
	// clean holds the ports that have had no mapping since their conntrack entries were last
	// deleted: no entry of theirs can follow a NAT binding, only the un-NATed entries of
	// datagrams sent to an unforwarded port. startQueued is set once every port the first
	// read-back found unforwarded was queued for deletion, which is how ports become clean
	// after a start.
	clean       map[uint16]bool
	startQueued bool
	// lastWant is what the last Sync asked for, for the repair after a read-back behind.
	lastWant map[uint16]netip.AddrPort
	// readDone is non-nil while a read-back runs behind the changes, and closed when it is
	// over. Meanwhile touched collects the ports the changes touched, and reshaped is set when
	// one changed anything but map elements (the table's layout, the iptables rules).
	readDone chan struct{}
	touched  map[uint16]bool
	reshaped bool
}

// kernelState is livegate's part of the kernel.
type kernelState struct {
	// dnat is the map's elements.
	dnat map[uint16]netip.AddrPort
	// current reports whether the table, map and chains hold the configured layout.
	current bool
	static  staticState
}

// flushAttempts bounds how often one flusher tries a failing deletion before it leaves the ports
// to the next Sync; flushRetry is the pause between tries.
const (
	flushAttempts = 3
	flushRetry    = time.Second
)

// New checks cfg and returns a plane. It opens the netlink socket of the DNAT map but changes
// nothing in the kernel.
func New(cfg Config, opts ...Option) (*Plane, error) {
	if !cfg.PublicIP.Is4() {
		return nil, fmt.Errorf("media plane: public ip %q is not an IPv4 address", cfg.PublicIP)
	}
	if cfg.Ports == (portalloc.Range{}) {
		cfg.Ports = DefaultPorts
	}
	if cfg.BackendPorts != (portalloc.Range{}) {
		if err := cfg.BackendPorts.Validate(); err != nil {
			return nil, fmt.Errorf("media plane: backend ports %s: %w", cfg.BackendPorts, err)
		}
	}
	if err := cfg.Ports.Validate(); err != nil {
		return nil, fmt.Errorf("media plane: ports %s: %w", cfg.Ports, err)
	}
	o, err := buildOptions(cfg.PublicIP, opts)
	if err != nil {
		return nil, fmt.Errorf("media plane: %w", err)
	}
	alloc, err := portalloc.New(cfg.Ports, cfg.Quarantine, o.now)
	if err != nil {
		if o.ownDNAT {
			o.dnat.Close()
		}
		if o.ownCleaner {
			closeCleaner(o.cleaner)
		}
		return nil, fmt.Errorf("media plane: %w", err)
	}
	stopCtx, stop := context.WithCancel(context.Background())
	return &Plane{cfg: cfg, o: o, alloc: alloc, pendingFlush: map[uint16]bool{}, clean: map[uint16]bool{},
		owed: map[uint16]bool{}, stopCtx: stopCtx, stop: stop}, nil
}

func (p *Plane) settings() settings {
	return settings{public: p.cfg.PublicIP, ports: p.cfg.Ports, snat: p.cfg.SNAT}
}

func (p *Plane) layout() dnatmap.Layout {
	return dnatmap.Layout{Public: p.cfg.PublicIP, Ports: p.cfg.Ports}
}

// CheckBackend reports whether the plane may forward to backend.
func (p *Plane) CheckBackend(backend netip.AddrPort) error {
	if !backend.IsValid() || !backend.Addr().Is4() || backend.Port() == 0 {
		return fmt.Errorf("backend %q is not an IPv4 address and port: %w", backend, ErrBackendNotAllowed)
	}
	if p.cfg.BackendPorts != (portalloc.Range{}) && !p.cfg.BackendPorts.Contains(backend.Port()) {
		return fmt.Errorf("backend %s: port outside %s: %w", backend, p.cfg.BackendPorts, ErrBackendNotAllowed)
	}
	if len(p.cfg.BackendCIDRs) == 0 {
		return nil
	}
	for _, c := range p.cfg.BackendCIDRs {
		if c.Contains(backend.Addr()) {
			return nil
		}
	}
	return fmt.Errorf("backend %s: address outside the allowed ranges: %w", backend, ErrBackendNotAllowed)
}

// Recover reads the kernel back so that ports already forwarded (by a previous run of the edge,
// or by an earlier version's per-port rules) are not handed to new routes before their own
// routes claim them back as preferred ports. Call it once after start, before the first Assign;
// Sync works without it.
func (p *Plane) Recover(ctx context.Context) error {
	p.syncMu.Lock()
	defer p.syncMu.Unlock()
	st, err := p.readBack(ctx)
	if err != nil {
		return fmt.Errorf("recover media mappings: %w", err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for port := range st.dnat {
		p.alloc.Reserve(port)
	}
	for port := range st.static.legacy.dnat {
		p.alloc.Reserve(port)
	}
	p.o.log.Info().Int("mappings", len(st.dnat)).Int("legacy_mappings", len(st.static.legacy.dnat)).
		Msg("media mappings recovered from the kernel")
	if p.o.netns == "" {
		p.checkForwarding()
	}
	return nil
}

// ipForwardPath is the sysctl the kernel checks before it forwards anything; rules alone do
// not make a host a router.
const ipForwardPath = "/proc/sys/net/ipv4/ip_forward"

func (p *Plane) checkForwarding() {
	v, err := os.ReadFile(ipForwardPath)
	if err != nil {
		p.o.log.Warn().Err(err).Msg("cannot read net.ipv4.ip_forward")
		return
	}
	if strings.TrimSpace(string(v)) != "1" {
		p.o.log.Warn().Str("sysctl", "net.ipv4.ip_forward").Str("value", strings.TrimSpace(string(v))).
			Msg("IPv4 forwarding is off: media will not reach the backends until net.ipv4.ip_forward=1")
	}
}

// Assign returns one public port per backend, index-aligned: the ports key already holds,
// else preferred[i] when free, else the next free port. When the range cannot supply them the
// error wraps portalloc.ErrExhausted and key keeps what it held.
func (p *Plane) Assign(key string, backends []netip.AddrPort, preferred []uint16) ([]uint16, error) {
	for _, b := range backends {
		if err := p.CheckBackend(b); err != nil {
			return nil, fmt.Errorf("assign media ports for %s: %w", key, err)
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	ports, err := p.alloc.Allocate(key, len(backends), preferred)
	if err != nil {
		// Not logged here: a refused route is asked for again on every pass, and the reconciler
		// reports it once per change of the route.
		return nil, fmt.Errorf("assign media ports for %s: %w", key, err)
	}
	return ports, nil
}

// Release puts key's ports in quarantine. The kernel keeps forwarding them until the next
// Sync no longer lists them.
func (p *Plane) Release(key string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.alloc.Release(key)
}

// Capacity reports the size of the public port range and how many ports are free.
func (p *Plane) Capacity() (total, free int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.alloc.Capacity()
}

// Usage reports how many public ports are in use, resting in quarantine and free.
func (p *Plane) Usage() (inUse, quarantined, free int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.alloc.Usage()
}

// deleteConntrack deletes the conntrack entries addressed to ports, and counts the deletion.
func (p *Plane) deleteConntrack(ctx context.Context, ports []uint16) error {
	p.deletions.Add(1)
	return p.o.cleaner.DeleteUDP(ctx, p.cfg.PublicIP, ports)
}

// ConntrackDeletions reports how many conntrack deletions the plane has made (one per batch of
// ports), and how many of them walked the kernel's table by filter rather than deleting flows
// known from the conntrack events: all of them where the events could not be had.
func (p *Plane) ConntrackDeletions() (all, byFilter int64) {
	all = p.deletions.Load()
	switch c := p.o.cleaner.(type) {
	case *conntrack.Tracked:
		return all, c.Fallbacks()
	case *conntrack.Netlink:
		return all, all
	}
	return all, 0
}

// Sync makes the kernel forward exactly want (the full desired state, by route key). It writes
// only the difference from its picture of the kernel: one transaction on the DNAT map, and an
// iptables-restore batch only when the static rules need one. That picture is read back on the
// first call and after a failed change, before the change; once it is older than the resync
// interval, the read-back runs behind the changes instead (see readBehind), and the drift it
// finds is repaired as soon as it is read. The conntrack entries of every port whose forwarding
// was added or changed are deleted after the change, before Sync returns (not those of a clean
// port fresh to its route, see syncLocked); those of ports whose forwarding was removed are
// deleted by a goroutine Sync starts and does not wait for (Settle does). Ports whose deletion
// failed are tried again in the background, then at the next Sync. Invalid mappings are left out
// and reported in the error; the rest is still applied.
func (p *Plane) Sync(ctx context.Context, want map[string][]Mapping) error {
	p.syncMu.Lock()
	defer p.syncMu.Unlock()
	if p.closed {
		return errors.New("sync media mappings: the media plane is closed")
	}
	desired, invalid := p.desired(want)
	p.mu.Lock()
	p.lastWant = desired
	p.mu.Unlock()
	due := p.known == nil || p.o.now().Sub(p.readAt) >= p.o.resync
	behind := due && p.known != nil && p.o.resync > 0
	err := p.syncLocked(ctx, desired, due && !behind)
	if behind && p.readDone == nil && p.known != nil {
		p.readBehind(ctx)
	}
	return errors.Join(append(invalid, err)...)
}

// syncLocked brings the kernel to desired, reading it back first when told to or when a change
// on the remembered picture fails. p.syncMu is held, p.mu is not.
func (p *Plane) syncLocked(ctx context.Context, desired map[uint16]netip.AddrPort, readBack bool) error {
	start := p.o.now()
	res, err := p.apply(ctx, desired, readBack)
	if err != nil && !readBack {
		p.o.log.Warn().Err(err).Msg("media change failed on the remembered state, reading the kernel back")
		res, err = p.apply(ctx, desired, true)
	}
	if err != nil {
		return fmt.Errorf("sync media mappings: %w", err)
	}

	// A flow may already be using an added port (the mapping was lost while the edge was away,
	// or the client sent before the mapping): its entry is deleted before the port is published.
	// An entry deleted after the flow's first datagram went through the map would lose the
	// reply, so a port forwarded again leaves the background deletions of removed ports. A port
	// that is clean and new to a key that took it from the round-robin needs no deletion: no
	// entry of it follows a NAT binding, and the key's clients, not told the port yet, have none.
	flush := res.plan.flush
	if len(p.owed) > 0 {
		for _, port := range flush {
			p.owed[port] = true
		}
		flush = slices.Sorted(maps.Keys(p.owed))
		clear(p.owed)
	}
	var kept []uint16
	skipped := 0
	p.mu.Lock()
	for _, port := range flush {
		if _, ok := desired[port]; !ok {
			p.pendingFlush[port] = true
			continue
		}
		fresh := p.clean[port] && res.plan.created[port] && p.alloc.Fresh(port)
		delete(p.clean, port)
		delete(p.pendingFlush, port)
		if fresh {
			skipped++
			continue
		}
		kept = append(kept, port)
	}
	if len(p.pendingFlush) == 0 {
		p.flushErr = nil
	}
	var overlap chan struct{}
	for _, port := range kept {
		if p.inFlight[port] {
			overlap = p.inFlightDone
			break
		}
	}
	p.mu.Unlock()
	var flushErr error
	flushStart := p.o.now()
	if overlap != nil {
		select {
		case <-overlap:
		case <-ctx.Done():
		}
	}
	var failed []uint16
	if len(kept) > 0 {
		if err := p.deleteConntrack(ctx, kept); err != nil {
			flushErr = fmt.Errorf("sync media mappings: delete conntrack entries of ports %s: %w", describe(kept), err)
			failed = kept
		}
	}
	flushEnd := p.o.now()
	p.mu.Lock()
	for _, port := range failed {
		p.pendingFlush[port] = true
	}
	if len(p.pendingFlush) > 0 && p.flushDone == nil {
		p.flushDone = make(chan struct{})
		go p.flush(p.stopCtx, p.flushDone)
	}
	p.mu.Unlock()
	ev := p.o.log.Debug()
	if res.plan.change.Len() > 0 || res.lines > 0 {
		ev = p.o.log.Info()
	}
	ev.Int("mappings", len(desired)).Int("added", res.plan.added).Int("removed", res.plan.removed).
		Int("changed", res.plan.updated).Int("map_ops", res.plan.change.Len()).Int("batch_lines", res.lines).
		Bool("read_back", res.readBack).Bool("layout_written", res.ensured).
		Int("conntrack_ports", len(kept)).Int("conntrack_ports_clean", skipped).
		Int("conntrack_ports_later", len(flush)-len(kept)-skipped).
		Dur("read_ms", res.read).Dur("map_ms", res.mapTime).Dur("restore_ms", res.restore).
		Dur("conntrack_ms", flushEnd.Sub(flushStart)).Dur("elapsed_ms", flushEnd.Sub(start)).
		Msg("media mappings synced")
	return flushErr
}

// readBehindTimeout bounds one read-back behind the changes.
const readBehindTimeout = time.Minute

// readBehind reads the kernel back in a goroutine while changes go on, then, under p.mu, takes
// what it read as the plane's picture and repairs the drift against the last desired state. A
// change may have touched some ports since, or before they were read: for those ports the
// picture keeps what the changes wrote; a port that drifted while a change also touched it is
// seen at the next read-back. When a change rewrote the layout or the iptables rules meanwhile,
// what was read is dropped and the next Sync starts another. p.syncMu is held, p.mu is not.
func (p *Plane) readBehind(ctx context.Context) {
	done := make(chan struct{})
	p.mu.Lock()
	p.readDone = done
	p.mu.Unlock()
	p.touched, p.reshaped = map[uint16]bool{}, false
	began := p.o.now()
	go func() {
		defer close(done)
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), readBehindTimeout)
		defer cancel()
		st, err := p.read(rctx)
		read := p.o.now().Sub(began)
		p.syncMu.Lock()
		defer p.syncMu.Unlock()
		touched, reshaped := p.touched, p.reshaped
		p.mu.Lock()
		p.readDone = nil
		p.mu.Unlock()
		p.touched = nil
		switch {
		case p.closed:
			return
		case err != nil:
			// Tried again one resync interval later; a failed change reads back on its own.
			p.readAt = p.o.now()
			p.o.log.Warn().Err(err).Msg("media read-back failed")
			return
		case p.known == nil, p.readAt.After(began):
			// A failed change meanwhile read the kernel back in front of it: that is newer.
			return
		case reshaped:
			p.o.log.Debug().Dur("read_ms", read).Msg("media read-back overlapped a change of the layout; reading again")
			return
		}
		for port := range touched {
			if backend, ok := p.known.dnat[port]; ok {
				st.dnat[port] = backend
			} else {
				delete(st.dnat, port)
			}
		}
		p.mu.Lock()
		p.known = st
		p.mu.Unlock()
		p.readAt = began
		p.o.log.Debug().Dur("read_ms", read).Int("ports_changed_meanwhile", len(touched)).Msg("media state read back")
		if err := p.syncLocked(rctx, p.lastWant, false); err != nil {
			p.o.log.Warn().Err(err).Msg("media drift repair failed; retrying at the next sync")
		}
	}()
}

// flush deletes the conntrack entries of the pending ports until none is left, or until a
// deletion has failed flushAttempts times in a row; then it closes done.
func (p *Plane) flush(ctx context.Context, done chan struct{}) {
	defer close(done)
	failures := 0
	for {
		p.mu.Lock()
		if len(p.pendingFlush) == 0 {
			p.flushDone, p.flushErr = nil, nil
			p.mu.Unlock()
			return
		}
		ports := slices.Sorted(maps.Keys(p.pendingFlush))
		clear(p.pendingFlush)
		inFlightDone := make(chan struct{})
		p.inFlight, p.inFlightDone = make(map[uint16]bool, len(ports)), inFlightDone
		for _, port := range ports {
			p.inFlight[port] = true
		}
		p.mu.Unlock()

		start := p.o.now()
		dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := p.deleteConntrack(dctx, ports)
		cancel()
		p.mu.Lock()
		p.inFlight, p.inFlightDone = nil, nil
		p.mu.Unlock()
		close(inFlightDone)
		if err == nil {
			failures = 0
			p.markClean(ports)
			p.o.log.Debug().Int("conntrack_ports", len(ports)).Dur("elapsed_ms", p.o.now().Sub(start)).Msg("conntrack entries deleted")
			continue
		}
		err = fmt.Errorf("delete conntrack entries of udp ports %s: %w", describe(ports), err)
		failures++
		p.mu.Lock()
		for _, port := range ports {
			p.pendingFlush[port] = true
		}
		if failures == flushAttempts || ctx.Err() != nil {
			p.flushDone, p.flushErr = nil, err
			p.mu.Unlock()
			p.o.log.Error().Err(err).Msg("conntrack entries not deleted; trying again at the next sync")
			return
		}
		p.mu.Unlock()
		p.o.log.Warn().Err(err).Dur("retry_in", p.o.flushRetry).Msg("conntrack deletion failed; retrying")
		select {
		case <-time.After(p.o.flushRetry):
		case <-ctx.Done():
		}
	}
}

// markClean records ports whose entries were deleted as clean, unless they are forwarded, or
// about to be, or left again since.
func (p *Plane) markClean(ports []uint16) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.known == nil {
		return
	}
	for _, port := range ports {
		_, wanted := p.lastWant[port]
		_, forwarded := p.known.dnat[port]
		if !wanted && !forwarded && !p.pendingFlush[port] {
			p.clean[port] = true
		}
	}
}

// Settle waits until the read-back and the conntrack deletions Sync started are over, and
// reports why ports were left when the last deletion gave up.
func (p *Plane) Settle(ctx context.Context) error {
	for {
		p.mu.Lock()
		done, err := p.flushDone, p.flushErr
		if p.readDone != nil {
			done = p.readDone
		}
		p.mu.Unlock()
		if done == nil {
			return err
		}
		select {
		case <-done:
		case <-ctx.Done():
			return fmt.Errorf("wait for the media plane's read-back and conntrack deletions: %w", ctx.Err())
		}
	}
}

// desired flattens want into port → backend, leaving out what the plane must not program.
func (p *Plane) desired(want map[string][]Mapping) (map[uint16]netip.AddrPort, []error) {
	out := make(map[uint16]netip.AddrPort, len(want))
	owner := make(map[uint16]string, len(want))
	var invalid []error
	for key, ms := range want {
		for _, m := range ms {
			if !p.cfg.Ports.Contains(m.PublicPort) {
				invalid = append(invalid, fmt.Errorf("route %s: public port %d outside %s", key, m.PublicPort, p.cfg.Ports))
				continue
			}
			if err := p.CheckBackend(m.Backend); err != nil {
				invalid = append(invalid, fmt.Errorf("route %s: %w", key, err))
				continue
			}
			if other, dup := owner[m.PublicPort]; dup {
				// Which of the two wins would depend on map order; refusing both is stable.
				invalid = append(invalid, fmt.Errorf("routes %s and %s both want public port %d", other, key, m.PublicPort))
				delete(out, m.PublicPort)
				continue
			}
			owner[m.PublicPort] = key
			out[m.PublicPort] = m.Backend
		}
	}
	return out, invalid
}

// applyResult describes one apply: the map's change, how many iptables lines it wrote, and how
// long the read-back, the map's transaction and the restore took.
type applyResult struct {
	plan                   mapPlan
	lines                  int
	readBack, ensured      bool
	read, mapTime, restore time.Duration
}

// apply brings the kernel to desired: the table's layout when it is not current, the map's
// elements, then the iptables rules when they differ, so that an earlier version's per-port rules
// go only once the map holds their ports. A change that would write nothing is not sent.
func (p *Plane) apply(ctx context.Context, desired map[uint16]netip.AddrPort, readBack bool) (applyResult, error) {
	res := applyResult{readBack: readBack}
	if readBack {
		t := p.o.now()
		if _, err := p.readBack(ctx); err != nil {
			return res, err
		}
		res.read = p.o.now().Sub(t)
	}
	// p.known is only written under p.syncMu, which is held: planning needs no p.mu.
	next := &kernelState{dnat: p.known.dnat, current: p.known.current, static: p.known.static}
	if !next.current {
		t := p.o.now()
		elements, err := p.o.dnat.Ensure(ctx, p.layout())
		res.mapTime = p.o.now().Sub(t)
		if err != nil {
			p.setKnown(nil)
			return res, fmt.Errorf("write the DNAT map's layout: %w", err)
		}
		next.dnat, next.current, res.ensured = elements, true, true
	}
	mp := planMap(next.dnat, next.static.legacy.dnat, desired)
	res.plan = mp
	p.mu.Lock()
	for _, port := range mp.flush {
		if _, kept := desired[port]; !kept {
			// A port that leaves the kernel without having been released (its route vanished
			// while the edge was down) still gets its quarantine.
			p.alloc.Reserve(port)
		}
	}
	p.mu.Unlock()
	// Owed until a sync gets through: once the change may have reached the kernel, the plan
	// that flushes these ports is not made again.
	for _, port := range mp.flush {
		p.owed[port] = true
	}
	if mp.change.Len() > 0 {
		t := p.o.now()
		err := p.o.dnat.Apply(ctx, mp.change)
		res.mapTime += p.o.now().Sub(t)
		if err != nil {
			p.setKnown(nil)
			return res, fmt.Errorf("apply %d map changes: %w", mp.change.Len(), err)
		}
		dnat := maps.Clone(next.dnat)
		for _, port := range mp.change.Delete {
			delete(dnat, port)
		}
		maps.Copy(dnat, mp.change.Set)
		next.dnat = dnat
	}
	batch, static := planStatic(next.static, p.settings())
	if batch.Len() > 0 {
		t := p.o.now()
		if err := p.o.runner.Restore(ctx, batch.Bytes()); err != nil {
			p.setKnown(nil)
			return res, fmt.Errorf("apply %d iptables rule changes: %w", batch.Len(), err)
		}
		res.restore = p.o.now().Sub(t)
		res.lines = batch.Len()
	}
	next.static = static
	if p.touched != nil {
		for _, port := range mp.flush {
			p.touched[port] = true
		}
		for _, port := range mp.change.Delete {
			p.touched[port] = true
		}
		for port := range mp.change.Set {
			p.touched[port] = true
		}
		p.reshaped = p.reshaped || res.ensured || batch.Len() > 0
	}
	p.setKnown(next)
	return res, nil
}

// Close stops the plane: it waits for a read-back under way, stops the background conntrack
// deletions (the next plane deletes every unforwarded port's entries at its start) and closes the
// netlink sockets of the DNAT map and of the conntrack cleaner. The kernel keeps what the plane
// wrote.
func (p *Plane) Close() {
	p.syncMu.Lock()
	if p.closed {
		p.syncMu.Unlock()
		return
	}
	p.closed = true
	p.stop()
	p.mu.Lock()
	reading, flushing := p.readDone, p.flushDone
	p.mu.Unlock()
	p.syncMu.Unlock()
	for _, done := range []chan struct{}{reading, flushing} {
		if done != nil {
			<-done
		}
	}
	if err := p.o.dnat.Close(); err != nil {
		p.o.log.Warn().Err(err).Msg("close the DNAT map's netlink socket")
	}
	closeCleaner(p.o.cleaner)
}

// closeCleaner closes a conntrack cleaner that keeps sockets (conntrack.Netlink does).
func closeCleaner(c conntrack.Cleaner) {
	if cl, ok := c.(io.Closer); ok {
		cl.Close()
	}
}

// setKnown replaces the plane's picture of the kernel. p.syncMu is held.
func (p *Plane) setKnown(st *kernelState) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.known = st
}

// read reads livegate's part of the kernel: the DNAT map and the iptables rules.
func (p *Plane) read(ctx context.Context) (*kernelState, error) {
	m, err := p.o.dnat.Read(ctx, p.layout())
	if err != nil {
		return nil, fmt.Errorf("read the DNAT map: %w", err)
	}
	nat, filter, err := save(ctx, p.o.runner)
	if err != nil {
		return nil, err
	}
	return &kernelState{dnat: m.Elements, current: m.Current, static: readStatic(nat, filter)}, nil
}

// readBack reads the kernel as the plane's picture of it. p.syncMu is held, p.mu is not.
func (p *Plane) readBack(ctx context.Context) (*kernelState, error) {
	st, err := p.read(ctx)
	if err != nil {
		p.setKnown(nil)
		return nil, err
	}
	p.readAt = p.o.now()
	p.mu.Lock()
	defer p.mu.Unlock()
	p.known = st
	if !p.startQueued {
		// What the kernel holds for the ports nothing forwards is unknown after a start: one
		// deletion of them all, in the background, makes them clean.
		p.startQueued = true
		for port := int(p.cfg.Ports.First); port <= int(p.cfg.Ports.Last); port++ {
			_, mapped := st.dnat[uint16(port)]
			_, legacy := st.static.legacy.dnat[uint16(port)]
			if !mapped && !legacy {
				p.pendingFlush[uint16(port)] = true
			}
		}
	}
	return st, nil
}

func save(ctx context.Context, r iptables.Runner) (nat, filter *iptables.Table, err error) {
	tables := make([]*iptables.Table, 2)
	for i, name := range []string{tableNAT, tableFilter} {
		out, err := r.Save(ctx, name)
		if err != nil {
			return nil, nil, fmt.Errorf("read %s table: %w", name, err)
		}
		rs, err := iptables.ParseSave(out)
		if err != nil {
			return nil, nil, fmt.Errorf("read %s table: %w", name, err)
		}
		tables[i] = rs.Table(name)
	}
	return tables[0], tables[1], nil
}

// Cleanup removes everything livegate's media plane put in the kernel: its nftables table, the
// jumps from the built-in chains to its iptables chains and those chains (an earlier version's
// per-port chains included), and the conntrack entries of the ports they forwarded (for the
// destination address each matched; any address when the table's rule is not livegate's shape).
// Rules that are not livegate's are left alone. It takes the same options as New (WithNetns, WithRunner,
// WithDNATMap, WithConntrack, WithLogger).
func Cleanup(ctx context.Context, opts ...Option) error {
	o, err := buildOptions(netip.Addr{}, opts)
	if err != nil {
		return fmt.Errorf("clean up media rules: %w", err)
	}
	defer o.dnat.Close()
	defer closeCleaner(o.cleaner)
	m, err := o.dnat.Read(ctx, dnatmap.Layout{})
	if err != nil {
		return fmt.Errorf("clean up media rules: read the DNAT map: %w", err)
	}
	nat, filter, err := save(ctx, o.runner)
	if err != nil {
		return fmt.Errorf("clean up media rules: %w", err)
	}
	// The map's ports are flushed for the address its rule matches; a legacy rule's for its own.
	byAddr := map[netip.Addr][]uint16{}
	for port := range m.Elements {
		byAddr[m.Layout.Public] = append(byAddr[m.Layout.Public], port)
	}
	legacy := readLegacy(nat)
	for port := range legacy.dnat {
		byAddr[legacy.public[port]] = append(byAddr[legacy.public[port]], port)
	}
	if err := o.dnat.Remove(ctx); err != nil {
		return fmt.Errorf("clean up media rules: %w", err)
	}
	batch := cleanupBatch(nat, filter)
	if batch.Len() > 0 {
		if err := o.runner.Restore(ctx, batch.Bytes()); err != nil {
			return fmt.Errorf("clean up media rules: %w", err)
		}
	}
	var errs []error
	flushed := 0
	for addr, ports := range byAddr {
		slices.Sort(ports)
		ports = slices.Compact(ports)
		flushed += len(ports)
		if err := o.cleaner.DeleteUDP(ctx, addr, ports); err != nil {
			errs = append(errs, fmt.Errorf("clean up media conntrack entries for %s: %w", addr, err))
		}
	}
	o.log.Info().Int("mappings", len(m.Elements)).Int("batch_lines", batch.Len()).Int("conntrack_ports", flushed).
		Msg("media rules cleaned up")
	return errors.Join(errs...)
}
