// Package mediabench compares UDP forwarding through the edge's kernel DNAT with the direct
// path between the same namespaces and with a userspace TURN relay (coturn) on the edge, all
// driven by the same generator and sink (udpflow).
package mediabench

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"github.com/livegate/livegate/e2e/bench/udpflow"
	"github.com/livegate/livegate/e2e/internal/netns"
	"github.com/livegate/livegate/e2e/internal/proc"
)

// BackendPort is the media port of the sink in node 1 (inside the edge's allowed backend range).
const BackendPort = 31000

// DNAT makes the sink at backend reachable through the edge (livegate's edge programming a
// route) and returns the public address a client sends to.
type DNAT func(ctx context.Context, backend netip.AddrPort) (netip.AddrPort, error)

// EdgeTURN is the edge's own TURN relay: its server address and a credential of the session
// whose media backend is backend.
type EdgeTURN func(ctx context.Context, backend netip.AddrPort) (server *net.UDPAddr, username, password string, err error)

// Paths are the results of each path.
type Paths struct {
	Direct, Edge, Relay, EdgeTURN []udpflow.Step
	RelayErr, EdgeTURNErr         error
}

// Run measures the paths in topo, interleaved rate by rate (udpflow.Ladder). coturn runs in the
// edge namespace when turnserver is installed; otherwise RelayErr says why it did not. With
// edgeTURN, the same flow also goes through the edge's own relay (EdgeTURNErr says why not).
func Run(ctx context.Context, topo *netns.Topology, dnat DNAT, edgeTURN EdgeTURN, o udpflow.Options) (Paths, error) {
	var res Paths
	backend := netip.AddrPortFrom(netns.NodeAddr(1), BackendPort)
	var sinkConn *net.UDPConn
	if err := topo.Nodes[0].Do(func() (err error) {
		sinkConn, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(backend))
		return err
	}); err != nil {
		return res, fmt.Errorf("media sink: %w", err)
	}
	sink := udpflow.NewSink(sinkConn)
	defer sink.Close()

	sender := func() (*net.UDPConn, error) {
		var c *net.UDPConn
		err := topo.Client.Do(func() (err error) {
			c, err = net.ListenUDP("udp4", &net.UDPAddr{IP: netns.ClientAddr.AsSlice()})
			if err == nil {
				_ = c.SetWriteBuffer(8 << 20)
			}
			return err
		})
		return c, err
	}
	direct, err := sender()
	if err != nil {
		return res, err
	}
	defer direct.Close()
	paths := []udpflow.Path{{Name: "direct", Conn: direct, Dst: net.UDPAddrFromAddrPort(backend), Sink: sink}}

	public, err := dnat(ctx, backend)
	if err != nil {
		return res, fmt.Errorf("program the edge's DNAT: %w", err)
	}
	viaEdge, err := sender()
	if err != nil {
		return res, err
	}
	defer viaEdge.Close()
	paths = append(paths, udpflow.Path{Name: "edge-dnat", Conn: viaEdge, Dst: net.UDPAddrFromAddrPort(public), Sink: sink})

	relayAt, turnAt := -1, -1
	relay, stop, err := startRelay(ctx, topo, backend, sink, sender)
	if err != nil {
		res.RelayErr = err
	} else {
		defer stop()
		relayAt = len(paths)
		paths = append(paths, relay)
	}
	if edgeTURN != nil {
		p, err := edgeRelay(ctx, edgeTURN, backend, sink, sender)
		if err != nil {
			res.EdgeTURNErr = err
		} else {
			defer p.Conn.Close()
			turnAt = len(paths)
			paths = append(paths, p)
		}
	}
	steps, err := udpflow.Ladder(ctx, paths, o)
	if err != nil {
		return res, err
	}
	res.Direct, res.Edge = steps[0], steps[1]
	if relayAt >= 0 {
		res.Relay = steps[relayAt]
	}
	if turnAt >= 0 {
		res.EdgeTURN = steps[turnAt]
	}
	return res, nil
}

// edgeRelay allocates on the edge's relay with the session's credential and binds a channel to
// backend through it.
func edgeRelay(ctx context.Context, edgeTURN EdgeTURN, backend netip.AddrPort, sink *udpflow.Sink,
	sender func() (*net.UDPConn, error)) (udpflow.Path, error) {
	server, username, password, err := edgeTURN(ctx, backend)
	if err != nil {
		return udpflow.Path{}, err
	}
	conn, err := sender()
	if err != nil {
		return udpflow.Path{}, err
	}
	s, err := udpflow.TURNAllocate(ctx, conn, server, username, password)
	if err == nil {
		err = s.BindChannel(ctx, backend)
	}
	if err != nil {
		_ = conn.Close()
		return udpflow.Path{}, err
	}
	return udpflow.Path{Name: "edge-turn", Conn: conn, Dst: server, Header: udpflow.ChannelHeader, Sink: sink}, nil
}

// startRelay starts coturn in the edge namespace and binds a channel to backend through it.
func startRelay(ctx context.Context, topo *netns.Topology, backend netip.AddrPort, sink *udpflow.Sink,
	sender func() (*net.UDPConn, error)) (udpflow.Path, func(), error) {
	bin, err := exec.LookPath("turnserver")
	if err != nil {
		return udpflow.Path{}, nil, fmt.Errorf("coturn not installed (apt-get install coturn): %w", err)
	}
	dir, err := os.MkdirTemp("", "lgb-coturn-")
	if err != nil {
		return udpflow.Path{}, nil, err
	}
	const turnPort = 3478 // inside the topology's own namespace: no collision with the host
	cmd := topo.Edge.Command(ctx, bin, "-n", "--no-auth",
		"--listening-ip", netns.EdgePublic.String(), "--listening-port", strconv.Itoa(turnPort),
		"--relay-ip", netns.EdgeNodeSide(1).String(), "--min-port", "49152", "--max-port", "65000",
		"--no-tls", "--no-dtls", "--no-cli", "--no-tcp-relay", "--no-tcp",
		"--db", filepath.Join(dir, "turndb"), "--pidfile", filepath.Join(dir, "turnserver.pid"),
		"--log-file", "stdout", "--simple-log")
	p, err := proc.Start("coturn", cmd, nil)
	if err != nil {
		_ = os.RemoveAll(dir)
		return udpflow.Path{}, nil, err
	}
	conn, err := sender()
	stop := func() {
		if conn != nil {
			_ = conn.Close()
		}
		_ = p.Stop(2 * time.Second)
		_ = os.RemoveAll(dir)
	}
	if err != nil {
		stop()
		return udpflow.Path{}, nil, err
	}
	server := &net.UDPAddr{IP: netns.EdgePublic.AsSlice(), Port: turnPort}
	deadline := time.Now().Add(10 * time.Second)
	for {
		err = udpflow.TURNChannel(ctx, conn, server, backend)
		if err == nil {
			break
		}
		if time.Now().After(deadline) || p.Exited() {
			out := p.Output()
			stop()
			return udpflow.Path{}, nil, fmt.Errorf("%w (coturn output: %.400s)", err, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return udpflow.Path{Name: "coturn", Conn: conn, Dst: server, Header: udpflow.ChannelHeader, Sink: sink}, stop, nil
}
