// Package edgebench runs the real livegate-edgeproxy inside a netns.Topology against a real
// nats-server and measures it from outside: route programming latency under churn, cold-start
// programming of a full bucket, and the edge's memory and CPU with the routes held. "Routable"
// is checked independently of the edge's own report: HAProxy's runtime API must find the session
// in the map, and a UDP probe sent to the public port must come back from the backend through
// the DNAT.
package edgebench

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/livegate/livegate/e2e/internal/netns"
	"github.com/livegate/livegate/e2e/internal/proc"
	"github.com/livegate/livegate/e2e/internal/stack"
	"github.com/livegate/livegate/pkg/kvstore"
	"github.com/livegate/livegate/pkg/wire"
	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Fixed addresses inside the topology's own namespaces, where nothing else listens.
const (
	SignalingPort = stack.SignalingPort
	// EchoPort is where the node's UDP echo listens; every backend port is redirected to it.
	EchoPort = 29999
	// EdgeID is the edge's id; the bench's routes name it.
	EdgeID = "lgbedge"
	pool   = "bench"
)

// adminAddr is the edge's admin API, inside the edge namespace.
const adminAddr = stack.AdminAddr

// natsURL is the NATS server's, inside the edge namespace.
var natsURL = fmt.Sprintf("nats://127.0.0.1:%d", stack.NATSPort)

// Options locate the programs.
type Options struct {
	Edge       string // livegate-edgeproxy binary
	NATSServer string // nats-server binary
	// ExtraArgs are appended to the edge's command line.
	ExtraArgs []string
	// Echo redirects every backend port of node 1 to a UDP echo, for Probe.
	Echo bool
	// Env is added to the edge's environment.
	Env []string
	// LogFile, when set, runs the edge at log level info (its per-sync figures) and receives
	// the edge's log when the Env closes.
	LogFile string
	// LogLevel overrides the edge's log level (debug: per-pass phases, which Churn reads).
	LogLevel string
}

// Env is a running NATS server (and, after StartEdge, an edge) in a topology.
type Env struct {
	Topo    *netns.Topology
	Dir     string
	NATS    *proc.Proc
	EdgeP   *proc.Proc
	NC      *nats.Conn
	JS      jetstream.JetStream
	Buckets *kvstore.Buckets
	opts    Options
	procs   stack.Group
	kv      *stack.KV
	echo    *net.UDPConn
}

// NewEnv starts nats-server in the edge namespace, connects to it and sets up the node's echo.
func NewEnv(ctx context.Context, topo *netns.Topology, o Options) (*Env, error) {
	dir, err := os.MkdirTemp("", "lgb-edge-")
	if err != nil {
		return nil, err
	}
	e := &Env{Topo: topo, Dir: dir, opts: o}
	srv, err := e.procs.StartNATS(ctx, topo.Edge, stack.NATSConfig{Dir: filepath.Join(dir, "nats"), Listen: netip.MustParseAddr("127.0.0.1"), Bin: o.NATSServer})
	if err != nil {
		e.Close()
		return nil, err
	}
	e.NATS = srv.P
	if e.kv, err = stack.DialKV(ctx, natsURL, 10*time.Second, nil, nats.SetCustomDialer(topo.Edge.Dialer(2*time.Second)), nats.Name("livegate-bench")); err != nil {
		e.Close()
		return nil, fmt.Errorf("nats-server in %s: %w (output: %.300s)", topo.Edge.Name, err, e.NATS.Output())
	}
	e.NC, e.JS, e.Buckets = e.kv.NC, e.kv.JS, e.kv.Buckets
	if o.Echo {
		if e.echo, err = StartEcho(ctx, topo.Nodes[0]); err != nil {
			e.Close()
			return nil, err
		}
	}
	return e, nil
}

// StartEcho answers every UDP packet to a backend port (30000-32767) in node: the ports are
// redirected to one socket, so any number of routes can be probed. Closing the socket ends it.
func StartEcho(ctx context.Context, node *netns.Namespace) (*net.UDPConn, error) {
	if err := node.Run(ctx, "iptables", "-t", "nat", "-A", "PREROUTING", "-p", "udp", "--dport", "30000:32767",
		"-j", "REDIRECT", "--to-ports", strconv.Itoa(EchoPort)); err != nil {
		return nil, fmt.Errorf("node echo redirect: %w", err)
	}
	var echo *net.UDPConn
	if err := node.Do(func() (err error) {
		echo, err = net.ListenUDP("udp4", &net.UDPAddr{Port: EchoPort})
		return err
	}); err != nil {
		return nil, fmt.Errorf("node echo: %w", err)
	}
	_ = echo.SetReadBuffer(4 << 20)
	go serveEcho(echo, func() bool { return true })
	return echo, nil
}

