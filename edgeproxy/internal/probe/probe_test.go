package probe

import (
	"bytes"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/coder/websocket"
	"github.com/livegate/livegate/pkg/dtlssrtp"
)

// signalingServer is a websocket endpoint like an app's /sign_in; echo controls whether it selects
// the offered subprotocol.
type signalingServer struct {
	echo bool

	mu       sync.Mutex
	queries  []string
	offered  []string
	marked   []string
	accepted int
}

func (s *signalingServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/sign_in" {
		http.NotFound(w, r)
		return
	}
	s.mu.Lock()
	s.queries = append(s.queries, r.URL.RawQuery)
	s.offered = append(s.offered, r.Header.Get("Sec-WebSocket-Protocol"))
	s.marked = append(s.marked, r.Header.Get(ProbeHeader))
	s.mu.Unlock()
	opts := &websocket.AcceptOptions{}
	if s.echo {
		opts.Subprotocols = []string{r.Header.Get("Sec-WebSocket-Protocol")}
	}
	c, err := websocket.Accept(w, r, opts)
	if err != nil {
		return
	}
	s.mu.Lock()
	s.accepted++
	s.mu.Unlock()
	defer c.CloseNow()
	for {
		if _, _, err := c.Read(r.Context()); err != nil {
			return
		}
	}
}

func startSignaling(t *testing.T, echo bool) (*signalingServer, string) {
	t.Helper()
	s := &signalingServer{echo: echo}
	srv := httptest.NewUnstartedServer(s)
	// The untrusted-certificate case makes the server log a TLS error that says nothing new.
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return s, "wss://" + strings.TrimPrefix(srv.URL, "https://") + "/sign_in"
}

