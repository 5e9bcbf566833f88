package appapi

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/livegate/livegate/agent/internal/creds"
	"github.com/livegate/livegate/agent/internal/lifecycle"
	"github.com/livegate/livegate/agent/internal/metrics"
	"github.com/livegate/livegate/agent/internal/session"
	"github.com/livegate/livegate/pkg/appclient/appclienttest"
	"github.com/livegate/livegate/pkg/httpcall"
	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
	"github.com/rs/zerolog"
	"google.golang.org/protobuf/types/known/timestamppb"
)

func newServer(t *testing.T, cfg session.Config) (*lifecycle.Agent, *Server, string) {
	t.Helper()
	cfg.NewID = func() string { return "sess-1" }
	m := metrics.New()
	a := lifecycle.New(cfg, lifecycle.WithMetrics(m))
	s := New(a, m, zerolog.Nop())
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(func() {
		_ = s.Shutdown(context.Background())
		srv.Close()
	})
	return a, s, srv.URL
}

func post(t *testing.T, url string) (int, string) {
	t.Helper()
	return httpcall.Do(t, nil, httpcall.New(t, http.MethodPost, url, "application/json", ""))
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	return httpcall.Do(t, nil, httpcall.New(t, http.MethodGet, url, "", ""))
}

func TestEvents(t *testing.T) {
	a, _, url := newServer(t, session.Config{QuitOnSessionEnded: true})
	for _, tt := range []struct {
		name string
		code int
		want string
	}{
		{"app-ready", 200, `{"event":"app-ready","statusMessage":"Status: Rtx not ready"}`},
		{"rtx-ready", 200, `{"event":"rtx-ready","statusMessage":"Status: Ready for connection"}`},
		{"session-ready", 200, `{"event":"session-ready","statusMessage":"Status: Ready for connection"}`},
		{"client-connected", 200, `{"event":"client-connected","statusMessage":"Status: Streaming session active (keep alive)"}`},
		{"client-disconnected", 200, `{"event":"client-disconnected","statusMessage":"Status: Streaming session ended (recycle instance)"}`},
		{"reboot", 404, `{"detail":"event \"reboot\" is unknown; want app-ready, rtx-ready, session-ready, client-connected or client-disconnected"}`},
	} {
		code, body := post(t, url+"/v1/app/events/"+tt.name)
		if code != tt.code || body != tt.want {
			t.Errorf("%s: %d %s, want %d %s", tt.name, code, body, tt.code, tt.want)
		}
	}
	if v := a.View(); v.LastEndReason != session.ReasonClientLost {
		t.Errorf("end reason %q", v.LastEndReason)
	}
}

func TestCredsAndStream(t *testing.T) {
	a, _, url := newServer(t, session.Config{QuitOnSessionEnded: true, SessionID: "s1"})
	if code, body := get(t, url+"/v1/app/creds"); code != 404 || body != `{"detail":"no credentials yet"}` {
		t.Errorf("creds before any: %d %s", code, body)
	}
	body := `{"stunIp":"1.2.3.4","stunPort":3478,"username":"u","password":"p","turnDetails":{"username":"tu","password":"tp","uris":["turn:x"],"relayProtocol":"UDP","transportPolicy":"ALL","relayLocation":"CSP"}}`
	c, err := creds.Parse([]byte(body))
	if err != nil {
		t.Fatal(err)
	}
	a.SetCredentials(c)
	if code, got := get(t, url+"/v1/app/creds"); code != 200 || got != body {
		t.Errorf("creds: %d %s", code, got)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", url+"/v1/app/events", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Errorf("content type %q", ct)
	}
	events := appclienttest.Events(resp.Body)
	next := func() (string, string) {
		select {
		case e := <-events:
			return e.Event, string(e.Data)
		case <-ctx.Done():
			t.Fatal("no event")
		}
		return "", ""
	}
	if ev, data := next(); ev != lifecycle.KindStunCredentials || data != body {
		t.Errorf("replayed %s %s", ev, data)
	}
	a.Signal(session.AppReady)
	a.Signal(session.RtxReady)
	a.AssignEndpoint(&livegatev1.Endpoint{InstanceId: "i1", SessionId: "other", PublicHost: "stale"})
	a.AssignEndpoint(&livegatev1.Endpoint{InstanceId: "i1", SessionId: "s1", EdgeId: "e1", PublicHost: "edge.example", SignalingPort: 48322, PublicUdpPorts: []uint32{10500}, MediaBackends: []string{"10.0.0.1:30001"}})
	if ev, data := next(); ev != lifecycle.KindEndpointAssigned || !strings.Contains(data, `"publicHost":"edge.example"`) || !strings.Contains(data, `"publicUdpPorts":[10500]`) {
		t.Errorf("endpoint %s %s", ev, data)
	}
	if _, err := a.EndSession("s1", true); err != nil {
		t.Fatal(err)
	}
	if ev, data := next(); ev != lifecycle.KindSessionEnded || data != `{"sessionId":"s1","reason":"graceful","recycle":true}` {
		t.Errorf("ended %s %s", ev, data)
	}
}

