package restapi

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/livegate/livegate/agent/internal/lifecycle"
	"github.com/livegate/livegate/agent/internal/metrics"
	"github.com/livegate/livegate/agent/internal/session"
	"github.com/livegate/livegate/pkg/logbuf"
	"github.com/rs/zerolog"
)

// TestBodyMustBeJSON: a cross-site "simple" request (text/plain, a form) cannot set credentials or
// end the session; only a JSON body is read, as the reference's FastAPI does.
func TestBodyMustBeJSON(t *testing.T) {
	creds := `{"stunIp":"1.2.3.4","stunPort":3478,"username":"u","password":"p"}`
	end := `{"sessionId":"s1","gracefulShutdown":true}`
	for _, ct := range []string{"", "text/plain", "text/plain; charset=utf-8", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/jsonx", "text/json", "application/json; charset="} {
		r := newRig(t, session.Config{QuitOnSessionEnded: true, SessionID: "s1"})
		if code, body := r.doType("POST", ct, "/v1/streaming/creds", creds); code != 415 || body != `{"success":false,"errorMessage":"Content-Type: must be application/json"}` {
			t.Errorf("creds with Content-Type %q: %d %s", ct, code, body)
		}
		if code, body := r.doType("POST", ct, "/v1/streaming/endsession", end); code != 415 || body != `{"detail":"Content-Type: must be application/json"}` {
			t.Errorf("endsession with Content-Type %q: %d %s", ct, code, body)
		}
		if _, ok := r.agent.Credentials(); ok {
			t.Errorf("Content-Type %q: credentials set", ct)
		}
		if v := r.agent.View(); v.SessionsEnded != 0 {
			t.Errorf("Content-Type %q: session ended", ct)
		}
	}
	for _, ct := range []string{"application/json", "application/json; charset=utf-8", "Application/JSON", "application/merge-patch+json"} {
		r := newRig(t, session.Config{QuitOnSessionEnded: true, SessionID: "s1"})
		if code, body := r.doType("POST", ct, "/v1/streaming/creds", creds); code != 200 {
			t.Errorf("creds with Content-Type %q: %d %s", ct, code, body)
		}
	}
}

// TestExactKeyNames: a member counts only under its exact name, at every depth, as pydantic reads
// it; encoding/json alone takes "SESSIONID" for "sessionId".
func TestExactKeyNames(t *testing.T) {
	r := newRig(t, session.Config{QuitOnSessionEnded: true, SessionID: "s1"})
	r.expect("POST", "/v1/streaming/endsession", `{"SessionId":"s1","gracefulShutdown":true}`, 400, `{"detail":"sessionId: field required"}`)
	r.expect("POST", "/v1/streaming/endsession", `{"sessionid":"s1"}`, 400, `{"detail":"sessionId: field required"}`)
	r.expect("POST", "/v1/streaming/creds", `{"STUNIP":"1.2.3.4","stunPort":3478,"username":"u","password":"p"}`, 400, `{"success":false,"errorMessage":"stunIp: field required"}`)
	r.expect("POST", "/v1/streaming/creds", `{"stunIp":"1.2.3.4","stunPort":3478,"username":"u","password":"p","turnDetails":{"Username":"u","password":"p","uris":["turn:x"],"relayProtocol":"TCP","transportPolicy":"ALL","relayLocation":"CSP"}}`,
		400, `{"success":false,"errorMessage":"turnDetails.username: field required"}`)
	for body, want := range map[string]string{
		`{"sessionId":"s1","GRACEFULSHUTDOWN":true}`:                          "AWAITING_RESUME",
		`{"sessionId":"s1","gracefulShutdown":true,"GracefulShutdown":false}`: "COMPLETE",
		`{"sessionId":"s1","gracefulShutdown":false,"GracefulShutdown":true}`: "AWAITING_RESUME",
	} {
		r := newRig(t, session.Config{QuitOnSessionEnded: true, ResumeTimeout: time.Minute, SessionID: "s1"})
		r.agent.Signal(session.AppReady)
		r.agent.Signal(session.RtxReady)
		r.agent.Signal(session.ClientConnected)
		r.expect("POST", "/v1/streaming/endsession", body, 200, `{"sessionStatus":"`+want+`"}`)
	}
}

// TestOptionsIsMethodNotAllowed: OPTIONS gets the 405 every other unserved method gets (there is
// no CORS preflight to answer), and an unknown path stays 404.
func TestOptionsIsMethodNotAllowed(t *testing.T) {
	r := newRig(t, session.Config{})
	r.expect("OPTIONS", "/v1/streaming/creds", "", 405, `{"detail":"Method Not Allowed"}`)
	r.expect("OPTIONS", "/v1/streaming/ready", "", 405, `{"detail":"Method Not Allowed"}`)
	r.expect("OPTIONS", "/nope", "", 404, `{"detail":"Not Found"}`)
}

// TestTooLargeBodyClosesConnection: after a 413 the connection closes, so the rest of a large body
// is never read and the connection carries nothing more.
func TestTooLargeBodyClosesConnection(t *testing.T) {
	r := newRig(t, session.Config{})
	for _, path := range []string{"/v1/streaming/creds", "/v1/streaming/endsession"} {
		conn, err := net.Dial("tcp", strings.TrimPrefix(r.srv.URL, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		const size = 100 << 10
		fmt.Fprintf(conn, "POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", path, size)
		_, _ = conn.Write([]byte(strings.Repeat(" ", size)))
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		br := bufio.NewReader(conn)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 413 || !resp.Close {
			t.Errorf("%s: %d, Connection: close %v", path, resp.StatusCode, resp.Close)
		}
		if _, err := br.ReadByte(); !errors.Is(err, io.EOF) {
			t.Errorf("%s: connection still open after the 413: %v", path, err)
		}
		conn.Close()
	}
}

// TestServerErrorsLoggedAsJSON: net/http's own complaints reach the structured log, not stderr as
// plain text.
func TestServerErrorsLoggedAsJSON(t *testing.T) {
	var buf logbuf.Buffer
	m := metrics.New()
	e := New(lifecycle.New(session.Config{NewID: func() string { return "s" }}), m, WithLogger(zerolog.New(&buf)))
	if e.Server.ErrorLog == nil {
		t.Fatal("the session API's server has no ErrorLog: net/http writes plain text to stderr")
	}
	e.Server.ErrorLog.Printf("http: TLS handshake error from 127.0.0.1:1: EOF")
	got := lines(t, &buf)
	if len(got) != 1 || got[0]["level"] != "warn" || got[0]["message"] != "http: TLS handshake error from 127.0.0.1:1: EOF" || got[0]["component"] != "http_server" {
		t.Fatalf("logged %v", got)
	}
	if e.Server.ReadTimeout == 0 || e.Server.WriteTimeout == 0 || e.Server.IdleTimeout == 0 || e.Server.ReadHeaderTimeout == 0 {
		t.Errorf("timeouts: header %s, read %s, write %s, idle %s", e.Server.ReadHeaderTimeout, e.Server.ReadTimeout, e.Server.WriteTimeout, e.Server.IdleTimeout)
	}
}
