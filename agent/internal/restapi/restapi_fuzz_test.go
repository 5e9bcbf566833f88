package restapi

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/livegate/livegate/agent/internal/lifecycle"
	"github.com/livegate/livegate/agent/internal/metrics"
	"github.com/livegate/livegate/agent/internal/session"
)

var (
	credsRefusal = regexp.MustCompile(`^(body|stunIp|stunPort|username|password|privateSharedPort|turnDetails(\.[A-Za-z]+)?(\[\d+\])?): \S`)
	endRefusal   = regexp.MustCompile(`^(body|sessionId|gracefulShutdown): \S`)
)

// FuzzRESTBody posts any body to /v1/streaming/creds and /v1/streaming/endsession of a fresh
// agent whose session id is "sess-1". Neither answers 500; every answer is the contract's JSON;
// a refusal names the field in errorMessage or detail, and an accepted endsession answers one
// of the two statuses. The app must be ready for endsession to reach the machine, so half of
// the runs make it ready first.
func FuzzRESTBody(f *testing.F) {
	for _, s := range []string{
		`{"sessionId":"sess-1","gracefulShutdown":true}`, `{"sessionId":"sess-1","gracefulShutdown":false}`,
		`{"sessionId":"sess-1\n"}`, `{"sessionId":"sess-1;show info"}`, `{"sessionId":"$(reboot)"}`, `{"sessionId":".."}`,
		`{"sessionId":"other"}`, `{"sessionId":null}`, `{"sessionId":["a"]}`, `{"sessionId":"a","gracefulShutdown":1}`,
		`{"stunIp":"1.2.3.4","stunPort":3478,"username":"u","password":"p"}`,
		`{"stunIp":"1.2.3.4","stunPort":3478,"username":"u","password":"p","turnDetails":{"username":"u","password":"p","uris":["turn:x"],"relayProtocol":"TCP","transportPolicy":"ALL","relayLocation":"GFN"}}`,
		`{"stunIp":"1.2.3.4 -j ACCEPT","stunPort":3478,"username":"u","password":"p"}`, `{"stunIp":`, `[`, `"x"`, ``, `{}{}`,
	} {
		f.Add([]byte(s), true, true)
		f.Add([]byte(s), false, false)
	}
	m := metrics.New()
	f.Fuzz(func(t *testing.T, body []byte, creds, ready bool) {
		a := lifecycle.New(session.Config{QuitOnSessionEnded: true, ResumeTimeout: 30 * time.Second, NewID: func() string { return "sess-1" }},
			lifecycle.WithMetrics(m))
		defer a.Stop()
		if ready {
			a.Signal(session.AppReady)
			a.Signal(session.RtxReady)
		}
		path := "/v1/streaming/endsession"
		if creds {
			path = "/v1/streaming/creds"
		}
		req := httptest.NewRequest(http.MethodPost, path, bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		rec := httptest.NewRecorder()
		New(a, m).ServeHTTP(rec, req)
		out := rec.Body.Bytes()
		if !json.Valid(out) || bytes.ContainsAny(out, "\r\n") {
			t.Fatalf("%s %q: answer %q is not one line of JSON", path, body, out)
		}
		if creds {
			var ans struct {
				Success      *bool   `json:"success"`
				ErrorMessage *string `json:"errorMessage"`
			}
			if err := json.Unmarshal(out, &ans); err != nil || ans.Success == nil {
				t.Fatalf("creds %q: answer %q", body, out)
			}
			switch {
			case rec.Code == http.StatusOK && *ans.Success && ans.ErrorMessage == nil:
			case rec.Code == http.StatusBadRequest && !*ans.Success && ans.ErrorMessage != nil && credsRefusal.MatchString(*ans.ErrorMessage):
			default:
				t.Fatalf("creds %q: %d %q", body, rec.Code, out)
			}
			return
		}
		var ans struct {
			Detail        *string `json:"detail"`
			SessionStatus *string `json:"sessionStatus"`
		}
		if err := json.Unmarshal(out, &ans); err != nil {
			t.Fatalf("endsession %q: answer %q", body, out)
		}
		switch rec.Code {
		case http.StatusOK:
			if ans.SessionStatus == nil || (*ans.SessionStatus != "COMPLETE" && *ans.SessionStatus != "AWAITING_RESUME") {
				t.Fatalf("endsession %q: 200 %q", body, out)
			}
		case http.StatusBadRequest, http.StatusConflict:
			if ans.Detail == nil || !endRefusal.MatchString(*ans.Detail) {
				t.Fatalf("endsession %q: %d %q does not name the field", body, rec.Code, out)
			}
			if rec.Code == http.StatusConflict && !strings.HasPrefix(*ans.Detail, "sessionId: ") {
				t.Fatalf("endsession %q: 409 %q", body, out)
			}
		default:
			t.Fatalf("endsession %q: %d %q", body, rec.Code, out)
		}
	})
}
