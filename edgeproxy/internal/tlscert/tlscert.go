// Package tlscert prepares the PEM file HAProxy's TLS frontend loads: the operator's certificate
// and key joined into one file, or a self-signed certificate for demos.
package tlscert

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"time"

	"github.com/livegate/livegate/edgeproxy/internal/atomicfile"
	"github.com/livegate/livegate/pkg/selfsigned"
)

// renewBefore is how close to expiry a self-signed certificate is replaced.
const renewBefore = 30 * 24 * time.Hour

// Combine checks that certFile and keyFile hold a matching pair and writes them into out (mode
// 0600), the single file HAProxy's `crt` wants.
func Combine(certFile, keyFile, out string) error {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return fmt.Errorf("tls certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return fmt.Errorf("tls key: %w", err)
	}
	if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
		return fmt.Errorf("tls certificate %s and key %s: %w", certFile, keyFile, err)
	}
	data := append(bytes.TrimRight(certPEM, "\n"), '\n')
	data = append(data, keyPEM...)
	return atomicfile.Write(out, data, 0o600)
}

// SelfSigned makes sure out holds a self-signed certificate for hosts (names or IPs) with its
// key, valid for a year; an existing one is kept until it is 30 days from expiry.
func SelfSigned(out string, hosts []string, now time.Time) error {
	if data, err := os.ReadFile(out); err == nil {
		if valid(data, hosts, now) {
			return nil
		}
	}
	c, err := selfsigned.New(hosts, now.Add(-time.Hour), now.Add(365*24*time.Hour))
	if err != nil {
		return err
	}
	return atomicfile.Write(out, c.PEM(), 0o600)
}

// SelfSignedHosts are the names and addresses the edge's self-signed certificate covers: the
// public host browsers use, the public IP media arrives at (when set; a client that dials the
// edge by address checks it), and localhost for a check on the host itself.
func SelfSignedHosts(publicHost string, publicIP netip.Addr) []string {
	hosts := []string{publicHost}
	if publicIP.IsValid() && publicIP.String() != publicHost {
		hosts = append(hosts, publicIP.String())
	}
	if !slices.Contains(hosts, "localhost") {
		hosts = append(hosts, "localhost")
	}
	return hosts
}

func valid(data []byte, hosts []string, now time.Time) bool {
	cert, err := tls.X509KeyPair(data, data)
	if err != nil || cert.Leaf == nil {
		return false
	}
	if now.Add(renewBefore).After(cert.Leaf.NotAfter) {
		return false
	}
	for _, h := range hosts {
		if cert.Leaf.VerifyHostname(h) != nil {
			return false
		}
	}
	return true
}
