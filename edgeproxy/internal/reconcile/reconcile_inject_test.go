package reconcile_test

import (
	"context"
	"encoding/json"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/livegate/livegate/edgeproxy/internal/mediaplane"
	"github.com/livegate/livegate/edgeproxy/internal/mediaplane/mediaplanetest"
	"github.com/livegate/livegate/edgeproxy/internal/portalloc"
	"github.com/livegate/livegate/edgeproxy/internal/reconcile"
	"github.com/livegate/livegate/edgeproxy/internal/routes"
	"github.com/livegate/livegate/pkg/events"
	"github.com/livegate/livegate/pkg/logbuf"
	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// recordingDriver is an in-memory HAProxy map that keeps every key and value it was asked to
// set or delete: whatever reaches it would reach HAProxy.
type recordingDriver struct {
	mu   sync.Mutex
	m    map[string]string
	seen []string
}

func (d *recordingDriver) Apply(_ context.Context, set map[string]string, del []string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, k := range del {
		d.seen = append(d.seen, k)
		delete(d.m, k)
	}
	for k, v := range set {
		d.seen = append(d.seen, k, v)
		d.m[k] = v
	}
	return nil
}

func (d *recordingDriver) List(context.Context) (map[string]string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make(map[string]string, len(d.m))
	for k, v := range d.m {
		out[k] = v
	}
	return out, nil
}

type nopCleaner struct{}

func (nopCleaner) DeleteUDP(context.Context, netip.Addr, []uint16) error { return nil }

// refusals returns the reason of every "route refused" log line, by instance id.
func refusals(logs *logbuf.Buffer) map[string]string {
	out := map[string]string{}
	for _, line := range strings.Split(logs.String(), "\n") {
		var l struct {
			Message    string `json:"message"`
			InstanceID string `json:"instance_id"`
			Reason     string `json:"reason"`
		}
		if json.Unmarshal([]byte(line), &l) == nil && l.Message == "route refused" {
			out[l.InstanceID] = l.Reason
		}
	}
	return out
}

// TestInjectionRoutesNeverReachHAProxyOrTheKernel writes hostile routes for this edge next to a
// good one. Each hostile route is refused with a reason naming the route field at fault (in the
// log, and as a route_refused event when its key can name a subject); the good one is
// programmed; and no hostile session id or backend ever reaches the HAProxy driver, the DNAT
// map or an iptables-restore batch.
func TestInjectionRoutesNeverReachHAProxyOrTheKernel(t *testing.T) {
	e := newEnv(t)
	cfg := config("edge-a", "default")
	cfg.Policy = routes.Policy{
		BackendCIDRs: []netip.Prefix{netip.MustParsePrefix("198.19.0.0/16"), netip.MustParsePrefix("fd00::/8")},
		BackendPorts: portalloc.Range{First: 30000, Last: 32767},
	}
	kernel := mediaplanetest.New()
	plane, err := mediaplane.New(mediaplane.Config{
		PublicIP: netip.MustParseAddr("198.18.1.1"), Ports: portalloc.Range{First: 10500, Last: 10599}, SNAT: true,
		BackendCIDRs: cfg.Policy.BackendCIDRs, BackendPorts: portalloc.Range{First: 30000, Last: 32767},
	}, append(kernel.Options(), mediaplane.WithConntrack(nopCleaner{}))...)
	if err != nil {
		t.Fatal(err)
	}
	drv := &recordingDriver{m: map[string]string{}}
	logs := &logbuf.Buffer{}
	runLoop(t, e, cfg, reconcile.Deps{
		Driver: drv, Media: plane,
		Events: events.NewPublisher(e.js, "test/edge-a"), Metrics: reconcile.NewMetrics(prometheus.NewRegistry()),
		Log: zerolog.New(logs).Level(zerolog.WarnLevel),
	})

	const sig, med = "198.19.0.10:30000", "198.19.0.10:31000"
	route := func(session, signaling string, media ...string) *livegatev1.Route {
		return &livegatev1.Route{SessionId: session, SignalingBackend: signaling, MediaBackends: media, EdgeId: "edge-a"}
	}
	hostile := []struct {
		key    string
		route  *livegatev1.Route
		reason string
	}{
		{"sid-newline", route("a\nset map /m x 1.2.3.4:5", sig, med), "session_id"},
		{"sid-cr", route("a\rb", sig, med), "session_id"},
		{"sid-space", route("a b", sig, med), "session_id"},
		{"sid-semicolon", route("a;show info", sig, med), "session_id"},
		{"sid-hash", route("#0", sig, med), "session_id"},
		{"sid-subshell", route("$(reboot)", sig, med), "session_id"},
		{"sid-backtick", route("`id`", sig, med), "session_id"},
		{"sid-pipe", route("a|b", sig, med), "session_id"},
		{"sid-amp", route("a&b", sig, med), "session_id"},
		{"sid-jump", route("-j ACCEPT", sig, med), "session_id"},
		{"sid-todest", route("x --to-destination 1.2.3.4:1", sig, med), "session_id"},
		{"sid-nul", route("a\x00b", sig, med), "session_id"},
		{"sid-cyrillic", route("sessi\u043en", sig, med), "session_id"},
		{"sid-fullwidth", route("\uff53ession", sig, med), "session_id"},
		{"sid-nbsp", route("a\u00a0b", sig, med), "session_id"},
		{"sid-long", route(strings.Repeat("a", 129), sig, med), "session_id"},
		{"sid-dotdot", route("..", sig, med), "session_id"},
		{"sid-empty", route("", sig, med), "session_id"},
		{"sig-cidr", route("s-sig-cidr", "10.0.0.1:30000"), "signaling_backend: address 10.0.0.1 is outside the allowed backend CIDRs"},
		{"sig-port", route("s-sig-port", "198.19.0.10:22"), "signaling_backend: port 22 is outside the allowed range"},
		{"sig-port0", route("s-sig-port0", "198.19.0.10:0"), "signaling_backend: port 0 is outside the allowed range"},
		{"sig-port65536", route("s-sig-65536", "198.19.0.10:65536"), "signaling_backend"},
		{"sig-newline", route("s-sig-nl", sig+"\n-A INPUT -j ACCEPT"), "signaling_backend"},
		{"sig-space", route("s-sig-sp", sig+" -j ACCEPT"), "signaling_backend"},
		{"sig-semicolon", route("s-sig-semi", sig+";show info"), "signaling_backend"},
		{"sig-host", route("s-sig-host", "app.local:30000"), "signaling_backend"},
		{"sig-subshell", route("s-sig-sub", "$(id):30000"), "signaling_backend"},
		{"sig-zone", route("s-sig-zone", "[fd00::1%eth0]:30000"), "signaling_backend"},
		{"sig-long", route("s-sig-long", strings.Repeat("1", 65)), "signaling_backend"},
		{"med-cidr", route("s-med-cidr", sig, "192.0.2.1:30000"), "media_backends[0]: address 192.0.2.1 is outside the allowed backend CIDRs"},
		{"med-port", route("s-med-port", sig, med, "198.19.0.10:32768"), "media_backends[1]: port 32768 is outside the allowed range"},
		{"med-todest", route("s-med-todest", sig, "--to-destination 1.2.3.4:30000"), "media_backends[0]"},
		{"med-newline", route("s-med-nl", sig, med+"\nCOMMIT"), "media_backends[0]"},
		{"med-ipv6", route("s-med-v6", sig, "[fd00::1]:30000"), "media ports"},
		{"med-too-many", route("s-med-many", sig, "198.19.0.11:31000", "198.19.0.11:31001", "198.19.0.11:31002", "198.19.0.11:31003", "198.19.0.11:31004"), "media_backends: 5 backends, more than the 4"},
		{"med-duplicate", route("s-med-dup", sig, "198.19.0.11:31000", "198.19.0.11:31000"), "media_backends[1]: 198.19.0.11:31000 repeats media_backends[0]"},
		{"pool-star", &livegatev1.Route{SessionId: "s-pool", SignalingBackend: sig, EdgeId: "edge-a", Pool: "p*"}, "pool"},
		{"instance-differs", &livegatev1.Route{SessionId: "s-inst", InstanceId: "other", SignalingBackend: sig, EdgeId: "edge-a"}, "instance_id"},
		{"inst.dot", route("s-key", sig), "key (instance id)"},
	}
	for _, h := range hostile {
		putRoute(t, e, h.key, h.route)
	}
	putRoute(t, e, "good", route("s-good", sig, med))

	waitFor(t, "the good route", func() bool {
		m, _ := drv.List(context.Background())
		return m["s-good"] == sig
	})
	waitFor(t, "every refusal in the log", func() bool {
		got := refusals(logs)
		for _, h := range hostile {
			if _, ok := got[h.key]; !ok {
				t.Logf("no refusal yet for %s", h.key)
				return false
			}
		}
		return true
	})
	reasons := refusals(logs)
	for _, h := range hostile {
		reason, ok := reasons[h.key]
		if !ok || !strings.Contains(reason, h.reason) {
			t.Errorf("%s: refusal %q, want one naming %q", h.key, reason, h.reason)
		}
		if events.ValidateToken("", h.key) != nil {
			continue
		}
		waitFor(t, "route_refused of "+h.key, func() bool {
			ev := lastEvent(t, e, "default", h.key, livegatev1.EventType_EVENT_TYPE_ROUTE_REFUSED)
			return ev != nil && strings.Contains(ev.GetRouteRefused().GetReason(), h.reason)
		})
	}

	drv.mu.Lock()
	seen := append([]string(nil), drv.seen...)
	drv.mu.Unlock()
	for _, s := range seen {
		if s != "s-good" && s != sig {
			t.Errorf("HAProxy driver got %q", s)
		}
	}
	gotMedia := false
	for _, c := range kernel.DNAT.Applied() {
		for port, b := range c.Set {
			if b.String() != med {
				t.Errorf("the DNAT map got %d → %s", port, b)
			}
			gotMedia = true
		}
	}
	if !gotMedia {
		t.Error("the good media backend never reached the DNAT map")
	}
	for _, p := range kernel.IPTables.Restores() {
		for _, line := range strings.Split(string(p), "\n") {
			if strings.Contains(line, "INPUT") || strings.ContainsAny(line, "$`|&;\x00") {
				t.Errorf("iptables-restore got %q", line)
			}
		}
	}
}
