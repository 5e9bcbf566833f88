package e2e

import (
	"context"
	"net/url"
	"testing"
	"time"

	"github.com/livegate/livegate/e2e/internal/browser"
	"github.com/livegate/livegate/e2e/internal/stack"
)

// browserTURNPrefix starts the namespaces of TestBrowserTURN.
const browserTURNPrefix = "lgtb"

// TestBrowserTURN plays a sample-app session in headless Chromium whose network drops UDP: the
// edge runs its TURN relay, the app passes the relay and the session's credential to the page
// in its offer, and the stream plays over TURN/TCP, then over TURN/TLS with iceTransportPolicy
// "relay"; the selected pair's local candidate is the relay's each time.
func TestBrowserTURN(t *testing.T) {
	requireBrowser(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	d := startTURNStack(ctx, t, browserTURNPrefix, []stack.NodeOptions{{StreamApp: true, ResumeTimeoutSeconds: 30}})
	page, w, s := pageSession(ctx, t, d)
	waitEndpointWithTURN(ctx, t, d, w.n.InstanceID)
	if err := d.Topo.Client.Run(ctx, "iptables", "-A", "OUTPUT", "-p", "udp", "-j", "DROP"); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name, relay, protocol string
	}{
		{"turn_tcp", "", "tcp"},
		{"turn_tls_relay_only", "tls", "tls"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			extra := url.Values{}
			if tc.relay != "" {
				extra.Set("relay", tc.relay)
			}
			tw := w.sub(t)
			br := tw.openPage(page, s.id, extra)
			st := tw.pageState(br, "the first decoded frame", func(st browser.State) bool { return st.FirstFrameAt > 0 })
			t.Logf("time to first frame over TURN/%s: %s from opening the page", tc.protocol,
				time.UnixMilli(st.FirstFrameAt).Sub(time.UnixMilli(st.StartedAt)).Round(time.Millisecond))
			st = tw.playsOn(br, st, " over TURN/"+tc.protocol)
			// The app sees the relay's datagrams from the edge's node-side address (SNAT), so the
			// browser may learn its relayed address as peer-reflexive: the port, in the relay
			// range, and the relay candidate on it say the pair is relayed.
			if lc := st.LocalCandidate; lc == nil || (lc.Type != "relay" && lc.Type != "prflx") || lc.Port < 40000 || lc.Port > 40099 || lc.RelayProtocol != tc.protocol {
				t.Errorf("selected pair's local candidate %+v, want the relay's (port 40000-40099) over %s", lc, tc.protocol)
			}
			t.Logf("browser over TURN/%s: %d frames decoded, %.0f kbit/s, pair %s -> %s", tc.protocol, st.FramesDecoded, st.BitrateKbps, st.LocalCandidate, st.RemoteCandidate)
		})
	}
}
