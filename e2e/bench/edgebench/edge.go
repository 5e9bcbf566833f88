// Package edgebench runs the real livegate-edgeproxy inside a netns.Topology against a real
// nats-server and measures it from outside: route programming latency under churn, cold-start
// programming of a full bucket, and the edge's memory and CPU with the routes held. "Routable"
// is checked independently of the edge's own report: HAProxy's runtime API must find the session
// in the map, and a UDP probe sent to the public port must come back from the backend through
// the DNAT rule.
package edgebench

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/livegate/livegate/e2e/internal/netns"
	"github.com/livegate/livegate/e2e/internal/proc"
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
	natsAddr      = "127.0.0.1:4222"
	adminAddr     = "127.0.0.1:9470"
	SignalingPort = 48322
	// EchoPort is where the node's UDP echo listens; every backend port is redirected to it.
	EchoPort = 29999
	// EdgeID is the edge's id; the bench's routes name it.
	EdgeID = "lgbedge"
	pool   = "bench"
)

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
	echo    *net.UDPConn
}

// NewEnv starts nats-server in the edge namespace, connects to it and sets up the node's echo.
func NewEnv(ctx context.Context, topo *netns.Topology, o Options) (*Env, error) {
	dir, err := os.MkdirTemp("", "lgb-edge-")
	if err != nil {
		return nil, err
	}
	e := &Env{Topo: topo, Dir: dir, opts: o}
	host, port, _ := net.SplitHostPort(natsAddr)
	e.NATS, err = proc.Start("nats-server", topo.Edge.Command(ctx, o.NATSServer, "-js", "-a", host, "-p", port,
		"-sd", filepath.Join(dir, "nats")), nil)
	if err != nil {
		e.Close()
		return nil, err
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		e.NC, err = nats.Connect("nats://"+natsAddr, nats.SetCustomDialer(topo.Edge.Dialer(2*time.Second)), nats.Name("livegate-bench"))
		if err == nil {
			break
		}
		if time.Now().After(deadline) || e.NATS.Exited() {
			e.Close()
			return nil, fmt.Errorf("connect to nats-server in %s: %w (output: %.300s)", topo.Edge.Name, err, e.NATS.Output())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if e.JS, err = jetstream.New(e.NC); err != nil {
		e.Close()
		return nil, err
	}
	if e.Buckets, err = kvstore.Ensure(ctx, e.JS); err != nil {
		e.Close()
		return nil, err
	}
	if o.Echo {
		if err := e.startEcho(ctx); err != nil {
			e.Close()
			return nil, err
		}
	}
	return e, nil
}

// startEcho answers every UDP packet to a backend port in node 1: the ports are redirected to one
// socket, so any number of routes can be probed.
func (e *Env) startEcho(ctx context.Context) error {
	node := e.Topo.Nodes[0]
	if err := node.Run(ctx, "iptables", "-t", "nat", "-A", "PREROUTING", "-p", "udp", "--dport", "30000:32767",
		"-j", "REDIRECT", "--to-ports", strconv.Itoa(EchoPort)); err != nil {
		return fmt.Errorf("node echo redirect: %w", err)
	}
	if err := node.Do(func() (err error) {
		e.echo, err = net.ListenUDP("udp4", &net.UDPAddr{Port: EchoPort})
		return err
	}); err != nil {
		return fmt.Errorf("node echo: %w", err)
	}
	_ = e.echo.SetReadBuffer(4 << 20)
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := e.echo.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			_, _ = e.echo.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	return nil
}

// StartEdge starts livegate-edgeproxy in the edge namespace.
func (e *Env) StartEdge(ctx context.Context) error {
	args := []string{"run", "--edge-id", EdgeID, "--pool", pool, "--public-host", netns.EdgePublic.String(),
		"--signaling-port", strconv.Itoa(SignalingPort), "--signaling-bind", netns.EdgePublic.String(), "--tls-self-signed",
		"--state-dir", filepath.Join(e.Dir, "state"), "--haproxy-stop-on-exit",
		"--backend-cidrs", netns.BackendCIDRs.String(), "--public-ip", netns.EdgePublic.String(),
		"--nats-url", "nats://" + natsAddr, "--admin-addr", adminAddr, "--log-format", "json"}
	switch {
	case e.opts.LogLevel != "":
		args = append(args, "--log-level", e.opts.LogLevel)
	case e.opts.LogFile != "":
		args = append(args, "--log-level", "info")
	default:
		args = append(args, "--log-level", "warn")
	}
	args = append(args, e.opts.ExtraArgs...)
	cmd := e.Topo.Edge.Command(ctx, e.opts.Edge, args...)
	cmd.Env = append(os.Environ(), e.opts.Env...)
	p, err := proc.Start("edge", cmd, nil)
	if err != nil {
		return err
	}
	e.EdgeP = p
	return nil
}

// WaitEdgeHealthy waits for the edge's /healthz.
func (e *Env) WaitEdgeHealthy(ctx context.Context, timeout time.Duration) error {
	client := e.Topo.Edge.HTTPClient(time.Second)
	deadline := time.Now().Add(timeout)
	for {
		resp, err := client.Get("http://" + adminAddr + "/healthz")
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
		}
		if e.EdgeP.Exited() {
			return fmt.Errorf("edge exited: %.600s", e.EdgeP.Output())
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("edge not healthy after %s: %v (output: %.600s)", timeout, err, e.EdgeP.Output())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Close stops everything Env started.
func (e *Env) Close() {
	if e.echo != nil {
		_ = e.echo.Close()
	}
	if e.NC != nil {
		e.NC.Close()
	}
	if e.EdgeP != nil {
		_ = e.EdgeP.Stop(5 * time.Second)
		if e.opts.LogFile != "" {
			_ = os.WriteFile(e.opts.LogFile, []byte(e.EdgeP.Output()), 0o644)
		}
	}
	if e.NATS != nil {
		_ = e.NATS.Stop(3 * time.Second)
	}
	_ = os.RemoveAll(e.Dir)
}

// StateFile is a file in the edge's state directory.
func (e *Env) StateFile(name string) string { return filepath.Join(e.Dir, "state", name) }

// HAProxyPids lists the supervised HAProxy's master and workers.
func (e *Env) HAProxyPids() []int {
	b, err := os.ReadFile(e.StateFile("haproxy.pid"))
	if err != nil {
		return nil
	}
	master, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return nil
	}
	pids := []int{master}
	children, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", master, master))
	for _, f := range strings.Fields(string(children)) {
		if p, err := strconv.Atoi(f); err == nil {
			pids = append(pids, p)
		}
	}
	return pids
}

// SignalingBackend and MediaBackend are route i's backends on node 1.
func SignalingBackend(i int) netip.AddrPort {
	return netip.AddrPortFrom(netns.NodeAddr(1), uint16(30000+i%2700))
}

// MediaBackend is route i's one media backend.
func MediaBackend(i int) netip.AddrPort {
	return netip.AddrPortFrom(netns.NodeAddr(1), uint16(30000+(i+1)%2700))
}

// RouteKey is route i's key (instance id).
func RouteKey(i int) string { return "lgbi" + strconv.Itoa(i) }

// Route is route i of the bench: its own session id, a signaling backend and one media backend
// on node 1.
func Route(i int, ttl time.Duration) (key string, value []byte, err error) {
	key = RouteKey(i)
	r := &livegatev1.Route{
		SessionId:        SessionID(i),
		InstanceId:       key,
		SignalingBackend: SignalingBackend(i).String(),
		MediaBackends:    []string{MediaBackend(i).String()},
		EdgeId:           EdgeID,
		Pool:             pool,
		LeaseTtl:         durationpb.New(ttl),
		RenewedAt:        timestamppb.Now(),
	}
	value, err = wire.Marshal(r)
	return key, value, err
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
	out, err := e.haproxy(ctx, "get map "+e.StateFile("sessions.map")+" "+sessionID)
	if err != nil {
		return false, err
	}
	return strings.Contains(out, "found=yes"), nil
}

// MapCount is the number of entries in HAProxy's map.
func (e *Env) MapCount(ctx context.Context) (int, error) {
	out, err := e.haproxy(ctx, "show map "+e.StateFile("sessions.map"))
	if err != nil {
		return 0, err
	}
	n := 0
	for _, l := range strings.Split(out, "\n") {
		if strings.TrimSpace(l) != "" {
			n++
		}
	}
	return n, nil
}

func (e *Env) haproxy(ctx context.Context, cmd string) (string, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", e.StateFile("haproxy.sock"))
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte(cmd + "\n")); err != nil {
		return "", err
	}
	var b strings.Builder
	buf := make([]byte, 64<<10)
	for {
		n, err := c.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			break
		}
	}
	return b.String(), nil
}

// DNATCount counts the edge's per-port DNAT rules in the edge namespace.
func (e *Env) DNATCount(ctx context.Context) (int, error) {
	out, err := e.Topo.Edge.Output(ctx, "iptables-save", "-t", "nat")
	if err != nil {
		return 0, err
	}
	return strings.Count(out, "-j DNAT"), nil
}

// Probe sends a UDP packet to the public port from the client namespace until the echo behind
// the DNAT answers or timeout passes. Each try uses a fresh source port: a packet that arrives
// before the rule leaves a conntrack entry without NAT that would capture later tries.
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
	deadline := time.Now().Add(timeout)
	payload := []byte("probe")
	buf := make([]byte, 64)
	for {
		var c *net.UDPConn
		if err := e.Topo.Client.Do(func() (err error) {
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
			return nil, fmt.Errorf("no echo through %s within %s", public, timeout)
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
// either the flow's conntrack entry (with its NAT binding) or the port's DNAT rule is left, so
// an unanswered one means both are gone.
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
