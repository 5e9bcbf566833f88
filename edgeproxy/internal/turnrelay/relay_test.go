package turnrelay

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/livegate/livegate/edgeproxy/internal/portalloc"
	"github.com/livegate/livegate/edgeproxy/internal/tlscert"
	"github.com/livegate/livegate/edgeproxy/internal/turnrelay/turntest"
	"github.com/livegate/livegate/pkg/udpecho"
	"github.com/pion/stun/v3"
	"github.com/pion/turn/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"
)

const (
	secretA = "first-secret-0123456789"
	secretB = "second-secret-0123456789"
)

type lab struct {
	t      testing.TB
	r      *Relay
	reg    *prometheus.Registry
	secret string
}

// newLab runs a relay on loopback whose secret file holds secrets.
func newLab(t testing.TB, secrets ...string) *lab {
	t.Helper()
	dir := t.TempDir()
	secretFile := filepath.Join(dir, "secret")
	if err := os.WriteFile(secretFile, []byte(strings.Join(secrets, "\n")), 0o600); err != nil {
		t.Fatal(err)
	}
	pem := filepath.Join(dir, "tls.pem")
	if err := tlscert.SelfSigned(pem, []string{"localhost"}, time.Now()); err != nil {
		t.Fatal(err)
	}
	lo := netip.MustParseAddr("127.0.0.1")
	reg := prometheus.NewRegistry()
	r, err := New(Config{
		Listen: lo, PublicIP: lo, CertFile: pem, KeyFile: pem, Realm: "livegate",
		RelayPorts: portalloc.Range{First: 42000, Last: 42999}, MediaPorts: portalloc.Range{First: 10500, Last: 20000},
		SecretFile: secretFile, CredentialTTL: time.Hour, URIs: []string{"turn:localhost:3478"}, SecretPoll: time.Hour,
	}, reg, zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.InfoLevel), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("relay stopped: %v", err)
		}
	})
	return &lab{t: t, r: r, reg: reg, secret: secrets[0]}
}

// client connects a pion/turn client over transport (udp, tcp or tls) with a credential.
func (l *lab) client(transport string, c Credential) *turn.Client {
	l.t.Helper()
	udp, tcp, tlsAddr := l.r.Addrs()
	var conn net.PacketConn
	server := udp.String()
	switch transport {
	case "udp":
		pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			l.t.Fatal(err)
		}
		conn = pc
	case "tcp":
		tc, err := net.Dial("tcp4", tcp.String())
		if err != nil {
			l.t.Fatal(err)
		}
		conn, server = turn.NewSTUNConn(tc), tcp.String()
	case "tls":
		tc, err := tls.Dial("tcp4", tlsAddr.String(), &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // the lab's self-signed certificate
		if err != nil {
			l.t.Fatal(err)
		}
		conn, server = turn.NewSTUNConn(tc), tlsAddr.String()
	}
	return turntest.Client(l.t, &turn.ClientConfig{
		STUNServerAddr: server, TURNServerAddr: server, Conn: conn,
		Username: c.Username, Password: c.Password, Realm: "livegate", RTO: 100 * time.Millisecond,
	})
}

func (l *lab) cred(session string) Credential {
	return Issue([]byte(l.secret), session, time.Now().Add(time.Hour))
}

func serveOne(addr *net.UDPAddr) Media { return Media{Ports: []uint16{uint16(addr.Port)}} }

// roundTrip sends through the allocation to to until the echo comes back: a datagram may be lost,
// as when the echo of the first one beats the client's own channel binding.
func roundTrip(relay net.PacketConn, to net.Addr) error {
	buf := make([]byte, 64)
	var err error
	for range 20 {
		if _, err = relay.WriteTo([]byte("ping"), to); err != nil {
			return err
		}
		if err = relay.SetReadDeadline(time.Now().Add(250 * time.Millisecond)); err != nil {
			return err
		}
		var n int
		var from net.Addr
		if n, from, err = relay.ReadFrom(buf); err != nil {
			continue
		}
		if string(buf[:n]) != "ping" || from.String() != to.String() {
			return errors.New("unexpected datagram " + string(buf[:n]) + " from " + from.String())
		}
		return nil
	}
	return err
}

