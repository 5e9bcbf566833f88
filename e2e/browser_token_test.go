package e2e

import (
	"context"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/livegate/livegate/e2e/internal/browser"
	"github.com/livegate/livegate/e2e/internal/netns"
	"github.com/livegate/livegate/e2e/internal/stack"
	"github.com/livegate/livegate/pkg/sessiontoken"
	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
)

// browserTokenPrefix starts the namespaces of TestBrowserSessionTokenRequired.
const browserTokenPrefix = "lgbt"

// TestBrowserSessionTokenRequired plays a sample-app session in headless Chromium through an
// edge started with --session-token=required: the page sends the token minted for its session
// beside the session id, and the stream plays; the same page without a token, or with the token
// of another session, never opens its websocket.
func TestBrowserSessionTokenRequired(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("e2e: needs root (network namespaces, iptables, conntrack); run `sudo make test`")
	}
	if _, err := browser.Find(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dir := t.TempDir()
	key, err := sessiontoken.NewES256("e2e1")
	if err != nil {
		t.Fatal(err)
	}
	files, err := key.Files()
	if err != nil {
		t.Fatal(err)
	}
	keys := filepath.Join(dir, "token-keys")
	if err := os.Mkdir(keys, 0o755); err != nil {
		t.Fatal(err)
	}
	// Only the public key goes to the edge; the private one stays with the "orchestrator".
	if err := os.WriteFile(filepath.Join(keys, "e2e1"+sessiontoken.PublicExt), files["e2e1"+sessiontoken.PublicExt], 0o644); err != nil {
		t.Fatal(err)
	}
	d := stack.StartFor(ctx, t, stack.Options{
		Prefix: browserTokenPrefix, Bins: binaries(t), Dir: dir, EdgeID: edgeID, Pool: pool, LeaseTTL: leaseTTL,
		Nodes:    []stack.NodeOptions{{StreamApp: true, ResumeTimeoutSeconds: 30}},
		EdgeArgs: []string{"--session-token", "required", "--session-token-keys", keys},
	})
	page, stopPage, err := browser.ServePage(d.Topo.Client)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stopPage)
	w := &walk{t: t, ctx: ctx, d: d, n: d.Nodes[0]}
	rfc := w.event(0, livegatev1.EventType_EVENT_TYPE_READY_FOR_CONNECTION)
	sid := rfc.Event.GetSessionId()
	w.routed(0, sid, rfc.At)
	mint := func(session string) string {
		tok, err := sessiontoken.Mint(key, sessiontoken.NewClaims(session, time.Now(), 5*time.Minute))
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}

	for _, tc := range []struct {
		name  string
		token string
	}{
		{"no_token", ""},
		{"other_session", mint("another-session")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			br, err := browser.Launch(ctx, d.Topo.Client)
			if err != nil {
				t.Fatal(err)
			}
			defer br.Close()
			extra := url.Values{}
			if tc.token != "" {
				extra.Set("token", tc.token)
			}
			if err := br.Open(ctx, page, netns.EdgePublic.String(), sid, extra); err != nil {
				t.Fatal(err)
			}
			tw := &walk{t: t, ctx: ctx, d: d, n: d.Nodes[0]}
			st := tw.pageState(br, "the websocket refused", func(st browser.State) bool { return st.WSState == "closed" })
			if st.FramesDecoded != 0 || st.PCState == "connected" {
				t.Errorf("refused page still streamed: %+v", st)
			}
		})
	}

	br, err := browser.Launch(ctx, d.Topo.Client)
	if err != nil {
		t.Fatal(err)
	}
	defer br.Close()
	if err := br.Open(ctx, page, netns.EdgePublic.String(), sid, url.Values{"token": {mint(sid)}}); err != nil {
		t.Fatal(err)
	}
	st := w.pageState(br, "the first decoded frame", func(st browser.State) bool { return st.FirstFrameAt > 0 })
	before := st.FramesDecoded
	time.Sleep(3 * time.Second)
	st = w.pageState(br, "figures", func(browser.State) bool { return true })
	if got := st.FramesDecoded - before; got < 30 {
		t.Errorf("%d frames decoded in 3 s with a session token, want at least 30 (state %+v)", got, st)
	}
	t.Logf("browser with a required session token: %d frames decoded, %.0f kbit/s, pair %s -> %s", st.FramesDecoded, st.BitrateKbps, st.LocalCandidate, st.RemoteCandidate)
}