// serveEcho sends every datagram c reads back to its sender while answer says so, until c is
// closed.
func serveEcho(c *net.UDPConn, answer func() bool) {
	buf := make([]byte, 2048)
	for {
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		if answer() {
			_, _ = c.WriteToUDPAddrPort(buf[:n], from)
		}
	}
}

// StartEdge starts livegate-edgeproxy in the edge namespace.
func (e *Env) StartEdge(ctx context.Context) error {
	extra := []string{"--signaling-bind", netns.EdgePublic.String(), "--admin-addr", stack.AdminAddr}
	switch {
	case e.opts.LogLevel != "":
		extra = append(extra, "--log-level", e.opts.LogLevel)
	case e.opts.LogFile != "":
		extra = append(extra, "--log-level", "info")
	default:
		extra = append(extra, "--log-level", "warn")
	}
	args := append([]string{"run"}, stack.EdgeArgs(stack.EdgeConfig{
		ID: EdgeID, Pool: pool, Public: netns.EdgePublic, NATSURL: natsURL, StateDir: e.StateFile(""),
		LogFormat: "json", Extra: append(extra, e.opts.ExtraArgs...),
	})...)
	cmd := e.Topo.Edge.Command(context.WithoutCancel(ctx), e.opts.Edge, args...)
	cmd.Env = append(os.Environ(), e.opts.Env...)
	p, err := e.procs.StartCmd("edge", cmd)
	if err != nil {
		return err
	}
	e.EdgeP = p
	return nil
}

// WaitEdgeHealthy waits for the edge's /healthz.
func (e *Env) WaitEdgeHealthy(ctx context.Context, timeout time.Duration) error {
	if err := stack.WaitHealthy(ctx, e.EdgeP, e.Topo.Edge, timeout); err != nil {
		return fmt.Errorf("%w (output: %.600s)", err, e.EdgeP.Output())
	}
	return nil
}

// Close stops everything Env started.
func (e *Env) Close() {
	if e.echo != nil {
		_ = e.echo.Close()
	}
	if e.kv != nil {
		e.kv.Close()
	}
	_ = e.procs.Stop(5 * time.Second)
	if e.EdgeP != nil && e.opts.LogFile != "" {
		_ = os.WriteFile(e.opts.LogFile, []byte(e.EdgeP.Output()), 0o644)
	}
	_ = os.RemoveAll(e.Dir)
}

// StateFile is a file in the edge's state directory.
func (e *Env) StateFile(name string) string { return filepath.Join(e.Dir, "state", name) }

// HAProxyPids lists the supervised HAProxy's master and workers.
func (e *Env) HAProxyPids() []int { return stack.SupervisedPids(e.StateFile("")) }

// SignalingBackend and MediaBackend are route i's backends on node 1.
func SignalingBackend(i int) netip.AddrPort { return signalingBackend(netns.NodeAddr(1), i) }

// MediaBackend is route i's one media backend.
func MediaBackend(i int) netip.AddrPort { return mediaBackend(netns.NodeAddr(1), i) }

func signalingBackend(node netip.Addr, i int) netip.AddrPort {
	return netip.AddrPortFrom(node, uint16(30000+i%2700))
}

func mediaBackend(node netip.Addr, i int) netip.AddrPort {
	return netip.AddrPortFrom(node, uint16(30000+(i+1)%2700))
}

// RouteKey is route i's key (instance id).
func RouteKey(i int) string { return "lgbi" + strconv.Itoa(i) }

// Route is route i of the bench: its own session id, a signaling backend and one media backend
// on node 1.
func Route(i int, ttl time.Duration) (key string, value []byte, err error) {
	value, err = RouteValue(i, netns.NodeAddr(1), EdgeID, pool, ttl)
	return RouteKey(i), value, err
}

// RouteValue is what an agent's publisher writes for route i with its backends on node (where
// StartEcho answers), for edgeID (empty: a pool route the pool's edges claim) in pool.
func RouteValue(i int, node netip.Addr, edgeID, pool string, ttl time.Duration) ([]byte, error) {
	return wire.Marshal(&livegatev1.Route{
		SessionId:        SessionID(i),
		InstanceId:       RouteKey(i),
		SignalingBackend: signalingBackend(node, i).String(),
		MediaBackends:    []string{mediaBackend(node, i).String()},
		EdgeId:           edgeID,
		Pool:             pool,
		LeaseTtl:         durationpb.New(ttl),
		RenewedAt:        timestamppb.Now(),
	})
}

