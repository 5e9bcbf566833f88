package stack

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"github.com/livegate/livegate/e2e/internal/netns"
	"github.com/livegate/livegate/e2e/internal/proc"
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

func writeSelfSigned(path, host string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: host},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.ParseIP(host)}, DNSNames: []string{"livegate"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	pemText := append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})...)
	return os.WriteFile(path, pemText, 0o600)
}
