package restapi

import (
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/livegate/livegate/agent/internal/lifecycle"
	"github.com/livegate/livegate/agent/internal/metrics"
	"github.com/livegate/livegate/agent/internal/session"
)

const testToken = "s3cret-token-value"

func tokenServer(t *testing.T) string {
	t.Helper()
	m := metrics.New()
	a := lifecycle.New(session.Config{NewID: func() string { return "sess-1" }}, lifecycle.WithMetrics(m), lifecycle.WithIdentity("i1", "p1"))
	srv := httptest.NewServer(New(a, m, WithToken(testToken)))
	t.Cleanup(srv.Close)
	return srv.URL
}

func call(t *testing.T, method, url, auth, body string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func TestTokenRequired(t *testing.T) {
	url := tokenServer(t)
	guarded := []struct{ method, path, body string }{
		{"POST", "/v1/streaming/creds", `{"stunIp":"1.2.3.4","stunPort":3478,"username":"u","password":"p"}`},
		{"POST", "/v1/streaming/endsession", `{"sessionId":"sess-1"}`},
		{"GET", "/v1/streaming/session", ""},
		{"GET", "/v1/streaming/nosuch", ""},
	}
	bad := []string{"", "Bearer", "Bearer ", "Bearer wrong", "Basic " + testToken, "Bearer " + testToken + "x", testToken}
	for _, g := range guarded {
		for _, auth := range bad {
			resp, body := call(t, g.method, url+g.path, auth, g.body)
			if resp.StatusCode != http.StatusUnauthorized || body != `{"detail":"Not authenticated"}` {
				t.Errorf("%s %s auth %q: got %d %s", g.method, g.path, auth, resp.StatusCode, body)
			}
			if !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer") {
				t.Errorf("%s %s: WWW-Authenticate %q", g.method, g.path, resp.Header.Get("WWW-Authenticate"))
			}
			if strings.Contains(body, testToken) {
				t.Errorf("%s %s: token in the body", g.method, g.path)
			}
		}
	}
	resp, body := call(t, "POST", url+"/v1/streaming/creds", "Bearer "+testToken, guarded[0].body)
	if resp.StatusCode != 200 || body != `{"success":true,"errorMessage":null}` {
		t.Errorf("creds with the token: %d %s", resp.StatusCode, body)
	}
	resp, body = call(t, "GET", url+"/v1/streaming/session", "bearer "+testToken, "")
	if resp.StatusCode != 200 || strings.Contains(body, testToken) {
		t.Errorf("session with the token: %d %s", resp.StatusCode, body)
	}
	resp, body = call(t, "POST", url+"/v1/streaming/endsession", "Bearer "+testToken, `{"sessionId":"sess-1","gracefulShutdown":true}`)
	if resp.StatusCode != 200 {
		t.Errorf("endsession with the token: %d %s", resp.StatusCode, body)
	}
}

func TestTokenOpenPaths(t *testing.T) {
	url := tokenServer(t)
	for _, p := range []string{"/v1/streaming/startup", "/v1/streaming/ready", "/metrics", "/v1/openapi.json"} {
		resp, body := call(t, "GET", url+p, "", "")
		if resp.StatusCode == http.StatusUnauthorized {
			t.Errorf("%s needs a token; probes and scrapes carry none", p)
		}
		if strings.Contains(body, testToken) {
			t.Errorf("%s shows the token", p)
		}
	}
}

func TestReadToken(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tok, err := ReadToken(write("ok", "  "+testToken+"\n"))
	if err != nil || tok != testToken {
		t.Fatalf("ReadToken = %q, %v", tok, err)
	}
	for name, content := range map[string]string{"empty": "", "blank": " \n\t\n", "inner": "two words\n"} {
		p := write(name, content)
		_, err := ReadToken(p)
		if err == nil || !strings.Contains(err.Error(), p) {
			t.Errorf("%s: error %v does not name %s", name, err, p)
		}
	}
	missing := filepath.Join(dir, "missing")
	if _, err := ReadToken(missing); err == nil || !strings.Contains(err.Error(), missing) {
		t.Errorf("missing file: %v", err)
	}
}
