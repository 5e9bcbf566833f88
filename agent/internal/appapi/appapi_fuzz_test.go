package appapi

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/livegate/livegate/agent/internal/lifecycle"
	"github.com/livegate/livegate/agent/internal/metrics"
	"github.com/livegate/livegate/agent/internal/session"
	"github.com/livegate/livegate/pkg/wire"
	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
	"github.com/rs/zerolog"
)

// FuzzAppAPIRequest sends an app event of any name with any Host header. Only loopback hosts
// get past the DNS-rebinding guard, and its refusal says "host"; an unknown event is a 404 that
// says "event"; nothing answers 500.
func FuzzAppAPIRequest(f *testing.F) {
	for _, h := range []string{"127.0.0.1:8012", "localhost", "[::1]:8012", "127.1.2.3", "evil.example:8012", "127.0.0.1.evil.example",
		"localhost.", "0.0.0.0", "[::ffff:127.0.0.1]:1", "", "127.0.0.1\n", "[fe80::1%lo]:1"} {
		f.Add(h, "app-ready")
	}
	for _, n := range []string{"rtx-ready", "client-connected", "nope", "app-ready\n", "app-ready;x", "..", "%00", "app-ready/x"} {
		f.Add("127.0.0.1", n)
	}
	m := metrics.New()
	f.Fuzz(func(t *testing.T, host, name string) {
		a := lifecycle.New(session.Config{NewID: func() string { return "sess-1" }}, lifecycle.WithMetrics(m))
		defer a.Stop()
		s := New(a, m, zerolog.Nop())
		req := httptest.NewRequest(http.MethodPost, "/v1/app/events/x", nil)
		req.URL.Path = "/v1/app/events/" + name
		req.URL.RawPath = "/v1/app/events/" + url.PathEscape(name)
		req.Host = host
		rec := httptest.NewRecorder()
		s.Handler().ServeHTTP(rec, req)
		var ans struct{ Detail, Event string }
		if err := json.Unmarshal(rec.Body.Bytes(), &ans); err != nil {
			t.Fatalf("host %q event %q: answer %q", host, name, rec.Body.Bytes())
		}
		if rec.Code == http.StatusForbidden {
			if !strings.HasPrefix(ans.Detail, "host: ") {
				t.Fatalf("host %q: 403 %q does not name the host", host, ans.Detail)
			}
			return
		}
		h := host
		if hh, _, err := net.SplitHostPort(host); err == nil {
			h = hh
		}
		if ip, err := netip.ParseAddr(h); h != "localhost" && (err != nil || !ip.IsLoopback()) {
			t.Fatalf("host %q got past the loopback guard: %d", host, rec.Code)
		}
		switch rec.Code {
		case http.StatusOK:
			if _, ok := Events[name]; !ok || ans.Event != name {
				t.Fatalf("event %q accepted: %q", name, rec.Body.Bytes())
			}
		case http.StatusNotFound:
			if !strings.HasPrefix(ans.Detail, "event ") && ans.Detail != "Not Found" {
				t.Fatalf("event %q: 404 %q", name, ans.Detail)
			}
		case http.StatusMethodNotAllowed:
		default:
			t.Fatalf("host %q event %q: %d %q", host, name, rec.Code, rec.Body.Bytes())
		}
	})
}

// sseRecorder is a streaming ResponseWriter that ends the request once a data frame is out.
type sseRecorder struct {
	mu     sync.Mutex
	header http.Header
	body   bytes.Buffer
	cancel context.CancelFunc
}

func (r *sseRecorder) Header() http.Header { return r.header }
func (r *sseRecorder) WriteHeader(int)     {}
func (r *sseRecorder) Flush()              {}
func (r *sseRecorder) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.body.Write(p)
	if bytes.Contains(r.body.Bytes(), []byte("\ndata: ")) && bytes.HasSuffix(r.body.Bytes(), []byte("\n\n")) {
		r.cancel()
	}
	return len(p), nil
}

// FuzzEndpointEvent decodes any livegate_endpoints value as the agent does and passes it to the
// app's event stream. Whatever the edge (or whoever can write that bucket) put in it, the app
// gets exactly one server-sent event: an id, an endpoint-assigned event line and one data line
// of JSON, so no value can forge another event or field.
func FuzzEndpointEvent(f *testing.F) {
	f.Add([]byte(`{"instanceId":"i","sessionId":"sess-1","edgeId":"e","publicHost":"edge.example","signalingPort":48322,"publicUdpPorts":[10500],"mediaBackends":["10.0.0.1:30000"],"assignedAt":"2026-01-01T00:00:00Z"}`))
	f.Add([]byte(`{"publicHost":"h\n\nevent: session-ended\ndata: {}","edgeId":"e\r\nid: 9"}`))
	f.Add([]byte(`{"publicHost":"\u2028\u2029\u0085","mediaBackends":["\u0000"]}`))
	f.Add([]byte(`{"publicHost":"<script>","assignedAt":"0001-01-01T00:00:00Z"}`))
	f.Add([]byte(`{}`))
	m := metrics.New()
	f.Fuzz(func(t *testing.T, value []byte) {
		ep := &livegatev1.Endpoint{}
		if err := wire.Unmarshal(value, ep); err != nil {
			return
		}
		ep.SessionId = "sess-1"
		a := lifecycle.New(session.Config{NewID: func() string { return "sess-1" }}, lifecycle.WithMetrics(m))
		defer a.Stop()
		// The session gets its id once the app is ready; endpoints for another id are ignored.
		a.Signal(session.AppReady)
		a.Signal(session.RtxReady)
		a.AssignEndpoint(ep)
		s := New(a, m, zerolog.Nop())
		// The deadline only bounds a broken stream; a working one ends at its first event.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		rec := &sseRecorder{header: http.Header{}, cancel: cancel}
		req := httptest.NewRequest(http.MethodGet, "/v1/app/events", nil).WithContext(ctx)
		req.Host = "127.0.0.1"
		s.Handler().ServeHTTP(rec, req)
		frames := strings.Split(strings.TrimSuffix(rec.body.String(), "\n\n"), "\n\n")
		if len(frames) != 2 || frames[0] != ": livegate-agent event stream" {
			t.Fatalf("stream %q: want the comment and one event", rec.body.String())
		}
		lines := strings.Split(frames[1], "\n")
		if len(lines) != 3 || lines[0] != "id: 1" || lines[1] != "event: "+lifecycle.KindEndpointAssigned || !strings.HasPrefix(lines[2], "data: ") {
			t.Fatalf("event %q: want id, event and data lines", frames[1])
		}
		data := strings.TrimPrefix(lines[2], "data: ")
		if strings.ContainsRune(data, '\r') || !json.Valid([]byte(data)) {
			t.Fatalf("data %q is not one line of JSON", data)
		}
		var got struct {
			PublicHost string `json:"publicHost"`
		}
		if err := json.Unmarshal([]byte(data), &got); err != nil || got.PublicHost != strings.ToValidUTF8(ep.PublicHost, "\uFFFD") {
			t.Fatalf("data %q: public host %q, want %q", data, got.PublicHost, ep.PublicHost)
		}
	})
}
