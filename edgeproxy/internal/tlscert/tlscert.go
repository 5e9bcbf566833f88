// Package tlscert prepares the PEM file HAProxy's TLS frontend loads: the operator's certificate
// and key joined into one file, or a self-signed certificate for demos.
package tlscert

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"time"

	"github.com/livegate/livegate/edgeproxy/internal/atomicfile"
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
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("self-signed certificate: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		return fmt.Errorf("self-signed certificate: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: hosts[0], Organization: []string{"livegate self-signed"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return fmt.Errorf("self-signed certificate: %w", err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return fmt.Errorf("self-signed certificate: %w", err)
	}
	data := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	data = append(data, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})...)
	return atomicfile.Write(out, data, 0o600)
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
