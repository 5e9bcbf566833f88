package restapi

import (
	"encoding/json"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/livegate/livegate/agent/internal/lifecycle"
	"github.com/livegate/livegate/agent/internal/metrics"
	"github.com/livegate/livegate/agent/internal/session"
	"github.com/livegate/livegate/pkg/httpcall"
)

type rig struct {
	t     *testing.T
	agent *lifecycle.Agent
	srv   *httptest.Server
}

func newRig(t *testing.T, cfg session.Config) *rig {
	t.Helper()
	if cfg.NewID == nil {
		cfg.NewID = func() string { return "sess-1" }
	}
	m := metrics.New()
	a := lifecycle.New(cfg, lifecycle.WithMetrics(m), lifecycle.WithIdentity("i1", "p1"))
	srv := httptest.NewServer(New(a, m))
	t.Cleanup(srv.Close)
	return &rig{t: t, agent: a, srv: srv}
}

func (r *rig) do(method, path, body string) (int, string) {
	r.t.Helper()
	return r.doType(method, "application/json", path, body)
}

// doType sends body as contentType; "" sends no Content-Type.
func (r *rig) doType(method, contentType, path, body string) (int, string) {
	r.t.Helper()
	return httpcall.Do(r.t, nil, httpcall.New(r.t, method, r.srv.URL+path, contentType, body))
}

func (r *rig) expect(method, path, body string, code int, want string) {
	r.t.Helper()
	gotCode, got := r.do(method, path, body)
	if gotCode != code || got != want {
		r.t.Errorf("%s %s %s\n got %d %q\nwant %d %q", method, path, body, gotCode, got, code, want)
	}
}

// TestReferenceBodies checks the exact bytes of every answer of the reference contract.
func TestReferenceBodies(t *testing.T) {
	r := newRig(t, session.Config{QuitOnSessionEnded: true, ResumeTimeout: 30 * time.Second})
	r.expect("GET", "/v1/streaming/startup", "", 200, `{"statusMessage":"Status: Startup endpoint OK"}`)
	r.expect("GET", "/v1/streaming/ready", "", 503, `{"statusMessage":"Status: App not ready"}`)
	r.agent.Signal(session.AppReady)
	r.expect("GET", "/v1/streaming/ready", "", 503, `{"statusMessage":"Status: Rtx not ready"}`)
	r.agent.Signal(session.RtxReady)
	r.expect("GET", "/v1/streaming/ready", "", 200, `{"statusMessage":"Status: Ready for connection"}`)
	r.expect("POST", "/v1/streaming/creds", `{"stunIp":"1.2.3.4","stunPort":3478,"username":"u","password":"p"}`, 200, `{"success":true,"errorMessage":null}`)
	r.agent.Signal(session.ClientConnected)
	r.expect("GET", "/v1/streaming/ready", "", 200, `{"statusMessage":"Status: Streaming session active (keep alive)"}`)
	r.expect("POST", "/v1/streaming/endsession", `{"sessionId":"sess-1","gracefulShutdown":false}`, 200, `{"sessionStatus":"AWAITING_RESUME"}`)
	r.expect("GET", "/v1/streaming/ready", "", 200, `{"statusMessage":"Status: Awaiting session resume (keep alive)"}`)
	r.expect("POST", "/v1/streaming/endsession", `{"sessionId":"sess-1","gracefulShutdown":true}`, 200, `{"sessionStatus":"COMPLETE"}`)
	r.expect("GET", "/v1/streaming/ready", "", 503, `{"statusMessage":"Status: Streaming session ended (recycle instance)"}`)
	r.expect("GET", "/v1/streaming/startup", "", 200, `{"statusMessage":"Status: Startup endpoint OK"}`)
}

func TestReadyWaitingLines(t *testing.T) {
	r := newRig(t, session.Config{WaitForSessionReadyEvent: true})
	r.agent.Signal(session.AppReady)
	r.agent.Signal(session.RtxReady)
	r.expect("GET", "/v1/streaming/ready", "", 503, `{"statusMessage":"Status: Session ready event not received"}`)
	r.agent.Signal(session.SessionReady)
	r.agent.Signal(session.ClientConnected)
	r.expect("POST", "/v1/streaming/endsession", `{"sessionId":"sess-1","gracefulShutdown":true}`, 200, `{"sessionStatus":"COMPLETE"}`)
	r.agent.Signal(session.SessionReady)
	r.expect("GET", "/v1/streaming/ready", "", 503, `{"statusMessage":"Status: Waiting for previous client to disconnect"}`)
}

