package restapi

import (
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"github.com/livegate/livegate/agent/internal/httpapi"
	"github.com/livegate/livegate/agent/internal/lifecycle"
	"github.com/livegate/livegate/agent/internal/metrics"
	"github.com/livegate/livegate/agent/internal/session"
	"github.com/livegate/livegate/pkg/logbuf"
	"github.com/rs/zerolog"
)

// lines is every line logged to buf, decoded.
func lines(t *testing.T, buf *logbuf.Buffer) []map[string]any {
	t.Helper()
	out, err := buf.Lines()
	if err != nil {
		t.Fatal(err)
	}
	return out
}

var generatedID = regexp.MustCompile(`^[0-9a-f]{16}$`)

func TestRequestIDs(t *testing.T) {
	var buf logbuf.Buffer
	log := zerolog.New(&buf).Level(zerolog.DebugLevel)
	m := metrics.New()
	a := lifecycle.New(session.Config{NewID: func() string { return "sess-1" }}, lifecycle.WithMetrics(m), lifecycle.WithIdentity("i1", "p1"))
	srv := httptest.NewServer(New(a, m, WithLogger(log)))
	t.Cleanup(srv.Close)

	tests := []struct {
		name, method, path, body, sent string
		keep                           bool
		level                          string
	}{
		{"caller's id kept", "GET", "/v1/streaming/ready", "", "4bf92f35-77b3-4da6-a3ce-929d0e0e4736", true, "debug"},
		{"no id: one is made", "GET", "/v1/streaming/startup", "", "", false, "debug"},
		{"id with a tab replaced", "GET", "/v1/streaming/ready", "", "abc\tlevel=error", false, "debug"},
		{"id with a quote replaced", "GET", "/v1/streaming/ready", "", `x","level":"error`, false, "debug"},
		{"id with a space replaced", "GET", "/v1/streaming/ready", "", "a b", false, "debug"},
		{"over-long id replaced", "GET", "/v1/streaming/ready", "", strings.Repeat("a", httpapi.MaxRequestIDLen+1), false, "debug"},
		{"refused creds carry the id", "POST", "/v1/streaming/creds", `{"stunIp":"x"}`, "req-creds-1", true, "info"},
		{"unknown path", "GET", "/v1/nosuch", "", "req-404", true, "debug"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := http.NewRequest(tt.method, srv.URL+tt.path, strings.NewReader(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			if tt.sent != "" {
				req.Header[httpapi.RequestIDHeader] = []string{tt.sent}
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			got := resp.Header.Get(httpapi.RequestIDHeader)
			if tt.keep && got != tt.sent {
				t.Fatalf("answer's %s = %q, want the caller's %q", httpapi.RequestIDHeader, got, tt.sent)
			}
			if !tt.keep && !generatedID.MatchString(got) {
				t.Fatalf("answer's %s = %q, want a generated id", httpapi.RequestIDHeader, got)
			}
			var access map[string]any
			var tagged int
			for _, l := range lines(t, &buf) {
				if l["request_id"] != got {
					continue
				}
				tagged++
				if l["message"] == "request" {
					access = l
				}
			}
			if access == nil {
				t.Fatalf("no request line with request_id %q", got)
			}
			if access["level"] != tt.level || access["method"] != tt.method || access["status"] != float64(resp.StatusCode) {
				t.Errorf("request line %v, want level %s, method %s, status %d", access, tt.level, tt.method, resp.StatusCode)
			}
			if tt.method == "POST" && tagged < 2 {
				t.Errorf("the handler's own log line lacks request_id %q", got)
			}
		})
	}
}
