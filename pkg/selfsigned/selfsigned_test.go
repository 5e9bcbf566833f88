package selfsigned

import (
	"crypto/tls"
	"crypto/x509"
	"testing"
	"time"
)

func TestNewCoversItsHosts(t *testing.T) {
	from := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	c, err := New([]string{"edge.example.test", "198.18.0.1", "localhost"}, from, from.Add(24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	for name, pair := range map[string][2][]byte{"separate": {c.CertPEM, c.KeyPEM}, "one file": {c.PEM(), c.PEM()}} {
		cert, err := tls.X509KeyPair(pair[0], pair[1])
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		leaf := cert.Leaf
		for _, h := range []string{"edge.example.test", "198.18.0.1", "localhost"} {
			if err := leaf.VerifyHostname(h); err != nil {
				t.Errorf("%s: %v", name, err)
			}
		}
		if leaf.VerifyHostname("other.example.test") == nil {
			t.Errorf("%s: covers a host it was not made for", name)
		}
		if leaf.Subject.CommonName != "edge.example.test" || !leaf.NotBefore.Equal(from) || !leaf.NotAfter.Equal(from.Add(24*time.Hour)) {
			t.Errorf("%s: subject %q, valid %s to %s", name, leaf.Subject.CommonName, leaf.NotBefore, leaf.NotAfter)
		}
		if len(leaf.ExtKeyUsage) != 1 || leaf.ExtKeyUsage[0] != x509.ExtKeyUsageServerAuth {
			t.Errorf("%s: extended key usage %v, want server auth", name, leaf.ExtKeyUsage)
		}
	}
}

func TestNewNeedsAHost(t *testing.T) {
	if _, err := New(nil, time.Now(), time.Now().Add(time.Hour)); err == nil {
		t.Fatal("a certificate for no host")
	}
}