func startResponder(t *testing.T) string {
	t.Helper()
	r, err := dtlssrtp.NewResponder(t.Context(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return "udp://" + r.Addr().String()
}

func closedUDPPort(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := pc.LocalAddr().String()
	_ = pc.Close()
	return "udp://" + addr
}

func TestSignalingChecksSubprotocolAndQuery(t *testing.T) {
	s, url := startSignaling(t, true)
	took, err := Signaling(t.Context(), url, "sess-1", true)
	if err != nil {
		t.Fatalf("Signaling: %v", err)
	}
	if took <= 0 {
		t.Errorf("handshake took %s", took)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.offered) != 1 || s.offered[0] != "x-nv-sessionid.sess-1" {
		t.Errorf("offered subprotocols %q, want x-nv-sessionid.sess-1", s.offered)
	}
	if q := s.queries[0]; !strings.Contains(q, "peer_id=livegate-probe-") || !strings.Contains(q, "version=2") {
		t.Errorf("query %q lacks peer_id or version=2", q)
	}
	// The app must be able to tell the probe from the session's client.
	if s.marked[0] != "1" {
		t.Errorf("%s = %q, want 1", ProbeHeader, s.marked[0])
	}
}

func TestSignalingKeepsGivenQuery(t *testing.T) {
	u, err := SignalingURL("wss://edge.example:48322/sign_in?peer_id=me&version=3")
	if err != nil {
		t.Fatal(err)
	}
	if got := u.Query(); got.Get("peer_id") != "me" || got.Get("version") != "3" {
		t.Errorf("query = %v, want the given peer_id and version", got)
	}
	for _, bad := range []string{"https://edge/sign_in", "wss:///sign_in", "::"} {
		if _, err := SignalingURL(bad); err == nil {
			t.Errorf("SignalingURL(%q) accepted it", bad)
		}
	}
}

func TestSignalingFailures(t *testing.T) {
	_, echoURL := startSignaling(t, true)
	_, silentURL := startSignaling(t, false)
	tests := []struct {
		name     string
		url, id  string
		insecure bool
		is       error
		contains string
	}{
		{"subprotocol not echoed", silentURL, "sess-1", true, ErrSubprotocolNotEchoed, "x-nv-sessionid.sess-1"},
		{"no route", strings.Replace(echoURL, "/sign_in", "/nowhere", 1), "sess-1", true, nil, "404"},
		{"certificate not trusted", echoURL, "sess-1", false, nil, "certificate"},
		{"bad session id", echoURL, "bad id", true, nil, "session id"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Signaling(t.Context(), tt.url, tt.id, tt.insecure)
			if err == nil {
				t.Fatal("Signaling succeeded")
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("err = %v, want %v", err, tt.is)
			}
			t.Logf("error: %v", err)
			if !strings.Contains(err.Error(), tt.contains) {
				t.Errorf("err = %v, want it to mention %q", err, tt.contains)
			}
		})
	}
}

func run(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := Run(t.Context(), args, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

func TestRunPasses(t *testing.T) {
	s, url := startSignaling(t, true)
	media1, media2 := startResponder(t), startResponder(t)
	code, out, errOut := run(t, "--signaling", url, "--session-id", "sess-42", "--insecure",
		"--media", media1, "--media", media2, "--count", "40", "--rate", "400")
	t.Logf("stdout:\n%s", out)
	if code != ExitOK {
		t.Fatalf("exit %d, stderr: %s", code, errOut)
	}
	for _, want := range []string{"101 Switching Protocols", "x-nv-sessionid.sess-42 echoed",
		"media " + strings.TrimPrefix(media1, "udp://"), "media " + strings.TrimPrefix(media2, "udp://"),
		"sent 40, echoed 40", "all 3 checks passed"} {
		if !strings.Contains(out, want) {
			t.Errorf("stdout lacks %q", want)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.accepted != 1 {
		t.Errorf("signaling server accepted %d websockets, want 1", s.accepted)
	}
}

func TestRunMediaOnlyAndSignalingOnly(t *testing.T) {
	if code, _, errOut := run(t, "--media", startResponder(t), "--count", "20", "--rate", "400"); code != ExitOK {
		t.Errorf("media only: exit %d, stderr: %s", code, errOut)
	}
	_, url := startSignaling(t, true)
	if code, _, errOut := run(t, "--signaling", url, "--session-id", "s", "--insecure"); code != ExitOK {
		t.Errorf("signaling only: exit %d, stderr: %s", code, errOut)
	}
}

func TestRunFails(t *testing.T) {
	_, silentURL := startSignaling(t, false)
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"closed media port", []string{"--media", closedUDPPort(t), "--timeout", "2s"}, "FAIL media"},
		{"subprotocol not echoed", []string{"--signaling", silentURL, "--session-id", "s", "--insecure"}, "did not echo"},
		{"untrusted certificate", []string{"--signaling", silentURL, "--session-id", "s"}, "needs --insecure"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errOut := run(t, tt.args...)
			if code != ExitFailed {
				t.Errorf("exit %d, want %d", code, ExitFailed)
			}
			if !strings.Contains(out, tt.want) {
				t.Errorf("stdout %q lacks %q", out, tt.want)
			}
			if !strings.Contains(errOut, "1 of 1 checks failed") {
				t.Errorf("stderr %q lacks the summary", errOut)
			}
		})
	}
}

func TestRunUsageErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"nothing to probe", nil, "nothing to probe"},
		{"signaling without session", []string{"--signaling", "wss://h:48322/sign_in"}, "--session-id"},
		{"bad session id", []string{"--signaling", "wss://h:48322/sign_in", "--session-id", "a/b"}, "--session-id"},
		{"bad signaling scheme", []string{"--signaling", "http://h/sign_in", "--session-id", "s"}, "scheme"},
		{"bad media", []string{"--media", "10.0.0.1:5000"}, "udp://HOST:PORT"},
		{"bad media port", []string{"--media", "udp://h:0"}, "port"},
		{"bad count", []string{"--media", "udp://h:1", "--count", "0"}, "--count"},
		{"bad loss", []string{"--media", "udp://h:1", "--max-loss", "2"}, "--max-loss"},
		{"unknown flag", []string{"--bogus"}, "bogus"},
		{"stray argument", []string{"--media", "udp://h:1", "extra"}, "extra"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, errOut := run(t, tt.args...)
			if code != ExitUsage {
				t.Errorf("exit %d, want %d", code, ExitUsage)
			}
			if !strings.Contains(errOut, tt.want) {
				t.Errorf("stderr %q lacks %q", errOut, tt.want)
			}
		})
	}
}

func TestRunHelp(t *testing.T) {
	code, _, errOut := run(t, "-h")
	if code != ExitOK || !strings.Contains(errOut, "usage: livegate-edgeproxy probe") {
		t.Errorf("exit %d, stderr %q", code, errOut)
	}
}

func TestMediaAddr(t *testing.T) {
	got, err := MediaAddr("udp://198.18.0.1:10500")
	if err != nil || got != "198.18.0.1:10500" {
		t.Errorf("MediaAddr = %q, %v", got, err)
	}
	got, err = MediaAddr("udp://[2001:db8::1]:10500")
	if err != nil || got != "[2001:db8::1]:10500" {
		t.Errorf("MediaAddr v6 = %q, %v", got, err)
	}
}
