package dtlssrtp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pion/dtls/v3"
	"github.com/rs/zerolog"

	"github.com/livegate/livegate/pkg/freeport"
)

func startResponder(t *testing.T, opts ...ResponderOption) *Responder {
	t.Helper()
	r, err := NewResponder(t.Context(), "127.0.0.1:0", opts...)
	if err != nil {
		t.Fatalf("NewResponder: %v", err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r
}

// waitSessions polls until the responder holds want associations; it fails only after a generous
// bound, so it is a wait, not a timing assertion.
func waitSessions(t *testing.T, r *Responder, want int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for r.Sessions() != want {
		if time.Now().After(deadline) {
			t.Fatalf("responder holds %d associations, want %d", r.Sessions(), want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestProbeEchoes(t *testing.T) {
	r := startResponder(t, WithSenderReportInterval(5*time.Millisecond))
	rep, err := Probe(t.Context(), r.Addr().String(), WithCount(300), WithRate(2000), WithDrain(5*time.Second))
	if err != nil {
		t.Fatalf("Probe: %v", err)
	}
	t.Logf("\n%s", rep)
	if rep.Sent != 300 || rep.Received != 300 || rep.Loss != 0 || rep.Duplicates != 0 {
		t.Errorf("sent %d received %d loss %g duplicates %d, want 300 300 0 0", rep.Sent, rep.Received, rep.Loss, rep.Duplicates)
	}
	if rep.RTTp50 <= 0 || rep.RTTp99 < rep.RTTp50 || rep.RTTMax < rep.RTTp99 || rep.RTTMin > rep.RTTp50 {
		t.Errorf("round trips out of order: min %s p50 %s p99 %s max %s", rep.RTTMin, rep.RTTp50, rep.RTTp99, rep.RTTMax)
	}
	if rep.SenderReports == 0 {
		t.Errorf("no RTCP sender reports received")
	}
	if rep.Profile != "SRTP_AEAD_AES_128_GCM" {
		t.Errorf("profile = %q, want SRTP_AEAD_AES_128_GCM", rep.Profile)
	}
	if rep.PeerFingerprint != r.Fingerprint() {
		t.Errorf("peer fingerprint = %s, want the responder's %s", rep.PeerFingerprint, r.Fingerprint())
	}
	// The probe's RTCP BYE and close_notify end the association without waiting for idleness.
	waitSessions(t, r, 0)
}

func TestProbeCountsLoss(t *testing.T) {
	r := startResponder(t, WithDropEvery(10))
	rep, err := Probe(t.Context(), r.Addr().String(), WithCount(200), WithRate(2000), WithDrain(300*time.Millisecond))
	if err != nil {
		t.Fatalf("Probe: %v", err)
	}
	if rep.Sent != 200 || rep.Received != 180 {
		t.Errorf("sent %d received %d, want 200 180", rep.Sent, rep.Received)
	}
	if rep.Loss < 0.099 || rep.Loss > 0.101 {
		t.Errorf("loss = %g, want 0.1", rep.Loss)
	}
	if !strings.Contains(rep.String(), "lost 20 (10.00%)") {
		t.Errorf("report does not show the loss:\n%s", rep)
	}
}

func TestProbeServesManyClients(t *testing.T) {
	r := startResponder(t, WithLogger(zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)))
	const clients = 6
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for range clients {
		wg.Go(func() {
			rep, err := Probe(t.Context(), r.Addr().String(), WithCount(60), WithRate(300), WithDrain(5*time.Second))
			switch {
			case err != nil:
				errs <- err
			case rep.Received != 60:
				errs <- fmt.Errorf("received %d of 60", rep.Received)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	waitSessions(t, r, 0)
}

func TestProbeOverPacketConn(t *testing.T) {
	r := startResponder(t)
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	rep, err := Probe(t.Context(), r.Addr().String(), WithPacketConn(pc), WithCount(50), WithRate(1000), WithDrain(5*time.Second))
	if err != nil {
		t.Fatalf("Probe: %v", err)
	}
	if rep.Received != 50 {
		t.Errorf("received %d of 50", rep.Received)
	}
	// The caller's socket is usable again after the probe: its read deadline is cleared.
	sender, err := net.Dial("udp", pc.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer sender.Close()
	if _, err := sender.Write([]byte("after")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2048)
	if err := pc.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			t.Fatalf("read after probe: %v", err)
		}
		if from.String() == sender.LocalAddr().String() && string(buf[:n]) == "after" {
			break
		}
	}
}

func TestProbeClosedPortFails(t *testing.T) {
	addr := freeport.UDP(t)
	_, err := Probe(t.Context(), addr, WithTimeout(2*time.Second))
	if err == nil {
		t.Fatal("probe of a closed port succeeded")
	}
	t.Logf("error: %v", err)
	// Loopback answers with ICMP port unreachable; should the kernel rate-limit it, the handshake
	// times out instead. Either way the error names the address and the reason.
	if !errors.Is(err, ErrRefused) && !errors.Is(err, ErrNoAnswer) {
		t.Errorf("err = %v, want ErrRefused or ErrNoAnswer", err)
	}
	if !strings.Contains(err.Error(), addr) {
		t.Errorf("error %q does not name %s", err, addr)
	}
}

func TestProbeNoAnswerTimesOut(t *testing.T) {
	// An unconnected socket never sees ICMP errors, like a path where the packets are dropped.
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	_, err = Probe(t.Context(), freeport.UDP(t), WithPacketConn(pc), WithTimeout(300*time.Millisecond))
	if !errors.Is(err, ErrNoAnswer) {
		t.Fatalf("err = %v, want ErrNoAnswer", err)
	}
	if !strings.Contains(err.Error(), "within 300ms") {
		t.Errorf("error %q does not say how long it waited", err)
	}
}

func TestProbeRejectsBadOptions(t *testing.T) {
	for name, opt := range map[string]ProbeOption{
		"zero count":   WithCount(0),
		"zero rate":    WithRate(0),
		"tiny payload": WithPayloadSize(8),
		"no timeout":   WithTimeout(0),
	} {
		if _, err := Probe(t.Context(), "127.0.0.1:9", opt); err == nil {
			t.Errorf("%s: Probe accepted it", name)
		}
	}
}

func TestResponderClosesIdleAssociations(t *testing.T) {
	r := startResponder(t, WithIdleTimeout(100*time.Millisecond))
	cert, err := NewCertificate()
	if err != nil {
		t.Fatal(err)
	}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	// A bare DTLS client: it handshakes, then goes silent without closing.
	conn, err := dtls.ClientWithOptions(pc, r.Addr(),
		dtls.WithCertificates(cert), dtls.WithInsecureSkipVerify(true),
		dtls.WithSRTPProtectionProfiles(dtls.SRTP_AES128_CM_HMAC_SHA1_80),
		dtls.WithExtendedMasterSecret(dtls.RequireExtendedMasterSecret))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if err := conn.HandshakeContext(ctx); err != nil {
		t.Fatalf("handshake: %v", err)
	}
	if p, _ := conn.SelectedSRTPProtectionProfile(); p != dtls.SRTP_AES128_CM_HMAC_SHA1_80 {
		t.Errorf("profile = %v, want the only one offered", p)
	}
	waitSessions(t, r, 0)
	// The responder said goodbye with close_notify.
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Read(make([]byte, 100)); err == nil {
		t.Errorf("read after the responder closed: no error")
	}
	_ = conn.Close()
}

func TestResponderRejectsBadOptions(t *testing.T) {
	for name, opt := range map[string]ResponderOption{
		"zero idle":        WithIdleTimeout(0),
		"negative drop":    WithDropEvery(-1),
		"zero sessions":    WithMaxSessions(0),
		"zero sr interval": WithSenderReportInterval(0),
	} {
		if r, err := NewResponder(t.Context(), "127.0.0.1:0", opt); err == nil {
			_ = r.Close()
			t.Errorf("%s: NewResponder accepted it", name)
		}
	}
	if _, err := NewResponder(t.Context(), "not an address", nil...); err == nil {
		t.Errorf("NewResponder accepted a bad address")
	}
}

func TestResponderStopsWithItsContext(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	r, err := NewResponder(ctx, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := r.Addr().String()
	if _, err := Probe(t.Context(), addr, WithCount(5), WithRate(1000)); err != nil {
		t.Fatalf("probe while running: %v", err)
	}
	cancel()
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := Probe(t.Context(), addr, WithTimeout(500*time.Millisecond)); err == nil {
		t.Error("probe after the context ended succeeded")
	}
}
