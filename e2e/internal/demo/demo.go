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
	say("building livegate-agent, livegate-edgeproxy and the demo app...")
	bins, err := stack.Build(ctx, binDir)
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
			say("%s", d.Logs())
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

	say("\nthe stack is running; both sessions stay connected.")
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
	say("\n%s (agent + demo app in %s):", n.InstanceID, n.NS.Name)
	rfc, err := d.Obs.Wait(ctx, 0, n.InstanceID, livegatev1.EventType_EVENT_TYPE_READY_FOR_CONNECTION)
	if err != nil {
		return nil, err
	}
	sid := rfc.Event.GetSessionId()
	r, err := n.Ready(ctx)
	if err != nil {
		return nil, err
	}
	say("  app ready, renderer ready; /v1/streaming/ready: %d %q; session %s", r.Code, r.Message, sid)
	prog, err := d.Obs.Wait(ctx, 0, n.InstanceID, livegatev1.EventType_EVENT_TYPE_ROUTE_PROGRAMMED)
	if err != nil {
		return nil, err
	}
	routed := prog.Event.GetTime().AsTime().Sub(rfc.Event.GetTime().AsTime())
	say("  session routed in %s by %s (HAProxy map entry + DNAT rule; edge reports %s)",
		ms(routed), prog.Event.GetRouteProgrammed().GetEdgeId(), ms(prog.Event.GetRouteProgrammed().GetLatency().AsDuration()))
	var ep *livegatev1.Endpoint
	for ep == nil || ep.GetSessionId() != sid {
		if ep, err = d.Obs.Endpoint(ctx, n.InstanceID); err != nil {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("no endpoint for session %s: %w", sid, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
	media := fmt.Sprintf("%s:%d", ep.GetPublicHost(), ep.GetPublicUdpPorts()[0])
	say("  endpoint: wss://%s:%d (subprotocol x-nv-sessionid.%s), media udp %s -> %s",
		ep.GetPublicHost(), ep.GetSignalingPort(), sid, media, strings.Join(ep.GetMediaBackends(), ","))

	c, err := wsclient.Dial(ctx, d.Topo.Client.Dial, d.PublicSignaling(), sid)
	if err != nil {
		return nil, fmt.Errorf("signaling: %w", err)
	}
	if _, err := d.Obs.Wait(ctx, 0, n.InstanceID, livegatev1.EventType_EVENT_TYPE_CLIENT_CONNECTED); err != nil {
		_ = c.Abort()
		return nil, err
	}
	say("  client %s: signaling ok (websocket upgraded in %s, subprotocol echoed); the app saw its client connect",
		netns.ClientAddr, ms(c.Handshake))
	out, err := d.Probe(ctx, "--media", media)
	if err != nil {
		_ = c.Abort()
		return nil, fmt.Errorf("media: %w", err)
	}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		say("  %s", line)
	}
	r, err = n.Ready(ctx)
	if err != nil {
		_ = c.Abort()
		return nil, err
	}
	say("  /v1/streaming/ready: %d %q", r.Code, r.Message)
	return c, nil
}

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