func (l *lab) refusals(reason string) float64 {
	return testutil.ToFloat64(l.r.m.refusals.WithLabelValues(reason))
}

func TestRelayToOwnMedia(t *testing.T) {
	l := newLab(t, secretA)
	a, b := udpecho.Start(t), udpecho.Start(t)
	l.r.Serve(map[string]Media{"sess-a": serveOne(a), "sess-b": serveOne(b)})
	for _, transport := range []string{"udp", "tcp", "tls"} {
		t.Run(transport, func(t *testing.T) {
			cl := l.client(transport, l.cred("sess-a"))
			relay, err := cl.Allocate()
			if err != nil {
				t.Fatalf("allocate: %v", err)
			}
			defer relay.Close()
			if got := relay.LocalAddr().(*net.UDPAddr); got.Port < 42000 || got.Port > 42999 {
				t.Fatalf("relay address %v outside the relay ports", got)
			}
			// Twice: the first goes as a Send indication, later ones over the bound channel.
			for range 3 {
				if err := roundTrip(relay, a); err != nil {
					t.Fatalf("relay to the session's own port: %v", err)
				}
			}
			before := l.refusals(RefusedPeer)
			err = cl.CreatePermission(b)
			if err == nil || !strings.Contains(err.Error(), "403") {
				t.Fatalf("permission to another session's port: %v, want a 403", err)
			}
			if l.refusals(RefusedPeer) != before+1 {
				t.Fatalf("peer refusals %v, want %v", l.refusals(RefusedPeer), before+1)
			}
		})
	}
	if got := testutil.ToFloat64(l.r.m.toPeer.packets); got < 9 {
		t.Fatalf("relayed to peers: %v packets, want at least 9", got)
	}
	if got := testutil.ToFloat64(l.r.m.allocations); got != 3 {
		t.Fatalf("allocations made %v, want 3", got)
	}
}

// A session's credential reaches only that session's media, whichever address it names: on the
// edge's IP another session's port, or a port nobody serves.
func TestPeersOutsideTheSessionRefused(t *testing.T) {
	l := newLab(t, secretA)
	a, b := udpecho.Start(t), udpecho.Start(t)
	backend := udpecho.Start(t)
	l.r.Serve(map[string]Media{"sess-a": {Ports: []uint16{uint16(a.Port)}, Backends: []netip.AddrPort{backend.AddrPort()}}, "sess-b": serveOne(b)})
	cl := l.client("udp", l.cred("sess-b"))
	relay, err := cl.Allocate()
	if err != nil {
		t.Fatal(err)
	}
	defer relay.Close()
	for _, to := range []*net.UDPAddr{a, backend, {IP: net.IPv4(127, 0, 0, 1), Port: 9}, {IP: net.IPv4(198, 18, 0, 1), Port: b.Port}} {
		if err := cl.CreatePermission(to); err == nil || !strings.Contains(err.Error(), "403") {
			t.Fatalf("permission of sess-b to %v: %v, want a 403", to, err)
		}
	}
	if err := roundTrip(relay, b); err != nil {
		t.Fatalf("sess-b to its own port: %v", err)
	}
	// sess-a's backend is reachable with sess-a's credential.
	cla := l.client("udp", l.cred("sess-a"))
	ra, err := cla.Allocate()
	if err != nil {
		t.Fatal(err)
	}
	defer ra.Close()
	if err := roundTrip(ra, backend); err != nil {
		t.Fatalf("sess-a to its backend: %v", err)
	}
}

