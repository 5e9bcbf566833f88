package haproxy_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/livegate/livegate/edgeproxy/internal/haproxy"
	"github.com/livegate/livegate/edgeproxy/internal/haproxy/haproxytest"
	"github.com/livegate/livegate/pkg/freeport"
	"github.com/livegate/livegate/pkg/sessiontoken"
)

// chromium finds a Chromium to run headless: $CHROMIUM, then PATH; without one the test is skipped.
func chromium(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Skip("chromium not found")
	return ""
}

// browserBackend is a websocket app that takes the page's origin (another port than the edge's)
// and sends "app <path>".
func browserBackend(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, &websocket.AcceptOptions{OriginPatterns: []string{"127.0.0.1:*"}})
		if err != nil {
			return
		}
		defer c.CloseNow()
		_ = c.Write(r.Context(), websocket.MessageText, []byte("app "+r.URL.Path))
		_, _, _ = c.Read(r.Context())
	})}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	return l.Addr().String()
}

// TestSessionTokenFromChromium checks that a browser's WebSocket constructor takes
// x-nv-token.<jwt> as a subprotocol beside x-nv-sessionid.<id>, that the frontend lets the
// good token through with the session's subprotocol answered, and refuses a tampered one.
func TestSessionTokenFromChromium(t *testing.T) {
	browser := chromium(t)
	f := haproxytest.NewFiles(t, haproxytest.Dir(t))
	signers, keys := tokenKeys(t, f.Dir, "es-1")
	h := haproxytest.Start(t, tokenConfig(f, freeport.TCP(t), haproxy.TokensRequired, keys), f)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	app := browserBackend(t)
	if err := h.Driver.Apply(ctx, map[string]string{"s1": app}, nil); err != nil {
		t.Fatal(err)
	}
	good := mintToken(t, signers[0], sessiontoken.NewClaims("s1", time.Now(), 5*time.Minute))
	bad := good[:len(good)-4] + "AAAA"
	results := make(chan string, 4)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/result" {
			results <- r.URL.Query().Get("r")
			return
		}
		w.Header().Set("Content-Type", "text/html")
		fmt.Fprintf(w, `<!doctype html><script>
function open(name, token, next) {
  const ws = new WebSocket("wss://127.0.0.1:%d/sign_in", ["x-nv-sessionid.s1", "x-nv-token." + token]);
  const report = r => fetch("/result?r=" + encodeURIComponent(name + " " + r)).then(next);
  ws.onmessage = e => { report("open " + ws.protocol + " " + e.data); ws.close(); };
  ws.onclose = e => { if (e.code !== 1000 && e.code !== 1005) report("closed " + e.code); };
}
open("good", %q, () => open("bad", %q, () => {}));
</script>`, h.Port, good, bad)
	})}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	cmd := exec.Command(browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--ignore-certificate-errors",
		"--user-data-dir="+filepath.Join(f.Dir, "chromium"), "http://"+l.Addr().String()+"/")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		_ = cmd.Wait()
	})
	for _, want := range []string{"good open x-nv-sessionid.s1 app /sign_in", "bad closed 1006"} {
		select {
		case got := <-results:
			if got != want {
				t.Fatalf("browser: %q, want %q", got, want)
			}
		case <-ctx.Done():
			t.Fatalf("browser: no %q", want)
		}
	}
	counts, err := haproxy.NewClient(f.Socket, 5*time.Second).TokenCounts(ctx)
	if err != nil || counts["valid"] != 1 || counts["bad_signature"] != 1 || strings.Contains(fmt.Sprint(counts), "missing") {
		t.Fatalf("token counts %v, %v", counts, err)
	}
}
