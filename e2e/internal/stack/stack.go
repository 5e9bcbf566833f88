package stack

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/livegate/livegate/e2e/internal/netns"
	"github.com/livegate/livegate/e2e/internal/observer"
	"github.com/livegate/livegate/e2e/internal/proc"
	"github.com/livegate/livegate/pkg/dtlssrtp"
	"github.com/nats-io/nats.go"
)

// Ports inside the namespaces. Each namespace has its own port space, so fixed ports never
// collide with the host or a parallel run.
const (
	NATSPort      = 4222
	SignalingPort = 48322
	AgentPort     = 8011
	// The demo app listens inside the edge's allowed backend range (30000-32767).
	AppSignalingPort = 31000
	AppMediaPort     = 31001
	// MediaPorts is the edge's public UDP range: small, so a leak would show quickly.
	MediaPorts = "10500-10599"
)

// Options describe a deployment.
type Options struct {
	// Prefix starts every namespace and interface name.
	Prefix string
	Bins   Binaries
	// Dir holds the edge's state (HAProxy configuration, socket and map, certificate, NATS
	// store); it must exist.
	Dir    string
	EdgeID string
	Pool   string
	Nodes  []NodeOptions
	// LeaseTTL of the agents' routes.
	LeaseTTL time.Duration
	// Output, when set, returns where a process's output goes besides its buffer.
	Output func(name string) io.Writer
	// Wrap, when set, turns the command line of each process Start starts (named edge, agentN,
	// appN) into the one to run, for example from an image's root file system.
	Wrap func(name, bin string, args []string) (string, []string)
	// EdgeArgs are more flags for the edge.
	EdgeArgs []string
}

// NodeOptions describe one node: an agent and an app.
type NodeOptions struct {
	QuitOnSessionEnded   bool
	ResumeTimeoutSeconds int
	// StreamApp runs the WebRTC sample app (a browser can play it) instead of the demo app.
	StreamApp bool
}

// Deployment is a running stack.
type Deployment struct {
	opts  Options
	video string
	Topo  *netns.Topology
	Edge  *proc.Proc
	Nodes []*Node
	Obs   *observer.Observer
	procs Group
}

// Node is one node namespace with its agent and app.
type Node struct {
	Index      int
	InstanceID string
	NS         *netns.Namespace
	Agent      *proc.Proc
	App        *proc.Proc
	opts       NodeOptions
	d          *Deployment
}

// Start sweeps the leftovers of crashed runs, builds the topology and starts the edge, then every
// node. On error, everything started so far is stopped again; a non-nil Deployment still holds
// the processes' output for the failure report.
func Start(ctx context.Context, o Options) (d *Deployment, err error) {
	if _, err := netns.Sweep(ctx, o.Prefix); err != nil {
		return nil, fmt.Errorf("sweep stale namespaces: %w", err)
	}
	topo, err := netns.NewTopology(ctx, o.Prefix, len(o.Nodes))
	if err != nil {
		return nil, err
	}
	d = &Deployment{opts: o, Topo: topo, procs: Group{Output: o.Output, Wrap: o.Wrap}}
	defer func() {
		if err != nil {
			_ = d.Close()
		}
	}()
	if err := d.startEdge(ctx); err != nil {
		return d, err
	}
	obs, err := observer.Connect(ctx, d.NATSURL(), nats.SetCustomDialer(topo.Edge.Dialer(2*time.Second)))
	if err != nil {
		return d, fmt.Errorf("edge NATS: %w", err)
	}
	d.Obs = obs
	for i, no := range o.Nodes {
		n := &Node{Index: i + 1, InstanceID: fmt.Sprintf("node%d", i+1), NS: topo.Nodes[i], opts: no, d: d}
		d.Nodes = append(d.Nodes, n)
		if err := n.startAgent(ctx); err != nil {
			return d, err
		}
		if err := n.startApp(ctx); err != nil {
			return d, err
		}
	}
	return d, nil
}

// NATSURL is the edge's NATS as the edge namespace sees it.
func (d *Deployment) NATSURL() string { return fmt.Sprintf("nats://127.0.0.1:%d", NATSPort) }

// PublicSignaling is the edge's public websocket address.
func (d *Deployment) PublicSignaling() string {
	return net.JoinHostPort(netns.EdgePublic.String(), strconv.Itoa(SignalingPort))
}

