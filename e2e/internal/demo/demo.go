// Package demo runs livegate's whole path on one machine and tells what happened: an edge
// (embedded NATS, supervised HAProxy, kernel media forwarding) in its namespace, two apps with
// their agents in theirs, and a client that connects to both through the edge.
package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/livegate/livegate/e2e/internal/netns"
	"github.com/livegate/livegate/e2e/internal/stack"
	"github.com/livegate/livegate/e2e/internal/wsclient"
	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
)

// Options tune a demo run.
type Options struct {
	// Prefix starts the namespace and interface names.
	Prefix string
	// Duration is how long the stack stays up after the story; 0 waits for ctx alone.
	Duration time.Duration
	// BinDir, when set, holds livegate-agent and livegate-edgeproxy already built (`make build`);
	// otherwise the demo builds them.
	BinDir string
	// Verbose sends every process's output to Out as well.
	Verbose bool
	// Out receives the story.
	Out io.Writer
}

// Run builds, starts, tells the story, waits, and cleans up. Cleanup runs on every path,
// including a cancelled ctx (the signal handler's) and a failed step.
func Run(ctx context.Context, o Options) (err error) {
	say := func(format string, args ...any) { fmt.Fprintf(o.Out, format+"\n", args...) }
	if os.Geteuid() != 0 {
		return errors.New("run as root: the demo creates network namespaces, veth links and iptables rules")
	}
	binDir, err := os.MkdirTemp("", "livegate-demo-bin-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(binDir)
	stateDir, err := os.MkdirTemp("", "livegate-demo-state-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(stateDir)

	start := time.Now()
	var bins stack.Binaries
	if o.BinDir != "" {
		say("using livegate-agent and livegate-edgeproxy from %s; building the demo app...", o.BinDir)
		bins, err = stack.Prebuilt(ctx, o.BinDir, binDir)
	} else {
		say("building livegate-agent, livegate-edgeproxy and the demo app...")
		bins, err = stack.Build(ctx, binDir)
	}
	if err != nil {
		return err
	}
	say("built in %s", since(start))

	opts := stack.Options{
		Prefix: o.Prefix, Bins: bins, Dir: stateDir, EdgeID: "edge1", Pool: "demo", LeaseTTL: 15 * time.Second,
		Nodes: []stack.NodeOptions{
			{QuitOnSessionEnded: false, ResumeTimeoutSeconds: 30},
			{QuitOnSessionEnded: false, ResumeTimeoutSeconds: 30},
		},
	}
	if o.Verbose {
		opts.Output = func(name string) io.Writer { return &prefixWriter{w: o.Out, prefix: "  [" + name + "] "} }
	}
	start = time.Now()
	d, err := stack.Start(ctx, opts)
	if err != nil {
		if d != nil {
			say("what the processes wrote:\n%s", tail(d.Logs(), 16000))
		}
		return fmt.Errorf("start the stack: %w", err)
	}
	defer func() {
		if err != nil {
			say("\nwhat the processes wrote:\n%s", tail(d.Logs(), 16000))
		}
		say("\ncleaning up: stopping agents, apps and the edge; deleting namespaces %s*", d.Topo.ID)
		cerr := d.Close()
		left, _ := netns.List(context.Background(), d.Topo.ID)
		if cerr == nil && len(left) == 0 {
			say("clean: no namespace, process, iptables rule or conntrack entry of the demo is left")
		} else {
			say("cleanup incomplete: %v (left: %v)", cerr, left)
		}
	}()

	say("\nnetwork (namespaces %s*, addresses in 198.18.0.0/15):", d.Topo.ID)
	say("  client %s ── %s edge ── 198.19.1.1 / 198.19.2.1 ── node1 %s, node2 %s",
		netns.ClientAddr, netns.EdgePublic, netns.NodeAddr(1), netns.NodeAddr(2))
	say("edge edge1 up in %s: embedded NATS, HAProxy on wss://%s, media UDP %s:%s",
		since(start), d.PublicSignaling(), netns.EdgePublic, stack.MediaPorts)

	var conns []*wsclient.Conn
	defer func() {
		for _, c := range conns {
			_ = c.Close()
		}
	}()
	for _, n := range d.Nodes {
		c, err := session(ctx, d, n, say)
		if err != nil {
			return fmt.Errorf("%s: %w", n.InstanceID, err)
		}
		conns = append(conns, c)
	}

	say("\nthe stack is running; both sessions stay connected. Look around from another terminal:")
	say("  ip netns exec %s iptables-save -t nat        # the DNAT rules", d.Topo.Edge.Name)
	say("  ip netns exec %s conntrack -L -p udp         # the media flows", d.Topo.Edge.Name)
	say("  ip netns exec %s curl -s 127.0.0.1:9470/v1/routes", d.Topo.Edge.Name)
	say("  ip netns exec %s curl -s 127.0.0.1:%d/v1/streaming/ready", d.Nodes[0].NS.Name, stack.AgentPort)
	if o.Duration > 0 {
		say("stopping in %s (DEMO_SECONDS); Ctrl-C stops sooner.", o.Duration)
	} else {
		say("Ctrl-C stops it (DEMO_SECONDS=N stops after N seconds).")
	}
	var timer <-chan time.Time
	if o.Duration > 0 {
		timer = time.After(o.Duration)
	}
	for {
		select {
		case <-ctx.Done():
			say("\nsignal received")
			return nil
		case <-timer:
			return nil
		case <-d.Edge.Done():
			return fmt.Errorf("the edge exited: %v", d.Edge.Err())
		case <-time.After(time.Second):
		}
		for _, n := range d.Nodes {
			if n.Agent.Exited() || n.App.Exited() {
				return fmt.Errorf("%s: agent or app exited (agent %v, app %v)", n.InstanceID, n.Agent.Err(), n.App.Err())
			}
		}
	}
}

// session follows one node from start to a connected client with media, telling each step.
func session(ctx context.Context, d *stack.Deployment, n *stack.Node, say func(string, ...any)) (*wsclient.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	say("\n%s (agent + demo app in namespace %s):", n.InstanceID, n.NS.Name)
	rfc, err := d.Obs.Wait(ctx, 0, n.InstanceID, livegatev1.EventType_EVENT_TYPE_READY_FOR_CONNECTION)
	if err != nil {
		return nil, err
	}
	sid := rfc.Event.GetSessionId()
	r, err := n.Ready(ctx)
	if err != nil {
		return nil, err
	}
	say("  ready for connection, session %s (/v1/streaming/ready: %s)", sid, r)
	prog, err := d.Obs.Wait(ctx, 0, n.InstanceID, livegatev1.EventType_EVENT_TYPE_ROUTE_PROGRAMMED)
	if err != nil {
		return nil, err
	}
	ep, err := endpoint(ctx, d, n, sid)
	if err != nil {
		return nil, err
	}
	route, err := d.Obs.Route(ctx, n.InstanceID)
	if err != nil {
		return nil, err
	}
	media := fmt.Sprintf("%s:%d", ep.GetPublicHost(), ep.GetPublicUdpPorts()[0])
	say("  session routed in %s by %s: HAProxy map entry -> %s, DNAT udp %s -> %s",
		ms(prog.Event.GetTime().AsTime().Sub(rfc.Event.GetTime().AsTime())), prog.Event.GetRouteProgrammed().GetEdgeId(),
		route.GetSignalingBackend(), media, strings.Join(ep.GetMediaBackends(), ","))

	c, err := wsclient.Dial(ctx, d.Topo.Client.Dial, d.PublicSignaling(), sid)
	if err != nil {
		return nil, fmt.Errorf("signaling: %w", err)
	}
	if _, err := d.Obs.Wait(ctx, 0, n.InstanceID, livegatev1.EventType_EVENT_TYPE_CLIENT_CONNECTED); err != nil {
		_ = c.Abort()
		return nil, err
	}
	say("  signaling ok: client %s -> wss://%s upgraded in %s, subprotocol %s echoed; the app saw its client",
		netns.ClientAddr, d.PublicSignaling(), ms(c.Handshake), c.Protocol)
	rep, err := d.ProbeMedia(ctx, media, 100)
	if err != nil {
		_ = c.Abort()
		return nil, fmt.Errorf("media: %w", err)
	}
	say("  media ok: DTLS-SRTP handshake %s (%s) through udp %s; %d packets, %d lost (%.2f%%); rtt p50 %s, p99 %s; jitter %s",
		ms(rep.Handshake), rep.Profile, media, rep.Sent, rep.Sent-rep.Received, rep.Loss*100, us(rep.RTTp50), us(rep.RTTp99), us(rep.Jitter))
	if r, err = n.Ready(ctx); err != nil {
		_ = c.Abort()
		return nil, err
	}
	say("  /v1/streaming/ready: %s", r)
	return c, nil
}

// endpoint waits for the edge's endpoint of the session in livegate_endpoints.
func endpoint(ctx context.Context, d *stack.Deployment, n *stack.Node, sid string) (*livegatev1.Endpoint, error) {
	for {
		ep, err := d.Obs.Endpoint(ctx, n.InstanceID)
		if err != nil {
			return nil, err
		}
		if ep != nil && ep.GetSessionId() == sid && len(ep.GetPublicUdpPorts()) > 0 {
			return ep, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("no endpoint for session %s: %w", sid, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func us(d time.Duration) string { return d.Round(time.Microsecond).String() }

func since(t time.Time) string { return ms(time.Since(t)) }

func ms(d time.Duration) string {
	if d < 10*time.Millisecond {
		return d.Round(10 * time.Microsecond).String()
	}
	return d.Round(time.Millisecond).String()
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "...\n" + s[len(s)-n:]
}

// prefixWriter prefixes each line with the process's name.
type prefixWriter struct {
	w      io.Writer
	prefix string
	mid    bool
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	var out strings.Builder
	for _, c := range string(b) {
		if !p.mid {
			out.WriteString(p.prefix)
			p.mid = true
		}
		out.WriteRune(c)
		if c == '\n' {
			p.mid = false
		}
	}
	if _, err := io.WriteString(p.w, out.String()); err != nil {
		return 0, err
	}
	return len(b), nil
}
