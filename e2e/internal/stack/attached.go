package stack

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

	"github.com/livegate/livegate/e2e/internal/netns"
	"github.com/livegate/livegate/e2e/internal/proc"
	"github.com/livegate/livegate/pkg/selfsigned"
)

// PrepareAttached writes, in an edge's state directory dir, what an operator's HAProxy needs for
// the edge to attach to it (--haproxy-socket): a global section with the runtime socket, the
// sections `livegate-edgeproxy haproxy-config` prints, an empty map file and a certificate for
// public.
func PrepareAttached(ctx context.Context, edgeBin, dir string, public netip.Addr) error {
	h := EdgeHAProxy(dir)
	out, err := exec.CommandContext(ctx, edgeBin, "haproxy-config", "--state-dir", dir,
		"--signaling-port", strconv.Itoa(SignalingPort), "--haproxy-socket", h.Socket).Output()
	if err != nil {
		return fmt.Errorf("livegate-edgeproxy haproxy-config: %w", err)
	}
	global := fmt.Sprintf(`global
    master-worker
    stats socket %s mode 600 level admin expose-fd listeners
    stats timeout 2m
    hard-stop-after 1m

defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s

`, h.Socket)
	if err := os.WriteFile(filepath.Join(dir, "operator.cfg"), []byte(global+string(out)), 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(h.Map, nil, 0o600); err != nil {
		return err
	}
	return writeSelfSigned(filepath.Join(dir, "tls.pem"), public.String())
}

// StartAttached starts the operator's HAProxy PrepareAttached wrote in dir, as its own
// supervisor would, and waits until it serves public.
func (g *Group) StartAttached(ctx context.Context, name string, ns *netns.Namespace, dir string, public netip.Addr) (*proc.Proc, error) {
	p, err := g.Start(ctx, name, ns, "/usr/sbin/haproxy", "-W", "-db", "-f", filepath.Join(dir, "operator.cfg"))
	if err != nil {
		return nil, err
	}
	return p, WaitTCP(ctx, p, ns, net.JoinHostPort(public.String(), strconv.Itoa(SignalingPort)))
}

// writeSelfSigned writes a certificate and its key for host (an address) and the name clients
// send as SNI (see wsclient) in one file, as HAProxy's crt loads it.
func writeSelfSigned(path, host string) error {
	c, err := selfsigned.New([]string{host, "livegate"}, time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour))
	if err != nil {
		return err
	}
	return os.WriteFile(path, c.PEM(), 0o600)
}
