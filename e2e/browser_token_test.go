package e2e

import (
	"context"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/livegate/livegate/e2e/internal/browser"
	"github.com/livegate/livegate/e2e/internal/stack"
	"github.com/livegate/livegate/pkg/sessiontoken"
)

// browserTokenPrefix starts the namespaces of TestBrowserSessionTokenRequired.
const browserTokenPrefix = "lgbt"

// TestBrowserSessionTokenRequired plays a sample-app session in headless Chromium through an
// edge started with --session-token=required: the page sends the token minted for its session
// beside the session id, and the stream plays; the same page without a token, or with the token
// of another session, never opens its websocket.
func TestBrowserSessionTokenRequired(t *testing.T) {
	requireBrowser(t)
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
	page, w, s := pageSession(ctx, t, d)
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
			extra := url.Values{}
			if tc.token != "" {
				extra.Set("token", tc.token)
			}
			tw := w.sub(t)
			br := tw.openPage(page, s.id, extra)
			st := tw.pageState(br, "the websocket refused", func(st browser.State) bool { return st.WSState == "closed" })
			if st.FramesDecoded != 0 || st.PCState == "connected" {
				t.Errorf("refused page still streamed: %+v", st)
			}
		})
	}

	br := w.openPage(page, s.id, url.Values{"token": {mint(s.id)}})
	st := w.pageState(br, "the first decoded frame", func(st browser.State) bool { return st.FirstFrameAt > 0 })
	st = w.playsOn(br, st, " with a session token")
	t.Logf("browser with a required session token: %d frames decoded, %.0f kbit/s, pair %s -> %s", st.FramesDecoded, st.BitrateKbps, st.LocalCandidate, st.RemoteCandidate)
}