// SessionID is route i's session id.
func SessionID(i int) string { return "lgbs" + strconv.Itoa(i) }

// PutRoute writes route i with a lease.
func (e *Env) PutRoute(ctx context.Context, i int, ttl time.Duration) error {
	key, val, err := Route(i, ttl)
	if err != nil {
		return err
	}
	_, err = kvstore.PutTTL(ctx, e.JS, kvstore.RoutesBucket, key, val, ttl)
	return err
}

// DeleteRoute ends route i.
func (e *Env) DeleteRoute(ctx context.Context, i int) error {
	return e.Buckets.Routes.Delete(ctx, RouteKey(i))
}

// TURNCredential is the TURN credential the edge published in route i's endpoint (with --turn),
// as an orchestrator reads it.
func (e *Env) TURNCredential(ctx context.Context, i int) (*livegatev1.TurnRelay, error) {
	en, err := e.Buckets.Endpoints.Get(ctx, RouteKey(i))
	if err != nil {
		return nil, fmt.Errorf("endpoint of route %d: %w", i, err)
	}
	var ep livegatev1.Endpoint
	if err := wire.Unmarshal(en.Value(), &ep); err != nil {
		return nil, fmt.Errorf("endpoint of route %d: %w", i, err)
	}
	if ep.GetTurn() == nil {
		return nil, fmt.Errorf("endpoint of route %d has no TURN credential (edge without --turn?)", i)
	}
	return ep.GetTurn(), nil
}

// MapHas asks HAProxy's runtime API whether the session is in the map.
func (e *Env) MapHas(ctx context.Context, sessionID string) (bool, error) {
	return stack.EdgeHAProxy(e.StateFile("")).MapHas(ctx, sessionID)
}

// MapCount is the number of entries in HAProxy's map.
func (e *Env) MapCount(ctx context.Context) (int, error) {
	m, err := stack.EdgeHAProxy(e.StateFile("")).ShowMap(ctx)
	return len(m), err
}

// DNATCount counts the public ports the edge's DNAT map forwards in the edge namespace.
func (e *Env) DNATCount(ctx context.Context) (int, error) {
	m, err := stack.DNATMap(ctx, e.Topo.Edge)
	return len(m), err
}

// Probe sends a UDP packet to the public port from the client namespace until the echo behind
// the DNAT answers or timeout passes.
func (e *Env) Probe(ctx context.Context, public netip.AddrPort, timeout time.Duration) error {
	c, err := e.probeConn(ctx, public, timeout)
	if err != nil {
		return err
	}
	return c.Close()
}

// probeConn is Probe returning the socket whose datagram was echoed: its flow has the route's
// NAT binding in conntrack, which waitUnroutable probes again once the route ended.
func (e *Env) probeConn(ctx context.Context, public netip.AddrPort, timeout time.Duration) (*net.UDPConn, error) {
	c, err := probeFrom(ctx, e.Topo.Client, public, time.Now().Add(timeout))
	if err != nil {
		return nil, fmt.Errorf("%w within %s", err, timeout)
	}
	return c, nil
}

// Probe sends a UDP packet to public from client until the echo behind the DNAT answers or
// deadline passes.
func Probe(ctx context.Context, client *netns.Namespace, public netip.AddrPort, deadline time.Time) error {
	c, err := probeFrom(ctx, client, public, deadline)
	if err != nil {
		return err
	}
	return c.Close()
}

// probeFrom is Probe returning the echoed socket. Each try uses a fresh source port: a packet
// that arrives before the rule leaves a conntrack entry without NAT that would capture later
// tries.
func probeFrom(ctx context.Context, client *netns.Namespace, public netip.AddrPort, deadline time.Time) (*net.UDPConn, error) {
	payload := []byte("probe")
	buf := make([]byte, 64)
	for {
		var c *net.UDPConn
		if err := client.Do(func() (err error) {
			c, err = net.ListenUDP("udp4", &net.UDPAddr{})
			return err
		}); err != nil {
			return nil, err
		}
		_, err := c.WriteToUDPAddrPort(payload, public)
		if err == nil {
			_ = c.SetReadDeadline(time.Now().Add(3 * time.Millisecond))
			n, _, rerr := c.ReadFromUDPAddrPort(buf)
			if rerr == nil && string(buf[:n]) == string(payload) {
				return c, nil
			}
		}
		_ = c.Close()
		if time.Now().After(deadline) || ctx.Err() != nil {
			return nil, fmt.Errorf("no echo through %s", public)
		}
	}
}

