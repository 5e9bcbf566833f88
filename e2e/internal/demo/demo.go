// Package demo runs livegate's whole path on one machine and tells what happened: an edge
// (embedded NATS, supervised HAProxy, kernel media forwarding) in its namespace, two WebRTC
// sample apps with their agents in theirs, and a headless Chromium per session in the client
// namespace that plays both through the edge.
package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/livegate/livegate/e2e/internal/browser"
	"github.com/livegate/livegate/e2e/internal/netns"
	"github.com/livegate/livegate/e2e/internal/stack"
	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
)

// Options tune a demo run.
type Options struct {
	// Prefix starts the namespace and interface names.
	Prefix string
	// Duration is how long the stack stays up after the story; 0 waits for ctx alone.
	Duration time.Duration
	// BinDir, when set, holds livegate-agent, livegate-edgeproxy and streamapp already built
	// (`make build`); otherwise the demo builds them.
	BinDir string
	// Verbose sends every process's output to Out as well.
	Verbose bool
	// ShotDir receives a screenshot of each playing page; empty is BinDir, or the temporary
	// directory without one.
	ShotDir string
	// Out receives the story.
	Out io.Writer
}

// Run builds, starts, tells the story, waits, and cleans up. Cleanup runs on every path,
// including a cancelled ctx (the signal handler's) and a failed step.
func Run(ctx context.Context, o Options) (err error) {
	say := func(format string, args ...any) { fmt.Fprintf(o.Out, format+"\n", args...) }
	if os.Geteuid() != 0 {
		return errors.New("run as root: the demo creates network namespaces, veth links, nftables and iptables rules")
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
		say("using livegate-agent, livegate-edgeproxy and streamapp from %s", o.BinDir)
		bins, err = stack.Prebuilt(o.BinDir)
	} else {
		say("building livegate-agent, livegate-edgeproxy and streamapp...")
		bins, err = stack.Build(ctx, binDir)
	}
	if err != nil {
		return err
	}
	say("built in %s", since(start))

	opts := stack.Options{
		Prefix: o.Prefix, Bins: bins, Dir: stateDir, EdgeID: "edge1", Pool: "demo", LeaseTTL: 15 * time.Second,
		Nodes: []stack.NodeOptions{
			{QuitOnSessionEnded: false, ResumeTimeoutSeconds: 30, StreamApp: true},
			{QuitOnSessionEnded: false, ResumeTimeoutSeconds: 30, StreamApp: true},
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
			say("clean: no namespace, process, nftables or iptables rule or conntrack entry of the demo is left")
		} else {
			say("cleanup incomplete: %v (left: %v)", cerr, left)
		}
	}()

	say("\nnetwork (namespaces %s*, addresses in 198.18.0.0/15):", d.Topo.ID)
	say("  client %s ── %s edge ── 198.19.1.1 / 198.19.2.1 ── node1 %s, node2 %s",
		netns.ClientAddr, netns.EdgePublic, netns.NodeAddr(1), netns.NodeAddr(2))
	say("edge edge1 up in %s: embedded NATS, HAProxy on wss://%s, media UDP %s:%s",
		since(start), d.PublicSignaling(), netns.EdgePublic, stack.MediaPorts)

	page, stopPage, err := browser.ServePage(d.Topo.Client)
	if err != nil {
		return err
	}
	defer stopPage()
	shots := o.ShotDir
	if shots == "" {
		shots = o.BinDir
	}
	if shots == "" {
		shots = os.TempDir()
	}
	if shots, err = filepath.Abs(shots); err != nil {
		return err
	}
	var browsers []*browser.Browser
	defer func() {
		for _, b := range browsers {
			b.Close()
		}
	}()
	var sessions []string
	for _, n := range d.Nodes {
		b, sid, err := session(ctx, d, n, page, shots, say)
		if b != nil {
			browsers = append(browsers, b)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", n.InstanceID, err)
		}
		sessions = append(sessions, sid)
	}

	say("\nthe stack is running; both sessions keep playing. To watch one in your own browser (it takes")
	say("the session over from the headless one), run a browser in the client namespace, e.g. as root:")
	say("  ip netns exec %s chromium --no-sandbox --user-data-dir=$(mktemp -d) --ignore-certificate-errors \\", d.Topo.Client.Name)
	say("      '%s?edge=%s&session=%s'", page, netns.EdgePublic, sessions[0])
	say("Look around from another terminal:")
	say("  ip netns exec %s nft list table ip livegate  # the DNAT map", d.Topo.Edge.Name)
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

// session follows one node from start to a browser playing its stream, telling each step; the
// browser keeps playing when it returns.
func session(ctx context.Context, d *stack.Deployment, n *stack.Node, page, shots string, say func(string, ...any)) (*browser.Browser, string, error) {
	ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	say("\n%s (agent + WebRTC sample app in namespace %s):", n.InstanceID, n.NS.Name)
	rfc, err := d.Obs.Wait(ctx, 0, n.InstanceID, livegatev1.EventType_EVENT_TYPE_READY_FOR_CONNECTION)
	if err != nil {
		return nil, "", err
	}
	sid := rfc.Event.GetSessionId()
	r, err := n.Ready(ctx)
	if err != nil {
		return nil, sid, err
	}
	say("  ready for connection, session %s (/v1/streaming/ready: %s)", sid, r)
	prog, err := d.Obs.Wait(ctx, 0, n.InstanceID, livegatev1.EventType_EVENT_TYPE_ROUTE_PROGRAMMED)
	if err != nil {
		return nil, sid, err
	}
	ep, err := endpoint(ctx, d, n, sid)
	if err != nil {
		return nil, sid, err
	}
	route, err := d.Obs.Route(ctx, n.InstanceID)
	if err != nil {
		return nil, sid, err
	}
	media := fmt.Sprintf("%s:%d", ep.GetPublicIp(), ep.GetPublicUdpPorts()[0])
	say("  session routed in %s by %s: HAProxy map entry -> %s, DNAT udp %s -> %s",
		ms(prog.Event.GetTime().AsTime().Sub(rfc.Event.GetTime().AsTime())), prog.Event.GetRouteProgrammed().GetEdgeId(),
		route.GetSignalingBackend(), media, strings.Join(ep.GetMediaBackends(), ","))

	start := time.Now()
	b, err := browser.Launch(ctx, d.Topo.Client)
	if err != nil {
		return nil, sid, err
	}
	say("  headless Chromium started in %s in namespace %s", since(start), d.Topo.Client.Name)
	if err := b.Open(ctx, page, netns.EdgePublic.String(), sid, nil); err != nil {
		return b, sid, err
	}
	st, err := b.WaitState(ctx, func(st browser.State) bool { return st.FirstFrameAt > 0 })
	if err != nil {
		return b, sid, fmt.Errorf("no video: %w (page %+v)", err, st)
	}
	say("  playing: first frame decoded %s after the page opened (wss://%s, subprotocol x-nv-sessionid.%s)",
		ms(time.UnixMilli(st.FirstFrameAt).Sub(time.UnixMilli(st.StartedAt))), d.PublicSignaling(), sid)
	if _, err := b.WaitState(ctx, func(browser.State) bool {
		sent, err := b.SendInput(ctx)
		return err == nil && sent
	}); err != nil {
		return b, sid, fmt.Errorf("data channel: %w", err)
	}
	time.Sleep(3 * time.Second)
	st, err = b.WaitState(ctx, func(st browser.State) bool { return st.Echoes > 0 })
	if err != nil {
		return b, sid, fmt.Errorf("no input echo: %w", err)
	}
	rtt := "-"
	if st.RTTMs != nil {
		rtt = fmt.Sprintf("%.1f ms", *st.RTTMs)
	}
	say("  figures: %d frames decoded, %.0f kbit/s, RTT %s, input echo %.1f ms; selected pair %s -> %s",
		st.FramesDecoded, st.BitrateKbps, rtt, *st.LastEchoMs, st.LocalCandidate, st.RemoteCandidate)
	png, err := b.Screenshot(ctx)
	if err != nil {
		return b, sid, err
	}
	shot := filepath.Join(shots, "livegate-demo-"+n.InstanceID+".png")
	if err := os.WriteFile(shot, png, 0o644); err != nil {
		return b, sid, err
	}
	say("  screenshot of the playing page: %s", shot)
	if r, err = n.Ready(ctx); err != nil {
		return b, sid, err
	}
	say("  /v1/streaming/ready: %s", r)
	return b, sid, nil
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
