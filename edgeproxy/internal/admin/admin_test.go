package admin

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/livegate/livegate/edgeproxy/internal/placement"
	"github.com/livegate/livegate/pkg/httpcall"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

type fakeSource struct{ err error }

func (f fakeSource) Healthy() error { return f.err }
func (f fakeSource) Routes() any    { return []map[string]string{{"session_id": "s1"}} }

func TestEndpoints(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "livegate_test_total", Help: "test"})
	reg.MustRegister(c)
	c.Inc()
	tests := []struct {
		name, path string
		src        fakeSource
		code       int
		body       string
	}{
		{"healthy", "/healthz", fakeSource{}, http.StatusOK, `"status":"ok"`},
		{"unhealthy", "/healthz", fakeSource{err: errors.New("haproxy socket not answering")}, http.StatusServiceUnavailable, "haproxy socket not answering"},
		{"ready", "/readyz", fakeSource{}, http.StatusOK, `"status":"ok"`},
		{"not ready", "/readyz", fakeSource{err: errors.New("not yet synced")}, http.StatusServiceUnavailable, "not yet synced"},
		{"metrics", "/metrics", fakeSource{}, http.StatusOK, "livegate_test_total 1"},
		{"routes", "/v1/routes", fakeSource{}, http.StatusOK, `{"routes":[{"session_id":"s1"}]}`},
		{"unknown path", "/nope", fakeSource{}, http.StatusNotFound, `"error":"Not Found"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(New(tt.src, reg, zerolog.Nop(), nil).Handler())
			defer srv.Close()
			resp, err := http.Get(srv.URL + tt.path)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tt.code || !strings.Contains(string(b), tt.body) {
				t.Fatalf("GET %s = %d %q, want %d with %q", tt.path, resp.StatusCode, b, tt.code, tt.body)
			}
		})
	}
}

type fakeDrain struct{ d placement.Drain }

func (f *fakeDrain) Get() placement.Drain { return f.d }
func (f *fakeDrain) Drain(deadline time.Duration) (placement.Drain, error) {
	f.d = placement.Drain{Draining: true, Since: time.Now()}
	if deadline > 0 {
		f.d.Deadline = f.d.Since.Add(deadline)
	}
	return f.d, nil
}
func (f *fakeDrain) Cancel() (placement.Drain, error) { f.d = placement.Drain{}; return f.d, nil }

func TestDrain(t *testing.T) {
	d := &fakeDrain{}
	srv := httptest.NewServer(New(fakeSource{}, prometheus.NewRegistry(), zerolog.Nop(), d).Handler())
	defer srv.Close()
	do := func(method, path string) (int, string) {
		t.Helper()
		return httpcall.Do(t, nil, httpcall.New(t, method, srv.URL+path, "", ""))
	}
	steps := []struct {
		method, path string
		code         int
		body         string
	}{
		{http.MethodGet, "/readyz", http.StatusOK, `"status":"ok"`},
		{http.MethodPost, "/v1/drain?deadline=soon", http.StatusBadRequest, "want a duration"},
		{http.MethodPost, "/v1/drain?deadline=10m", http.StatusOK, `"draining":true`},
		{http.MethodGet, "/readyz", http.StatusServiceUnavailable, `"status":"draining"`},
		{http.MethodGet, "/healthz", http.StatusOK, `"status":"ok"`},
		{http.MethodGet, "/v1/drain", http.StatusOK, `"deadline"`},
		{http.MethodDelete, "/v1/drain", http.StatusOK, `"draining":false`},
		{http.MethodGet, "/readyz", http.StatusOK, `"status":"ok"`},
	}
	for _, s := range steps {
		if code, body := do(s.method, s.path); code != s.code || !strings.Contains(body, s.body) {
			t.Fatalf("%s %s = %d %q, want %d with %q", s.method, s.path, code, body, s.code, s.body)
		}
	}
	// A web page on the host must not drain the edge through its loopback address.
	for _, method := range []string{http.MethodPost, http.MethodDelete} {
		req, err := http.NewRequest(method, srv.URL+"/v1/drain", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Origin", "https://attacker.example")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden || d.Get().Draining {
			t.Fatalf("%s /v1/drain from a browser = %d, draining %v; want 403 and no change", method, resp.StatusCode, d.Get().Draining)
		}
	}
}

// TestRequestDrain: each drain request gets the edge's answer, and an edge not there is said so.
func TestRequestDrain(t *testing.T) {
	d := &fakeDrain{}
	srv := httptest.NewServer(New(fakeSource{}, prometheus.NewRegistry(), zerolog.Nop(), d).Handler())
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	steps := []struct {
		op       DrainOp
		deadline time.Duration
		draining bool
		timed    bool
	}{
		{DrainStart, 10 * time.Minute, true, true},
		{DrainShow, 0, true, true},
		{DrainStart, 0, true, false},
		{DrainCancel, 0, false, false},
	}
	for _, s := range steps {
		got, err := RequestDrain(t.Context(), addr, s.op, s.deadline)
		if err != nil || got.Draining != s.draining || got.Deadline.IsZero() == s.timed {
			t.Fatalf("drain %v %s = %+v, %v; want draining %t with a deadline %t", s.op, s.deadline, got, err, s.draining, s.timed)
		}
	}
	if _, err := RequestDrain(t.Context(), "127.0.0.1:1", DrainShow, 0); err == nil || !strings.Contains(err.Error(), "127.0.0.1:1") {
		t.Fatalf("drain of no edge: %v", err)
	}
}