func TestCredentialsRefused(t *testing.T) {
	l := newLab(t, secretA)
	a := udpecho.Start(t)
	l.r.Serve(map[string]Media{"sess-a": serveOne(a)})
	for _, tc := range []struct {
		name   string
		cred   Credential
		reason string
	}{
		{"expired", Issue([]byte(secretA), "sess-a", time.Now().Add(-time.Second)), RefusedExpired},
		{"session not served", Issue([]byte(secretA), "sess-gone", time.Now().Add(time.Hour)), RefusedNotServed},
		{"another secret", Issue([]byte(secretB), "sess-a", time.Now().Add(time.Hour)), RefusedIntegrity},
		{"forged password", Credential{Username: l.cred("sess-a").Username, Password: "guess"}, RefusedIntegrity},
		{"malformed username", Credential{Username: "sess-a", Password: "x"}, RefusedMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := l.refusals(tc.reason)
			cl := l.client("udp", tc.cred)
			if relay, err := cl.Allocate(); err == nil {
				relay.Close()
				t.Fatal("allocation made")
			}
			if l.refusals(tc.reason) <= before {
				t.Fatalf("refusals %q did not rise", tc.reason)
			}
		})
	}
}

// An allocation made with another session's credential cannot be steered with this one's.
func TestRequestUnderAnotherSessionsCredentialRefused(t *testing.T) {
	l := newLab(t, secretA)
	a, b := udpecho.Start(t), udpecho.Start(t)
	l.r.Serve(map[string]Media{"sess-a": serveOne(a), "sess-b": serveOne(b)})
	cl := l.client("udp", l.cred("sess-a"))
	relay, err := cl.Allocate()
	if err != nil {
		t.Fatal(err)
	}
	defer relay.Close()
	// The same client socket, now signing with sess-b's credential.
	other := l.cred("sess-b")
	before := l.refusals(RefusedMismatch)
	if err := createPermissionAs(cl, other, b); err == nil || !strings.Contains(err.Error(), "403") {
		t.Fatalf("permission with sess-b's credential on sess-a's allocation: %v, want a 403", err)
	}
	if l.refusals(RefusedMismatch) != before+1 {
		t.Fatal("mismatch not counted")
	}
}

func TestEndedSessionTornDown(t *testing.T) {
	l := newLab(t, secretA)
	a := udpecho.Start(t)
	l.r.Serve(map[string]Media{"sess-a": serveOne(a)})
	for _, transport := range []string{"udp", "tcp"} {
		cl := l.client(transport, l.cred("sess-a"))
		relay, err := cl.Allocate()
		if err != nil {
			t.Fatal(err)
		}
		defer relay.Close()
		if err := roundTrip(relay, a); err != nil {
			t.Fatal(err)
		}
	}
	if n := l.r.allocationCount(); n != 2 {
		t.Fatalf("allocations %v, want 2", n)
	}
	ended := time.Now()
	l.r.Serve(map[string]Media{})
	// The relay sockets are closed before Serve returns; pion/turn deletes the allocations as
	// its read loops see them closed.
	l.r.mu.Lock()
	open := len(l.r.allocs)
	l.r.mu.Unlock()
	if open != 0 {
		t.Fatalf("%d relay sockets open after the session ended", open)
	}
	deadline := time.Now().Add(10 * time.Second)
	for l.r.allocationCount() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("allocations %v after the session ended", l.r.allocationCount())
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Logf("allocations deleted %v after the session ended", time.Since(ended))
	cl := l.client("udp", l.cred("sess-a"))
	if relay, err := cl.Allocate(); err == nil {
		relay.Close()
		t.Fatal("allocation made for an ended session")
	}
}

