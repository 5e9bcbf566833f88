package tlscert

import (
	"bytes"
	"crypto/tls"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

func TestSelfSignedKeptUntilNearExpiry(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "tls.pem")
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	if err := SelfSigned(out, []string{"edge.example.test", "127.0.0.1"}, now); err != nil {
		t.Fatal(err)
	}
	first, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(first, first)
	if err != nil {
		t.Fatal(err)
	}
	if cert.Leaf.VerifyHostname("edge.example.test") != nil || cert.Leaf.VerifyHostname("127.0.0.1") != nil {
		t.Fatal("certificate does not cover its hosts")
	}
	if st, _ := os.Stat(out); st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, want 0600", st.Mode().Perm())
	}
	if err := SelfSigned(out, []string{"edge.example.test", "127.0.0.1"}, now.Add(24*time.Hour)); err != nil {
		t.Fatal(err)
	}
	if again, _ := os.ReadFile(out); !bytes.Equal(again, first) {
		t.Fatal("a valid certificate was replaced")
	}
	if err := SelfSigned(out, []string{"other.example.test"}, now.Add(24*time.Hour)); err != nil {
		t.Fatal(err)
	}
	if again, _ := os.ReadFile(out); bytes.Equal(again, first) {
		t.Fatal("a certificate for other hosts was kept")
	}
	if err := SelfSigned(out, []string{"other.example.test"}, now.Add(340*24*time.Hour)); err != nil {
		t.Fatal(err)
	}
	renewed, _ := tls.X509KeyPair(mustRead(t, out), mustRead(t, out))
	if !renewed.Leaf.NotAfter.After(now.Add(365 * 24 * time.Hour)) {
		t.Fatal("a certificate close to expiry was not renewed")
	}
}

func TestCombine(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.pem"), filepath.Join(dir, "b.pem")
	now := time.Now()
	if err := SelfSigned(a, []string{"a.test"}, now); err != nil {
		t.Fatal(err)
	}
	if err := SelfSigned(b, []string{"b.test"}, now); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out.pem")
	if err := Combine(a, a, out); err != nil {
		t.Fatal(err)
	}
	if _, err := tls.LoadX509KeyPair(out, out); err != nil {
		t.Fatal(err)
	}
	if err := Combine(a, b, out); err == nil {
		t.Fatal("Combine accepted a key of another certificate")
	}
	if err := Combine(filepath.Join(dir, "missing"), a, out); err == nil {
		t.Fatal("Combine accepted a missing file")
	}
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestSelfSignedHosts(t *testing.T) {
	ip := netip.MustParseAddr("198.18.0.10")
	for _, tc := range []struct {
		name string
		host string
		ip   netip.Addr
		want []string
	}{
		{"name and address", "edge.example.test", ip, []string{"edge.example.test", "198.18.0.10", "localhost"}},
		{"no public IP (media off)", "edge.example.test", netip.Addr{}, []string{"edge.example.test", "localhost"}},
		{"the host is the address", "198.18.0.10", ip, []string{"198.18.0.10", "localhost"}},
		{"the host is localhost", "localhost", ip, []string{"localhost", "198.18.0.10"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := SelfSignedHosts(tc.host, tc.ip); !slices.Equal(got, tc.want) {
				t.Fatalf("SelfSignedHosts(%q, %v) = %q, want %q", tc.host, tc.ip, got, tc.want)
			}
		})
	}
}

// The edge's certificate covers --public-ip: a client that dials the edge by its media address
// (as a TURN or probe client may) verifies it.
func TestSelfSignedCoversPublicIP(t *testing.T) {
	out := filepath.Join(t.TempDir(), "tls.pem")
	if err := SelfSigned(out, SelfSignedHosts("edge.example.test", netip.MustParseAddr("198.18.0.10")), time.Now()); err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(mustRead(t, out), mustRead(t, out))
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range []string{"edge.example.test", "198.18.0.10", "localhost"} {
		if err := cert.Leaf.VerifyHostname(h); err != nil {
			t.Error(err)
		}
	}
}
