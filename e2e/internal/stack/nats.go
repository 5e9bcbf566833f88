package stack

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/livegate/livegate/e2e/internal/netns"
	"github.com/livegate/livegate/e2e/internal/proc"
	"github.com/livegate/livegate/pkg/natstest"
)

// Ports of a NATS server the harness runs (besides NATSPort for clients).
const (
	NATSClusterPort = 6222
	NATSMonitorPort = 8222
)

// NATSConfig describes a nats-server with JetStream on NATSPort.
type NATSConfig struct {
	// Name is the server's name (and its process's); empty lets the server pick one.
	Name string
	// Dir holds the configuration and the JetStream store, which survives restarts.
	Dir string
	// Listen is the client address; zero listens on every address.
	Listen netip.Addr
	// FastPings has the server ping clients every second and drop those that miss three: a
	// partitioned client is noticed in seconds, as a production server (2 min by default) would
	// after a longer cut.
	FastPings bool
	// Monitor serves the monitoring endpoints on NATSMonitorPort.
	Monitor bool
	// Advertise is the client address the server tells clients of its cluster.
	Advertise netip.Addr
	// Peers are the other members' addresses of a cluster named livegate (routes on
	// NATSClusterPort); none runs a single server.
	Peers []netip.Addr
	// Bin is the nats-server binary; empty finds it as natstest does.
	Bin string
}

// NATSServer is a nats-server in a namespace, started by a Group.
type NATSServer struct {
	Name string
	NS   *netns.Namespace
	P    *proc.Proc
	conf string
	bin  string
	g    *Group
}

// StartNATS writes c's configuration and starts the server in ns; it does not wait for it
// (the members of a cluster start together), Ready does.
func (g *Group) StartNATS(ctx context.Context, ns *netns.Namespace, c NATSConfig) (*NATSServer, error) {
	bin := c.Bin
	if bin == "" {
		var err error
		if bin, err = natstest.Binary(); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(c.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("nats dir: %w", err)
	}
	s := &NATSServer{Name: c.Name, NS: ns, conf: filepath.Join(c.Dir, "nats.conf"), bin: bin, g: g}
	if s.Name == "" {
		s.Name = "nats-server"
	}
	if err := os.WriteFile(s.conf, []byte(natsConfig(c)), 0o600); err != nil {
		return nil, fmt.Errorf("nats config: %w", err)
	}
	if err := s.Start(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

func natsConfig(c NATSConfig) string {
	var b strings.Builder
	if c.Name != "" {
		fmt.Fprintf(&b, "server_name: %s\n", c.Name)
	}
	listen := "0.0.0.0"
	if c.Listen.IsValid() {
		listen = c.Listen.String()
	}
	fmt.Fprintf(&b, "listen: \"%s:%d\"\n", listen, NATSPort)
	if c.Monitor {
		fmt.Fprintf(&b, "http: \"0.0.0.0:%d\"\n", NATSMonitorPort)
	}
	if c.Advertise.IsValid() {
		fmt.Fprintf(&b, "client_advertise: \"%s:%d\"\n", c.Advertise, NATSPort)
	}
	if c.FastPings {
		b.WriteString("ping_interval: \"1s\"\nping_max: 3\n")
	}
	// A cluster syncs every write before it acknowledges it, as deploy/nats configures it: the
	// cluster test kills nodes and checks that no acknowledged event is lost.
	sync := ""
	if len(c.Peers) > 0 {
		sync = "  sync_interval: always\n"
	}
	fmt.Fprintf(&b, "jetstream {\n  store_dir: %q\n%s}\n", filepath.Join(c.Dir, "jetstream"), sync)
	if len(c.Peers) > 0 {
		var routes []string
		for _, a := range c.Peers {
			routes = append(routes, fmt.Sprintf("nats-route://%s:%d", a, NATSClusterPort))
		}
		fmt.Fprintf(&b, "cluster {\n  name: livegate\n  listen: \"0.0.0.0:%d\"\n  routes: [%s]\n}\n", NATSClusterPort, strings.Join(routes, ", "))
	}
	return b.String()
}

// Start starts the server (again, after Stop or Kill) on its store.
func (s *NATSServer) Start(ctx context.Context) error {
	p, err := s.g.Start(ctx, s.Name, s.NS, s.bin, "-c", s.conf)
	if err != nil {
		return err
	}
	s.P = p
	return nil
}

// Ready waits until the server accepts clients.
func (s *NATSServer) Ready(ctx context.Context) error {
	return WaitTCP(ctx, s.P, s.NS, fmt.Sprintf("127.0.0.1:%d", NATSPort))
}

// Stop stops the server: SIGKILL when crash is set, else SIGTERM (an orderly restart).
func (s *NATSServer) Stop(crash bool) {
	if crash {
		s.P.Kill()
		return
	}
	_ = s.P.Stop(10 * time.Second)
}