func (d *Deployment) startEdge(ctx context.Context) error {
	state := filepath.Join(d.opts.Dir, "edge")
	if err := os.MkdirAll(state, 0o700); err != nil {
		return fmt.Errorf("edge state dir: %w", err)
	}
	p, err := d.procs.Start(ctx, "edge", d.Topo.Edge, d.opts.Bins.Edge, EdgeArgs(EdgeConfig{
		ID: d.opts.EdgeID, Pool: d.opts.Pool, Public: netns.EdgePublic, StateDir: state, MediaPorts: MediaPorts,
		Extra: d.opts.EdgeArgs,
	})...)
	if err != nil {
		return err
	}
	d.Edge = p
	return WaitTCP(ctx, p, d.Topo.Edge, d.PublicSignaling())
}

// AgentConfig is what differs between the agents of end-to-end deployments.
type AgentConfig struct {
	InstanceID, Pool    string
	NATSHost, BackendIP netip.Addr
	// NATSURL, when set, is the --nats-url instead of NATSHost's (a cluster's servers).
	NATSURL string
	// NATSReplicas, when set, is the replicas of the buckets the agent creates (a cluster's).
	NATSReplicas         int
	LeaseTTL             time.Duration
	QuitOnSessionEnded   bool
	ResumeTimeoutSeconds int
	// LogLevel is the agent's default unless set (debug logs what checks of events read).
	LogLevel string
}

// AgentArgs is the command line of an agent beside the demo app on the ports above, so that
// every end-to-end test starts agents the same way.
func AgentArgs(c AgentConfig) []string {
	url := c.NATSURL
	if url == "" {
		url = fmt.Sprintf("nats://%s:%d", c.NATSHost, NATSPort)
	}
	args := []string{
		"--instance-id", c.InstanceID,
		"--pool", c.Pool,
		"--nats-url", url,
		"--port", strconv.Itoa(AgentPort),
		"--backend-ip", c.BackendIP.String(),
		"--signaling-backend", fmt.Sprintf(":%d", AppSignalingPort),
		"--media-backend", fmt.Sprintf(":%d", AppMediaPort),
		"--lease-ttl", c.LeaseTTL.String(),
		"--log-format", "console",
		// Kit-style, as a Kit app's command line carries them.
		fmt.Sprintf("--/exts/omni.services.livestream.session/quitOnSessionEnded=%t", c.QuitOnSessionEnded),
		fmt.Sprintf("--/exts/omni.services.livestream.session/resumeTimeoutSeconds=%d", c.ResumeTimeoutSeconds),
	}
	if c.NATSReplicas > 0 {
		args = append(args, "--nats-replicas", strconv.Itoa(c.NATSReplicas))
	}
	if c.LogLevel != "" {
		args = append(args, "--log-level", c.LogLevel)
	}
	return args
}

// startAgent starts the node's agent with the Kit-style session settings of its options.
func (n *Node) startAgent(ctx context.Context) error {
	d := n.d
	p, err := d.procs.StartAgent(ctx, fmt.Sprintf("agent%d", n.Index), n.NS, d.opts.Bins.Agent, AgentConfig{
		InstanceID: n.InstanceID, Pool: d.opts.Pool, NATSHost: netns.EdgeNodeSide(n.Index), BackendIP: netns.NodeAddr(n.Index),
		LeaseTTL: d.opts.LeaseTTL, QuitOnSessionEnded: n.opts.QuitOnSessionEnded, ResumeTimeoutSeconds: n.opts.ResumeTimeoutSeconds,
	})
	n.Agent = p
	return err
}

func (n *Node) startApp(ctx context.Context) error {
	bin, args := n.d.opts.Bins.DemoApp, DemoAppArgs(false)
	if n.opts.StreamApp {
		video, err := n.d.testVideo(ctx)
		if err != nil {
			return err
		}
		bin, args = n.d.opts.Bins.StreamApp, append(args, "--video", video)
	}
	p, err := n.d.procs.StartApp(ctx, fmt.Sprintf("app%d", n.Index), n.NS, bin, args...)
	n.App = p
	return err
}

// testVideoSeconds is the length of the stream apps' loop: short, to make quickly.
const testVideoSeconds = 4

// testVideo makes the stream apps' test pattern in the deployment's directory, once.
func (d *Deployment) testVideo(ctx context.Context) (string, error) {
	if d.video != "" {
		return d.video, nil
	}
	path := filepath.Join(d.opts.Dir, "testsrc.ivf")
	out, err := exec.CommandContext(ctx, d.opts.Bins.StreamApp, "gen-video", "-seconds", strconv.Itoa(testVideoSeconds), path).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("test video: %w: %s", err, strings.TrimSpace(string(out)))
	}
	d.video = path
	return path, nil
}

// Ready is an answer of /v1/streaming/ready.
type Ready struct {
	Code    int
	Message string
}

func (r Ready) String() string { return fmt.Sprintf("%d %q", r.Code, r.Message) }

