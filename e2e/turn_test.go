package e2e

import (
	"context"
	"crypto/tls"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/livegate/livegate/e2e/internal/netns"
	"github.com/livegate/livegate/e2e/internal/stack"
	"github.com/livegate/livegate/pkg/dtlssrtp"
	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
	"github.com/pion/turn/v4"
)

// turnPrefix starts the namespaces of TestTURNRelay.
const turnPrefix = "lgtn"

// TestTURNRelay runs the edge with --turn and a client whose network drops UDP: DTLS-SRTP media
// reaches each session's app through the edge's relay over TURN/TCP and TURN/TLS, with the
// credential the edge published in the session's endpoint; session 1's credential cannot reach
// session 2's public port (403); ending session 1 closes its allocations.
func TestTURNRelay(t *testing.T) {
	stack.RequireRoot(t, "sudo make test")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	d := startTURNStack(ctx, t, turnPrefix, []stack.NodeOptions{{ResumeTimeoutSeconds: 30}, {ResumeTimeoutSeconds: 30}})

	eps := make([]*livegatev1.Endpoint, len(d.Nodes))
	for i, n := range d.Nodes {
		eps[i] = waitEndpointWithTURN(ctx, t, d, n.InstanceID)
	}
	public := func(ep *livegatev1.Endpoint) *net.UDPAddr {
		return &net.UDPAddr{IP: net.IP(netns.EdgePublic.AsSlice()), Port: int(ep.GetPublicUdpPorts()[0])}
	}
	turnCred := eps[0].GetTurn()
	if want := "turns:" + netns.EdgePublic.String() + ":5349?transport=tcp"; !strings.Contains(strings.Join(turnCred.GetUris(), " "), want) {
		t.Fatalf("published URIs %v, want %s among them", turnCred.GetUris(), want)
	}

	// The client's network drops UDP: media straight to the public port no longer arrives.
	if err := d.Topo.Client.Run(ctx, "iptables", "-A", "OUTPUT", "-p", "udp", "-j", "DROP"); err != nil {
		t.Fatal(err)
	}
	if _, err := dtlssrtp.Probe(ctx, public(eps[0]).String(), dtlssrtp.WithDialer(d.Topo.Client.Dial), dtlssrtp.WithCount(5),
		dtlssrtp.WithTimeout(2*time.Second)); err == nil {
		t.Fatal("media reached the public port with UDP dropped in the client's namespace")
	}

	edgeTURN := func(port int) string { return net.JoinHostPort(netns.EdgePublic.String(), strconv.Itoa(port)) }
	for _, transport := range []string{"tcp", "tls"} {
		t.Run(transport, func(t *testing.T) {
			raw, err := d.Topo.Client.Dial(ctx, "tcp", edgeTURN(map[string]int{"tcp": 3478, "tls": 5349}[transport]))
			if err != nil {
				t.Fatal(err)
			}
			conn := raw
			if transport == "tls" {
				// The edge's self-signed signaling certificate, as the test's browsers accept it.
				conn = tls.Client(raw, &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // see above
			}
			cl, err := turn.NewClient(&turn.ClientConfig{
				STUNServerAddr: raw.RemoteAddr().String(), TURNServerAddr: raw.RemoteAddr().String(), Conn: turn.NewSTUNConn(conn),
				Username: turnCred.GetUsername(), Password: turnCred.GetCredential(),
			})
			if err != nil {
				t.Fatal(err)
			}
			defer cl.Close()
			if err := cl.Listen(); err != nil {
				t.Fatal(err)
			}
			relay, err := cl.Allocate()
			if err != nil {
				t.Fatalf("allocate over TURN/%s: %v", transport, err)
			}
			defer relay.Close()
			rep, err := dtlssrtp.Probe(ctx, public(eps[0]).String(), dtlssrtp.WithPacketConn(relay), dtlssrtp.WithCount(50),
				dtlssrtp.WithRate(100), dtlssrtp.WithDrain(time.Second))
			if err != nil {
				t.Fatalf("DTLS-SRTP through TURN/%s: %v", transport, err)
			}
			if rep.Received == 0 {
				t.Fatalf("DTLS-SRTP through TURN/%s: no echo of %d packets", transport, rep.Sent)
			}
			t.Logf("TURN/%s: %d of %d SRTP packets echoed through the relay", transport, rep.Received, rep.Sent)
			if err := cl.CreatePermission(public(eps[1])); err == nil || !strings.Contains(err.Error(), "403") {
				t.Fatalf("session 1's credential to session 2's public port: %v, want 403", err)
			}
		})
	}

	// Session 2's credential relays to session 2 and is held while session 1 ends.
	held := allocate(ctx, t, d, edgeTURN(3478), eps[1].GetTurn())
	session1 := allocate(ctx, t, d, edgeTURN(3478), turnCred)
	if n := turnAllocations(ctx, t, d); n != 2 {
		t.Fatalf("allocations held %d, want 2", n)
	}
	ended := time.Now()
	if _, err := d.Nodes[0].EndSession(ctx, eps[0].GetSessionId(), true); err != nil {
		t.Fatal(err)
	}
	for turnAllocations(ctx, t, d) != 1 {
		if ctx.Err() != nil {
			t.Fatal("session 1's allocation outlived its session")
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("session 1's allocation closed %s after endsession", time.Since(ended).Round(time.Millisecond))
	_ = session1.Close()
	if _, err := dtlssrtp.Probe(ctx, public(eps[1]).String(), dtlssrtp.WithPacketConn(held), dtlssrtp.WithCount(10)); err != nil {
		t.Fatalf("session 2 through the relay after session 1 ended: %v", err)
	}
	if err := allocateErr(ctx, t, d, edgeTURN(3478), turnCred); err == nil {
		t.Fatal("an ended session's credential allocated")
	}
	for _, ep := range eps {
		if strings.Contains(d.Logs(), ep.GetTurn().GetCredential()) {
			t.Error("a TURN credential is in the logs")
		}
	}
	if strings.Contains(d.Logs(), turnSecret) {
		t.Error("the TURN secret is in the logs")
	}
}

// startTURNStack starts a deployment of nodes whose edge runs its TURN relay (relay ports
// 40000-40099) with a secret of its own, and stops it when the test ends.
func startTURNStack(ctx context.Context, t *testing.T, prefix string, nodes []stack.NodeOptions) *stack.Deployment {
	t.Helper()
	dir := t.TempDir()
	secret := filepath.Join(dir, "turn-secret")
	if err := os.WriteFile(secret, []byte(turnSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d := stack.StartFor(ctx, t, stack.Options{
		Prefix: prefix, Bins: binaries(t), Dir: dir, EdgeID: edgeID, Pool: pool, LeaseTTL: leaseTTL, Nodes: nodes,
		EdgeArgs: []string{"--turn", "--turn-secret-file", secret, "--turn-relay-ports", "40000-40099"},
	})
	return d
}

// turnSecret is the relay's shared secret in these tests.
const turnSecret = "e2e-turn-secret-0123456789"

// waitEndpointWithTURN waits for instance's endpoint with a public port and a TURN credential.
func waitEndpointWithTURN(ctx context.Context, t *testing.T, d *stack.Deployment, instance string) *livegatev1.Endpoint {
	t.Helper()
	for {
		ep, err := d.Obs.Endpoint(ctx, instance)
		if err == nil && ep != nil && ep.GetTurn() != nil && len(ep.GetPublicUdpPorts()) > 0 {
			return ep
		}
		if ctx.Err() != nil {
			t.Fatalf("endpoint of %s with a TURN credential: %v, %v", instance, ep, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// allocate makes an allocation over TURN/TCP from the client namespace.
func allocate(ctx context.Context, t *testing.T, d *stack.Deployment, server string, c *livegatev1.TurnRelay) net.PacketConn {
	t.Helper()
	relay, err := allocateConn(ctx, t, d, server, c)
	if err != nil {
		t.Fatal(err)
	}
	return relay
}

func allocateErr(ctx context.Context, t *testing.T, d *stack.Deployment, server string, c *livegatev1.TurnRelay) error {
	t.Helper()
	relay, err := allocateConn(ctx, t, d, server, c)
	if err == nil {
		_ = relay.Close()
		return nil
	}
	return err
}

func allocateConn(ctx context.Context, t *testing.T, d *stack.Deployment, server string, c *livegatev1.TurnRelay) (net.PacketConn, error) {
	t.Helper()
	raw, err := d.Topo.Client.Dial(ctx, "tcp", server)
	if err != nil {
		return nil, err
	}
	cl, err := turn.NewClient(&turn.ClientConfig{STUNServerAddr: server, TURNServerAddr: server, Conn: turn.NewSTUNConn(raw),
		Username: c.GetUsername(), Password: c.GetCredential()})
	if err != nil {
		return nil, err
	}
	t.Cleanup(cl.Close)
	if err := cl.Listen(); err != nil {
		return nil, err
	}
	return cl.Allocate()
}

// turnAllocations reads livegate_edge_turn_allocations from the edge's admin endpoint.
func turnAllocations(ctx context.Context, t *testing.T, d *stack.Deployment) int {
	t.Helper()
	return int(edgeMetric(ctx, t, d, "livegate_edge_turn_allocations"))
}
