package stack

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"strconv"
	"time"

	"github.com/livegate/livegate/e2e/internal/netns"
	"github.com/livegate/livegate/e2e/internal/proc"
)

// EdgeConfig is what differs between the edges of end-to-end runs.
type EdgeConfig struct {
	ID, Pool string
	// Public is the edge's public address: its host name for clients and its media address.
	Public netip.Addr
	// NATSURL is the NATS the edge joins; empty embeds one on NATSPort.
	NATSURL string
	// NATSReplicas, when set, is the replicas of the buckets the edge creates (a cluster's).
	NATSReplicas int
	StateDir     string
	// MediaPorts is the public UDP range; empty keeps the edge's default.
	MediaPorts string
	// BackendCIDRs the routes may point into; empty is netns.BackendCIDRs.
	BackendCIDRs string
	// HAProxySocket attaches the edge to an HAProxy the caller runs; empty has the edge
	// supervise its own, with a self-signed certificate, stopped with the edge (the namespace
	// goes away with the run, so HAProxy must not outlive it).
	HAProxySocket string
	// Resync, Heartbeat, TTL and PortQuarantine override the edge's defaults when set.
	Resync, Heartbeat, TTL, PortQuarantine time.Duration
	// LogFormat is console unless set.
	LogFormat string
	// LogLevel is the edge's default unless set (debug logs what checks of events read).
	LogLevel string
	// Extra are more flags.
	Extra []string
}

// EdgeArgs is the command line of an edge, so that every end-to-end run starts edges the same
// way.
func EdgeArgs(c EdgeConfig) []string {
	args := []string{
		"--edge-id", c.ID, "--pool", c.Pool,
		"--public-host", c.Public.String(), "--public-ip", c.Public.String(),
		"--signaling-port", strconv.Itoa(SignalingPort),
		"--state-dir", c.StateDir,
	}
	if c.NATSURL == "" {
		args = append(args, fmt.Sprintf("--nats-embedded=0.0.0.0:%d", NATSPort))
	} else {
		args = append(args, "--nats-url", c.NATSURL)
	}
	if c.NATSReplicas > 0 {
		args = append(args, "--nats-replicas", strconv.Itoa(c.NATSReplicas))
	}
	if c.HAProxySocket != "" {
		args = append(args, "--haproxy-socket", c.HAProxySocket)
	} else {
		args = append(args, "--tls-self-signed", "--haproxy-stop-on-exit")
	}
	if c.MediaPorts != "" {
		args = append(args, "--media-ports", c.MediaPorts)
	}
	cidrs := c.BackendCIDRs
	if cidrs == "" {
		cidrs = netns.BackendCIDRs.String()
	}
	args = append(args, "--backend-cidrs", cidrs)
	for _, d := range []struct {
		flag string
		v    time.Duration
	}{{"--resync", c.Resync}, {"--heartbeat", c.Heartbeat}, {"--edge-ttl", c.TTL}, {"--port-quarantine", c.PortQuarantine}} {
		if d.v > 0 {
			args = append(args, d.flag, d.v.String())
		}
	}
	format := c.LogFormat
	if format == "" {
		format = "console"
	}
	args = append(args, "--log-format", format)
	if c.LogLevel != "" {
		args = append(args, "--log-level", c.LogLevel)
	}
	return append(args, c.Extra...)
}

// AdminAddr is the edge's default --admin-addr, inside its namespace.
const AdminAddr = "127.0.0.1:9470"

// WaitHealthy waits until the edge p in ns answers 200 on its admin /healthz: synced with KV
// and HAProxy. It fails early when p exits.
func WaitHealthy(ctx context.Context, p *proc.Proc, ns *netns.Namespace, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	hc := ns.HTTPClient(2 * time.Second)
	var last string
	for {
		resp, err := hc.Get("http://" + AdminAddr + "/healthz")
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = string(body)
		} else {
			last = err.Error()
		}
		select {
		case <-p.Done():
			return fmt.Errorf("%s exited (%v) before it was healthy", p.Name, p.Err())
		case <-ctx.Done():
			return fmt.Errorf("%s not healthy: %s", p.Name, last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// DemoAppArgs is the demo app's command line on the ports the agents expect; standalone runs it
// without an agent beside it (a backend for routes a test writes itself).
func DemoAppArgs(standalone bool) []string {
	args := []string{
		"--signaling-addr", fmt.Sprintf(":%d", AppSignalingPort),
		"--media-addr", fmt.Sprintf(":%d", AppMediaPort),
		"--log-format", "console",
	}
	if standalone {
		args = append(args, "--agent-app-addr", "")
	}
	return args
}

// StartAgent starts an agent in ns and waits until its API listens.
func (g *Group) StartAgent(ctx context.Context, name string, ns *netns.Namespace, bin string, c AgentConfig) (*proc.Proc, error) {
	p, err := g.Start(ctx, name, ns, bin, AgentArgs(c)...)
	if err != nil {
		return nil, err
	}
	return p, WaitTCP(ctx, p, ns, fmt.Sprintf("127.0.0.1:%d", AgentPort))
}

// StartApp starts an app (bin with args) in ns and waits until its signaling listens.
func (g *Group) StartApp(ctx context.Context, name string, ns *netns.Namespace, bin string, args ...string) (*proc.Proc, error) {
	p, err := g.Start(ctx, name, ns, bin, args...)
	if err != nil {
		return nil, err
	}
	return p, WaitTCP(ctx, p, ns, fmt.Sprintf("127.0.0.1:%d", AppSignalingPort))
}