func TestBadInput(t *testing.T) {
	r := newRig(t, session.Config{QuitOnSessionEnded: true, ResumeTimeout: 30 * time.Second, SessionID: "s1"})
	big := `{"stunIp":"` + strings.Repeat("a", 70<<10) + `"}`
	r.expect("POST", "/v1/streaming/creds", big, 413, `{"success":false,"errorMessage":"body: larger than 65536 bytes"}`)
	r.expect("POST", "/v1/streaming/creds", `{"stunIp":`, 400, `{"success":false,"errorMessage":"body: malformed JSON: unexpected end"}`)
	r.expect("POST", "/v1/streaming/creds", `{"stunIp":"a","stunPort":3478,"username":"u","password":"p","turnDetails":{"username":"u","password":"p","uris":["turn:x"],"relayProtocol":"TCP","transportPolicy":"SOME","relayLocation":"CSP"}}`,
		400, `{"success":false,"errorMessage":"turnDetails.transportPolicy: must be one of ALL, RELAY, DIRECT"}`)
	r.expect("POST", "/v1/streaming/endsession", big, 413, `{"detail":"body: larger than 65536 bytes"}`)
	r.expect("POST", "/v1/streaming/endsession", `{}`, 400, `{"detail":"sessionId: field required"}`)
	r.expect("POST", "/v1/streaming/endsession", `{"sessionId":3}`, 400, `{"detail":"sessionId: must be a string"}`)
	r.expect("POST", "/v1/streaming/endsession", `{"sessionId":"s1","gracefulShutdown":"yes"}`, 400, `{"detail":"gracefulShutdown: must be true or false"}`)
	r.expect("POST", "/v1/streaming/endsession", `{"sessionId":"a b"}`, 400, `{"detail":"sessionId: session id has ' ' at offset 1; only A-Z a-z 0-9 . _ ~ - are allowed"}`)
	r.expect("POST", "/v1/streaming/endsession", `{"sessionId":"other","gracefulShutdown":true}`, 409, `{"detail":"sessionId: \"other\" is not the current session"}`)
	r.expect("GET", "/v1/streaming/ready", "", 503, `{"statusMessage":"Status: App not ready"}`)
	r.expect("GET", "/nope", "", 404, `{"detail":"Not Found"}`)
	r.expect("DELETE", "/v1/streaming/ready", "", 405, `{"detail":"Method Not Allowed"}`)
	if v := r.agent.View(); v.Phase != "idle" || v.SessionsEnded != 0 {
		t.Errorf("refused endsession changed the state: %+v", v)
	}
}

func TestSessionAndMetricsHoldNoSecret(t *testing.T) {
	r := newRig(t, session.Config{QuitOnSessionEnded: true})
	r.expect("POST", "/v1/streaming/creds", `{"stunIp":"1.2.3.4","stunPort":3478,"username":"stun-user-x","password":"stun-pass-x",
		"turnDetails":{"username":"turn-user-x","password":"turn-pass-x","uris":["turn:relay-x:3478"],"relayProtocol":"UDP","transportPolicy":"RELAY","relayLocation":"GFN"}}`,
		200, `{"success":true,"errorMessage":null}`)
	code, body := r.do("GET", "/v1/streaming/session", "")
	if code != 200 {
		t.Fatalf("session: %d %s", code, body)
	}
	var v map[string]any
	if err := json.Unmarshal([]byte(body), &v); err != nil {
		t.Fatal(err)
	}
	c := v["credentials"].(map[string]any)
	if c["hasTurn"] != true || c["transportPolicy"] != "RELAY" || c["relayLocation"] != "GFN" {
		t.Errorf("credentials summary: %v", c)
	}
	_, metricsBody := r.do("GET", "/metrics", "")
	if !strings.Contains(metricsBody, "livegate_agent_credentials_updates_total 1") {
		t.Errorf("metrics lack the creds counter")
	}
	for _, secret := range []string{"stun-user-x", "stun-pass-x", "turn-user-x", "turn-pass-x", "relay-x"} {
		if strings.Contains(body, secret) || strings.Contains(metricsBody, secret) {
			t.Errorf("%q leaked", secret)
		}
	}
}

// TestOpenAPIDescribesEveryRoute keeps the document and the router in step.
func TestOpenAPIDescribesEveryRoute(t *testing.T) {
	var doc struct {
		OpenAPI string                                `json:"openapi"`
		Paths   map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(openAPI, &doc); err != nil {
		t.Fatal(err)
	}
	e := New(lifecycle.New(session.Config{NewID: func() string { return "x" }}), metrics.New())
	n := 0
	for _, rt := range e.Routes() {
		if _, ok := doc.Paths[rt.Path][strings.ToLower(rt.Method)]; !ok {
			t.Errorf("%s %s is not in openapi.json", rt.Method, rt.Path)
		}
		n++
	}
	total := 0
	for _, ops := range doc.Paths {
		total += len(ops)
	}
	if total != n {
		t.Errorf("openapi.json has %d operations, the router %d", total, n)
	}
	r := newRig(t, session.Config{})
	code, body := r.do("GET", "/v1/openapi.json", "")
	if code != 200 || !strings.HasPrefix(body, "{") {
		t.Errorf("openapi.json: %d", code)
	}
}