// unansweredAfter is how long a probe of an ended route waits for its echo before it counts
// as unanswered, and unansweredRun how many unanswered probes in a row make the route
// unroutable: a late echo on a loaded host is not taken for a removed rule.
const (
	unansweredAfter = 20 * time.Millisecond
	unansweredRun   = 3
)

// udpGone probes public from the socket of an echoed flow until a run of unansweredRun probes
// goes unanswered, and returns when the first of them was sent. Such a probe is echoed while
// either the flow's conntrack entry (with its NAT binding) or the port's DNAT map element is
// left, so an unanswered one means both are gone.
func udpGone(ctx context.Context, c *net.UDPConn, public netip.AddrPort, deadline time.Time) (time.Time, error) {
	buf := make([]byte, 64)
	var seq uint64
	var firstMiss time.Time
	misses := 0
	for {
		seq++
		want := "gone?" + strconv.FormatUint(seq, 10)
		sent := time.Now()
		if _, err := c.WriteToUDPAddrPort([]byte(want), public); err != nil {
			return time.Time{}, fmt.Errorf("probe %s: %w", public, err)
		}
		answered := false
		_ = c.SetReadDeadline(sent.Add(unansweredAfter))
		for {
			n, _, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				break
			}
			if string(buf[:n]) == want {
				answered = true
				break
			}
		}
		switch {
		case answered:
			misses = 0
		case misses == 0:
			firstMiss, misses = sent, 1
		default:
			misses++
		}
		if misses == unansweredRun {
			return firstMiss, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return time.Time{}, fmt.Errorf("%s still answered after the route ended", public)
		}
		if answered {
			time.Sleep(mapPollInterval)
		}
	}
}

// Endpoints follows livegate_endpoints: the public port the edge assigned to each key, and
// when it was first seen.
type Endpoints struct {
	mu      sync.Mutex
	seen    map[string]seenEndpoint
	waiters map[string][]chan seenEndpoint
	count   int
}

type seenEndpoint struct {
	port uint16
	at   time.Time
}

// WatchEndpoints starts following the endpoints bucket until ctx ends.
func (e *Env) WatchEndpoints(ctx context.Context) *Endpoints {
	w := &Endpoints{seen: map[string]seenEndpoint{}, waiters: map[string][]chan seenEndpoint{}}
	go func() {
		_ = kvstore.Watch(ctx, e.Buckets.Endpoints, ">", kvstore.Handler{
			Snapshot: func(m map[string]kvstore.Entry) {
				for _, en := range m {
					w.take(en)
				}
			},
			Update: w.take,
		})
	}()
	return w
}

func (w *Endpoints) take(en kvstore.Entry) {
	now := time.Now()
	w.mu.Lock()
	defer w.mu.Unlock()
	if en.Deleted {
		if _, ok := w.seen[en.Key]; ok {
			w.count--
		}
		delete(w.seen, en.Key)
		return
	}
	var ep livegatev1.Endpoint
	if err := wire.Unmarshal(en.Value, &ep); err != nil || len(ep.GetPublicUdpPorts()) == 0 {
		return
	}
	if _, ok := w.seen[en.Key]; ok {
		return
	}
	s := seenEndpoint{port: uint16(ep.GetPublicUdpPorts()[0]), at: now}
	w.seen[en.Key] = s
	w.count++
	for _, ch := range w.waiters[en.Key] {
		ch <- s
	}
	delete(w.waiters, en.Key)
}

// Count is the number of endpoints with a public port.
func (w *Endpoints) Count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.count
}

// Wait returns the public port of key and when its endpoint appeared.
func (w *Endpoints) Wait(ctx context.Context, key string, timeout time.Duration) (uint16, time.Time, error) {
	w.mu.Lock()
	if s, ok := w.seen[key]; ok {
		w.mu.Unlock()
		return s.port, s.at, nil
	}
	ch := make(chan seenEndpoint, 1)
	w.waiters[key] = append(w.waiters[key], ch)
	w.mu.Unlock()
	select {
	case s := <-ch:
		return s.port, s.at, nil
	case <-time.After(timeout):
		return 0, time.Time{}, fmt.Errorf("endpoint %s: none within %s", key, timeout)
	case <-ctx.Done():
		return 0, time.Time{}, ctx.Err()
	}
}
