package e2e

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/livegate/livegate/e2e/internal/browser"
	"github.com/livegate/livegate/e2e/internal/netns"
	"github.com/livegate/livegate/e2e/internal/stack"
	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
)

// browserPrefix names the browser test's namespaces, apart from the lifecycle test's.
const browserPrefix = "lgeb"

// TestBrowserStreams plays two sessions in two headless Chromiums at once, in the client
// namespace, through the real edge (HAProxy TLS on 48322, kernel DNAT, NATS) from two WebRTC
// sample apps with their agents: the video plays, the data channel echoes, the selected
// candidate pair is the edge's public address and the session's port, each browser sees its own
// app, and endsession takes the peer connection, the route, the DNAT map element and the
// translated conntrack entries away.
func TestBrowserStreams(t *testing.T) {
	requireBrowser(t)
	b := binaries(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	d := stack.StartFor(ctx, t, stack.Options{
		Prefix: browserPrefix, Bins: b, Dir: t.TempDir(), EdgeID: edgeID, Pool: pool, LeaseTTL: leaseTTL,
		Nodes: []stack.NodeOptions{
			{StreamApp: true, QuitOnSessionEnded: true, ResumeTimeoutSeconds: resumeTimeoutSeconds},
			{StreamApp: true, QuitOnSessionEnded: true, ResumeTimeoutSeconds: resumeTimeoutSeconds},
		},
	})
	page := servePage(t, d)

	t.Run("group", func(t *testing.T) {
		for _, n := range d.Nodes {
			t.Run(n.InstanceID, func(t *testing.T) {
				t.Parallel()
				w := &walk{t: t, ctx: ctx, d: d, n: n, translatedOnly: true}
				w.playInBrowser(page)
			})
		}
	})
}

// playInBrowser plays the node's first session in a browser of its own, checks it, and ends it.
func (w *walk) playInBrowser(page string) {
	t := w.t
	s := w.readySession(0)
	port := int(s.endpoint.GetPublicUdpPorts()[0])
	if got := s.endpoint.GetPublicIp(); got != netns.EdgePublic.String() {
		t.Fatalf("endpoint public ip %q, want the edge's %s", got, netns.EdgePublic)
	}
	mark := w.d.Obs.Mark()
	br := w.openPage(page, s.id, nil)

	st := w.pageState(br, "the first decoded frame", func(st browser.State) bool { return st.FirstFrameAt > 0 })
	firstFrame := time.UnixMilli(st.FirstFrameAt)
	// The browser starts after the session is ready, so the time from ready_for_connection
	// includes Chromium's start; the time from opening the page is the session's own.
	w.logf("time to first frame: %s from opening the page (%s from ready_for_connection)",
		firstFrame.Sub(time.UnixMilli(st.StartedAt)).Round(time.Millisecond),
		firstFrame.Sub(s.readyAt).Round(time.Millisecond))
	w.event(mark, livegatev1.EventType_EVENT_TYPE_CLIENT_CONNECTED)
	w.waitReady(readyActive)

	st = w.playsOn(br, st, "")
	if rc := st.RemoteCandidate; rc == nil || rc.Address != netns.EdgePublic.String() || rc.Port != port || rc.Protocol != "udp" {
		t.Errorf("selected pair's remote candidate %s, want %s:%d udp", rc, netns.EdgePublic, port)
	}

	sent := w.pageState(br, "the data channel", func(browser.State) bool {
		ok, err := br.SendInput(w.ctx)
		return err == nil && ok
	}).Echoes
	st = w.pageState(br, "the input echo", func(st browser.State) bool { return st.Echoes > sent })
	if st.EchoSession != s.id {
		t.Errorf("input echoed by session %q's app, want %s's", st.EchoSession, s.id)
	}
	rtt := "-"
	if st.RTTMs != nil {
		rtt = fmt.Sprintf("%.1f ms", *st.RTTMs)
	}
	w.logf("browser: %d frames decoded, %.0f kbit/s, RTT %s, echo %.1f ms, pair %s -> %s, errors %q",
		st.FramesDecoded, st.BitrateKbps, rtt, *st.LastEchoMs, st.LocalCandidate, st.RemoteCandidate, st.Errors)

	mark = w.d.Obs.Mark()
	if status, err := w.n.EndSession(w.ctx, s.id, true); err != nil {
		t.Fatalf("endsession: %v (%s)", err, status)
	}
	st = w.pageState(br, "the page to see the session end", func(st browser.State) bool {
		return st.WSState == "closed" && st.PCState == "closed"
	})
	if !strings.HasPrefix(st.WSCloseReason, "session ended") {
		t.Errorf("signaling closed with %d %q, want the app's session ended", st.WSCloseCode, st.WSCloseReason)
	}
	w.logf("session %s ended: the page's websocket and peer connection closed", s.id)
	w.gone(mark, s)
}

// pageSession serves the player page for d and waits for the first session of its first node to
// be routed: where the browser tests of one stream app start.
func pageSession(ctx context.Context, t *testing.T, d *stack.Deployment) (page string, w *walk, s session) {
	t.Helper()
	page = servePage(t, d)
	w = &walk{t: t, ctx: ctx, d: d, n: d.Nodes[0]}
	return page, w, w.readySession(0)
}

// sub is w for subtest t.
func (w *walk) sub(t *testing.T) *walk {
	c := *w
	c.t = t
	return &c
}

// requireBrowser skips t without root and fails it without Chromium.
func requireBrowser(t *testing.T) {
	t.Helper()
	stack.RequireRoot(t, "sudo make test")
	if _, err := browser.Find(); err != nil {
		t.Fatal(err)
	}
}

// servePage serves the web client's page in d's client namespace until t ends.
func servePage(t *testing.T, d *stack.Deployment) string {
	t.Helper()
	page, stop, err := browser.ServePage(d.Topo.Client)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	return page
}

// openPage launches a browser of w's own in the client namespace, closed when w's test ends, and
// opens page on session through the edge with the extra parameters.
func (w *walk) openPage(page, session string, extra url.Values) *browser.Browser {
	w.t.Helper()
	br, err := browser.Launch(w.ctx, w.d.Topo.Client)
	if err != nil {
		w.t.Fatal(err)
	}
	w.t.Cleanup(br.Close)
	if err := br.Open(w.ctx, page, netns.EdgePublic.String(), session, extra); err != nil {
		w.t.Fatal(err)
	}
	return br
}

// playsOn checks that the page, in state st, decodes at least 30 more frames in the next 3 s
// (how: " over TURN/tcp", say) and returns its state then.
func (w *walk) playsOn(br *browser.Browser, st browser.State, how string) browser.State {
	w.t.Helper()
	before := st.FramesDecoded
	time.Sleep(3 * time.Second)
	st = w.pageState(br, "figures", func(browser.State) bool { return true })
	if got := st.FramesDecoded - before; got < 30 {
		w.t.Errorf("%d frames decoded in 3 s%s, want at least 30 (state %+v)", got, how, st)
	}
	return st
}

// pageState polls the page until ok holds, for up to 30 s.
func (w *walk) pageState(br *browser.Browser, what string, ok func(browser.State) bool) browser.State {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(w.ctx, 30*time.Second)
	defer cancel()
	st, err := br.WaitState(ctx, ok)
	if err != nil {
		w.t.Fatalf("waiting for %s: page state %+v (%v)", what, st, err)
	}
	return st
}
