package tlscert

import (
	"bytes"
	"crypto/tls"
	"os"
	"path/filepath"
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
