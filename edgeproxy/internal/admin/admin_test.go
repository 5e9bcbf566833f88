package admin

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

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
		{"metrics", "/metrics", fakeSource{}, http.StatusOK, "livegate_test_total 1"},
		{"routes", "/v1/routes", fakeSource{}, http.StatusOK, `{"routes":[{"session_id":"s1"}]}`},
		{"unknown path", "/nope", fakeSource{}, http.StatusNotFound, `"error":"Not Found"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(New(tt.src, reg, zerolog.Nop()).Handler())
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
