package reconcile_test

import (
	"context"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/livegate/livegate/edgeproxy/internal/media"
	"github.com/livegate/livegate/edgeproxy/internal/portalloc"
	"github.com/livegate/livegate/edgeproxy/internal/reconcile"
	"github.com/livegate/livegate/edgeproxy/internal/turnrelay"
	"github.com/livegate/livegate/edgeproxy/internal/turnrelay/turntest"
	"github.com/livegate/livegate/pkg/events"
	"github.com/livegate/livegate/pkg/udpecho"
	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
	"github.com/pion/turn/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"
)

// TestEndpointCarriesTURN runs the loop with the TURN relay: the endpoint of a served route
// carries a credential a TURN client relays to the route's media backend with; a new secret
// republishes it; removing the route closes the allocation.
func TestEndpointCarriesTURN(t *testing.T) {
	e := newEnv(t)
	secretFile := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secretFile, []byte("first-secret-0123456789\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	lo := netip.MustParseAddr("127.0.0.1")
	reg := prometheus.NewRegistry()
	var r *reconcile.Reconciler
	relay, err := turnrelay.New(turnrelay.Config{
		Listen: lo, PublicIP: lo, Realm: "livegate", SecretFile: secretFile, SecretPoll: 20 * time.Millisecond,
		RelayPorts: portalloc.Range{First: 43000, Last: 43999}, MediaPorts: portalloc.Range{First: 10500, Last: 20000},
		CredentialTTL: time.Hour, URIs: []string{"turn:edge-a.example.test:3478?transport=udp"},
	}, reg, zerolog.Nop(), func() { r.Resync() })
	if err != nil {
		t.Fatal(err)
	}
	r, err = reconcile.New(config("edge-a", "default"), reconcile.Deps{
		JS: e.js, Buckets: e.kv, Driver: &recordingDriver{m: map[string]string{}}, Media: media.Off{},
		Events: events.NewPublisher(e.js, "test/edge-a"), Metrics: reconcile.NewMetrics(reg), Relay: relay,
		Log: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = relay.Run(ctx) }()
	go func() { _ = r.Run(ctx) }()

	backend := udpecho.Start(t)
	putRoute(t, e, "inst-1", &livegatev1.Route{SessionId: "sess-1", InstanceId: "inst-1", SignalingBackend: "127.0.0.1:30000",
		MediaBackends: []string{backend.String()}, EdgeId: "edge-a"})
	waitFor(t, "endpoint with a TURN credential", func() bool { return endpointOf(t, e, "inst-1").GetTurn() != nil })
	first := endpointOf(t, e, "inst-1").GetTurn()
	if first.GetUris()[0] != "turn:edge-a.example.test:3478?transport=udp" || first.GetUsername()[len(first.GetUsername())-7:] != ":sess-1" {
		t.Fatalf("turn %v", first)
	}

	udp, _, _ := relay.Addrs()
	conn, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cl := turntest.Client(t, &turn.ClientConfig{STUNServerAddr: udp.String(), TURNServerAddr: udp.String(), Conn: conn,
		Username: first.GetUsername(), Password: first.GetCredential(), Realm: "livegate"})
	alloc, err := cl.Allocate()
	if err != nil {
		t.Fatalf("allocate with the published credential: %v", err)
	}
	defer alloc.Close()
	buf := make([]byte, 64)
	waitFor(t, "echo of the media backend through the relay", func() bool {
		_, _ = alloc.WriteTo([]byte("ping"), backend)
		_ = alloc.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		n, _, err := alloc.ReadFrom(buf)
		return err == nil && string(buf[:n]) == "ping"
	})

	if err := os.WriteFile(secretFile, []byte("second-secret-0123456789\nfirst-secret-0123456789\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "credential renewed under the new secret", func() bool {
		return endpointOf(t, e, "inst-1").GetTurn().GetCredential() != first.GetCredential()
	})

	allocations := func() float64 {
		n, err := testutil.GatherAndCount(reg, "livegate_edge_turn_allocations")
		if err != nil || n != 1 {
			t.Fatalf("gauge: %d, %v", n, err)
		}
		mfs, _ := reg.Gather()
		for _, mf := range mfs {
			if mf.GetName() == "livegate_edge_turn_allocations" {
				return mf.GetMetric()[0].GetGauge().GetValue()
			}
		}
		return -1
	}
	if got := allocations(); got != 1 {
		t.Fatalf("allocations %v, want 1", got)
	}
	deleted := time.Now()
	if err := e.kv.Routes.Delete(context.Background(), "inst-1"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "allocation closed with the route", func() bool { return allocations() == 0 })
	t.Logf("allocation closed %v after the route was deleted", time.Since(deleted))
}