func TestSecretRotation(t *testing.T) {
	l := newLab(t, secretA)
	a := udpecho.Start(t)
	l.r.Serve(map[string]Media{"sess-a": serveOne(a)})
	old := l.cred("sess-a")
	write := func(secrets ...string) {
		if err := os.WriteFile(l.r.cfg.SecretFile, []byte(strings.Join(secrets, "\n")), 0o600); err != nil {
			t.Fatal(err)
		}
		l.r.reload(false)
	}
	allocate := func(c Credential) error {
		relay, err := l.client("udp", c).Allocate()
		if err != nil {
			return err
		}
		defer relay.Close()
		return roundTrip(relay, a)
	}
	write(secretB, secretA)
	if got := l.r.Credentials("sess-a", time.Now()).GetCredential(); got != Issue([]byte(secretB), "sess-a", time.Now().Add(time.Hour)).Password && got == old.Password {
		t.Fatal("credentials still issued under the old secret")
	}
	if err := allocate(old); err != nil {
		t.Fatalf("old secret during the rotation: %v", err)
	}
	if err := allocate(Issue([]byte(secretB), "sess-a", time.Now().Add(time.Hour))); err != nil {
		t.Fatalf("new secret: %v", err)
	}
	write(secretB)
	if err := allocate(old); err == nil {
		t.Fatal("old secret accepted after it left the file")
	}
	write("short")
	if err := allocate(Issue([]byte(secretB), "sess-a", time.Now().Add(time.Hour))); err != nil {
		t.Fatalf("a bad secret file replaced the secrets held: %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	lo := netip.MustParseAddr("127.0.0.1")
	good := Config{Listen: lo, PublicIP: lo, Port: 3478, TLSPort: 5349, Realm: "r", SecretFile: "/s",
		RelayPorts: portalloc.Range{First: 40000, Last: 49999}, MediaPorts: portalloc.Range{First: 10500, Last: 20000},
		CredentialTTL: time.Hour, URIs: []string{"turn:h"}, SecretPoll: time.Second}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		change func(*Config)
		want   string
	}{
		{"overlap", func(c *Config) { c.RelayPorts = portalloc.Range{First: 19000, Last: 21000} }, "overlap the media ports"},
		{"inside", func(c *Config) { c.RelayPorts = portalloc.Range{First: 10000, Last: 30000} }, "overlap"},
		{"listener in range", func(c *Config) { c.Port = 45000 }, "inside the relay or media port range"},
		{"same ports", func(c *Config) { c.TLSPort = 3478 }, "two different ports"},
		{"no public ip", func(c *Config) { c.PublicIP = netip.Addr{} }, "public IPv4"},
		{"half a certificate", func(c *Config) { c.CertFile = "/c" }, "certificate and its key"},
		{"no secret", func(c *Config) { c.SecretFile = "" }, "secret file"},
		{"short ttl", func(c *Config) { c.CredentialTTL = time.Second }, "at least 1m"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := good
			tc.change(&c)
			if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate = %v, want %q", err, tc.want)
			}
		})
	}
}

type peerAddress struct{ stun.XORMappedAddress }

func (a peerAddress) AddTo(m *stun.Message) error { return a.AddToAs(m, stun.AttrXORPeerAddress) }

// createPermissionAs sends CreatePermission for to over cl's socket, signed with c.
func createPermissionAs(cl *turn.Client, c Credential, to *net.UDPAddr) error {
	peerAttr := peerAddress{stun.XORMappedAddress{IP: to.IP, Port: to.Port}}
	typ := stun.NewType(stun.MethodCreatePermission, stun.ClassRequest)
	probe, err := stun.Build(stun.TransactionID, typ, peerAttr, stun.Fingerprint)
	if err != nil {
		return err
	}
	res, err := cl.PerformTransaction(probe, cl.TURNServerAddr(), false)
	if err != nil {
		return err
	}
	var nonce stun.Nonce
	if err := nonce.GetFrom(res.Msg); err != nil {
		return fmt.Errorf("no nonce in %v: %w", res.Msg, err)
	}
	req, err := stun.Build(stun.TransactionID, typ, stun.NewUsername(c.Username), stun.NewRealm("livegate"), nonce, peerAttr,
		stun.MessageIntegrity(Key([]byte(secretA), c.Username, "livegate")), stun.Fingerprint)
	if err != nil {
		return err
	}
	if res, err = cl.PerformTransaction(req, cl.TURNServerAddr(), false); err != nil {
		return err
	}
	var code stun.ErrorCodeAttribute
	if res.Msg.Type.Class == stun.ClassErrorResponse && code.GetFrom(res.Msg) == nil {
		return fmt.Errorf("error %d", code.Code)
	}
	return nil
}