func TestLoopbackHostOnly(t *testing.T) {
	_, _, url := newServer(t, session.Config{})
	req, _ := http.NewRequest("GET", url+"/v1/app/creds", nil)
	req.Host = "evil.example:8012"
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("foreign Host answered %d", resp.StatusCode)
	}
}

func TestProbe(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := make(chan error, 1)
	waited := make(chan error, 100)
	go func() {
		done <- Probe(ctx, addr, 20*time.Millisecond, func(_ time.Duration, err error) { waited <- err })
	}()
	// The first failed dial is reported at once, so the log says what the agent waits for.
	if err := <-waited; err == nil {
		t.Fatal("waiting reported without an error")
	}
	select {
	case err := <-done:
		t.Fatalf("probe returned %v before the port opened", err)
	default:
	}
	l, err = net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("port taken meanwhile: %v", err)
	}
	defer l.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestOptionsIsMethodNotAllowed: the app API serves no CORS preflight either.
func TestOptionsIsMethodNotAllowed(t *testing.T) {
	_, _, url := newServer(t, session.Config{})
	req, _ := http.NewRequest("OPTIONS", url+"/v1/app/events/app-ready", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed || string(b) != `{"detail":"Method Not Allowed"}` {
		t.Errorf("OPTIONS: %d %s", resp.StatusCode, b)
	}
}

type eventLog struct {
	mu     sync.Mutex
	events []*livegatev1.Event
}

func (l *eventLog) Publish(ev *livegatev1.Event) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events = append(l.events, ev)
}

func (l *eventLog) SetRoute(string) {}

// The edge's TURN credential reaches the app (GET /v1/app/endpoint and the event stream), and
// neither the session view nor the NATS event.
func TestEndpointTURN(t *testing.T) {
	log := &eventLog{}
	a := lifecycle.New(session.Config{SessionID: "s1", NewID: func() string { return "sess-1" }}, lifecycle.WithPublisher(log))
	s := New(a, metrics.New(), zerolog.Nop())
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(func() {
		_ = s.Shutdown(context.Background())
		srv.Close()
	})
	if code, body := get(t, srv.URL+"/v1/app/endpoint"); code != 404 || body != `{"detail":"no endpoint assigned yet"}` {
		t.Errorf("endpoint before any: %d %s", code, body)
	}
	exp := time.Unix(1700003600, 0).UTC()
	a.AssignEndpoint(&livegatev1.Endpoint{InstanceId: "i1", SessionId: "s1", EdgeId: "e1", PublicHost: "edge.example",
		Turn: &livegatev1.TurnRelay{Uris: []string{"turn:edge.example:3478?transport=udp"}, Username: "1700003600:s1", Credential: "c3VwZXJzZWNyZXQ=", ExpiresAt: timestamppb.New(exp)}})
	code, body := get(t, srv.URL+"/v1/app/endpoint")
	if want := `"turn":{"uris":["turn:edge.example:3478?transport=udp"],"username":"1700003600:s1","credential":"c3VwZXJzZWNyZXQ=","expiresAt":"2023-11-14T23:13:20Z"}`; code != 200 || !strings.Contains(body, want) {
		t.Errorf("endpoint: %d %s, want %s", code, body, want)
	}
	if v := a.View(); v.Endpoint == nil || v.Endpoint.Turn == nil || v.Endpoint.Turn.Credential != "" || v.Endpoint.Turn.Username != "1700003600:s1" {
		t.Errorf("session view endpoint %+v", v.Endpoint)
	}
	log.mu.Lock()
	defer log.mu.Unlock()
	var seen bool
	for _, ev := range log.events {
		if ep := ev.GetEndpointAssigned(); ep != nil {
			seen = true
			if ep.GetTurn().GetCredential() != "" || ep.GetTurn().GetUsername() != "1700003600:s1" {
				t.Errorf("event carries a TURN credential of %d bytes, username %q", len(ep.GetTurn().GetCredential()), ep.GetTurn().GetUsername())
			}
		}
	}
	if !seen {
		t.Error("no endpoint-assigned event")
	}
}