// Ready asks the node's agent /v1/streaming/ready, as a session manager does.
func (n *Node) Ready(ctx context.Context) (Ready, error) {
	var body struct {
		StatusMessage string `json:"statusMessage"`
	}
	code, err := n.call(ctx, http.MethodGet, "/v1/streaming/ready", nil, &body)
	return Ready{Code: code, Message: body.StatusMessage}, err
}

// Startup asks the node's agent /v1/streaming/startup.
func (n *Node) Startup(ctx context.Context) (Ready, error) {
	var body struct {
		StatusMessage string `json:"statusMessage"`
	}
	code, err := n.call(ctx, http.MethodGet, "/v1/streaming/startup", nil, &body)
	return Ready{Code: code, Message: body.StatusMessage}, err
}

// EndSession calls /v1/streaming/endsession and returns the sessionStatus.
func (n *Node) EndSession(ctx context.Context, sessionID string, graceful bool) (string, error) {
	return EndSession(ctx, n.NS, n.InstanceID, sessionID, graceful)
}

// EndSession calls /v1/streaming/endsession of instance's agent in ns and returns the
// sessionStatus.
func EndSession(ctx context.Context, ns *netns.Namespace, instance, sessionID string, graceful bool) (string, error) {
	var body struct {
		SessionStatus string `json:"sessionStatus"`
	}
	req := map[string]any{"sessionId": sessionID, "gracefulShutdown": graceful}
	code, err := agentCall(ctx, ns, instance, http.MethodPost, "/v1/streaming/endsession", req, &body)
	if err == nil && code != http.StatusOK {
		err = fmt.Errorf("endsession: HTTP %d", code)
	}
	return body.SessionStatus, err
}

func (n *Node) call(ctx context.Context, method, path string, in, out any) (int, error) {
	return agentCall(ctx, n.NS, n.InstanceID, method, path, in, out)
}

// agentCall calls the API of instance's agent in ns with in as the JSON body (when not nil) and
// decodes the answer into out.
func agentCall(ctx context.Context, ns *netns.Namespace, instance, method, path string, in, out any) (int, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return 0, err
		}
		body = strings.NewReader(string(b))
	}
	req, err := http.NewRequestWithContext(ctx, method, fmt.Sprintf("http://127.0.0.1:%d%s", AgentPort, path), body)
	if err != nil {
		return 0, err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := ns.HTTPClient(5 * time.Second).Do(req)
	if err != nil {
		return 0, fmt.Errorf("%s %s on %s: %w", method, path, instance, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, fmt.Errorf("%s %s on %s: %w", method, path, instance, err)
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return resp.StatusCode, fmt.Errorf("%s %s on %s: HTTP %d %q: %w", method, path, instance, resp.StatusCode, raw, err)
	}
	return resp.StatusCode, nil
}

// ProbeMedia handshakes DTLS-SRTP with the media server behind addr (the edge's public UDP port)
// from the client namespace, sends count RTP packets and measures their echoes.
func (d *Deployment) ProbeMedia(ctx context.Context, addr string, count int) (*dtlssrtp.Report, error) {
	return dtlssrtp.Probe(ctx, addr, dtlssrtp.WithDialer(d.Topo.Client.Dial), dtlssrtp.WithCount(count),
		dtlssrtp.WithRate(100), dtlssrtp.WithDrain(time.Second))
}

// Probe runs `livegate-edgeproxy probe args...` in the client namespace and returns its output.
func (d *Deployment) Probe(ctx context.Context, args ...string) (string, error) {
	out, err := d.Topo.Client.Command(ctx, d.opts.Bins.Edge, append([]string{"probe"}, args...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("probe %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// HAProxy is the supervised HAProxy's runtime API.
func (d *Deployment) HAProxy() HAProxy { return EdgeHAProxy(filepath.Join(d.opts.Dir, "edge")) }

// HAProxyMap reads the session map from the supervised HAProxy's runtime API (`show map`): what
// HAProxy routes by right now.
func (d *Deployment) HAProxyMap(ctx context.Context) (map[string]string, error) {
	return d.HAProxy().ShowMap(ctx)
}

// Logs is the end of every process's output so far, for a failure report.
func (d *Deployment) Logs() string { return d.procs.Logs(logTail) }

// Close stops the agents and apps (so they can delete their routes), then the edge, then removes
// the namespaces with whatever still runs in them.
func (d *Deployment) Close() error {
	var errs []error
	if d.Obs != nil {
		d.Obs.Close()
	}
	if err := d.procs.Stop(10 * time.Second); err != nil {
		errs = append(errs, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	errs = append(errs, d.Topo.Close(ctx))
	return errors.Join(errs...)
}
