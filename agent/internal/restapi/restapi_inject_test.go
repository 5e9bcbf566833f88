package restapi

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/livegate/livegate/agent/internal/httpapi"
	"github.com/livegate/livegate/agent/internal/session"
)

// TestInjectionEndSessionRefused posts endsession with hostile session ids. Each is a 400 whose
// detail starts with "sessionId:", and the current session goes on as if nothing was asked.
func TestInjectionEndSessionRefused(t *testing.T) {
	r := newRig(t, session.Config{QuitOnSessionEnded: true, ResumeTimeout: 30 * time.Second})
	r.agent.Signal(session.AppReady)
	r.agent.Signal(session.RtxReady)
	for _, id := range []string{
		"sess-1\n", "sess-1\r", "sess-1 x", "sess-1;show info", "sess-1#", "$(reboot)", "`id`", "a|b", "a&b", "-j ACCEPT",
		"x --to-destination 1.2.3.4:1", "sess-1\x00", "sess\u0000-1", "s\u0435ss-1", "\uff53ess-1", "sess\u00a0-1",
		strings.Repeat("a", 129), ".", "..", "",
	} {
		body, _ := json.Marshal(map[string]any{"sessionId": id, "gracefulShutdown": true})
		code, got := r.do("POST", "/v1/streaming/endsession", string(body))
		var ans httpapi.Detail
		if code != 400 || json.Unmarshal([]byte(got), &ans) != nil || !strings.HasPrefix(ans.Detail, "sessionId: ") {
			t.Errorf("endsession %q: %d %s", id, code, got)
		}
	}
	r.expect("GET", "/v1/streaming/ready", "", 200, `{"statusMessage":"Status: Ready for connection"}`)
}

// TestInjectionCredsRefused posts credentials whose STUN address or ports are hostile or out of
// range; each is refused naming the field.
func TestInjectionCredsRefused(t *testing.T) {
	r := newRig(t, session.Config{})
	for _, tt := range []struct {
		field string
		value any
	}{
		{"stunIp", "1.2.3.4\n"}, {"stunIp", "1.2.3.4 -j ACCEPT"}, {"stunIp", "stun;reboot"}, {"stunIp", "$(reboot)"},
		{"stunIp", "`id`"}, {"stunIp", "a|b"}, {"stunIp", "a&b"}, {"stunIp", "st\u0443n.example"}, {"stunIp", "#"},
		{"stunIp", strings.Repeat("a", 64)}, {"stunIp", "1.2.3.4\x00"},
		{"stunPort", 0}, {"stunPort", 65536}, {"stunPort", -1}, {"stunPort", "3478"},
		{"privateSharedPort", 0}, {"privateSharedPort", 65536},
	} {
		body := map[string]any{"stunIp": "1.2.3.4", "stunPort": 3478, "username": "u", "password": "p"}
		body[tt.field] = tt.value
		b, _ := json.Marshal(body)
		code, got := r.do("POST", "/v1/streaming/creds", string(b))
		var ans struct {
			Success      bool   `json:"success"`
			ErrorMessage string `json:"errorMessage"`
		}
		if code != 400 || json.Unmarshal([]byte(got), &ans) != nil || ans.Success || !strings.HasPrefix(ans.ErrorMessage, tt.field+": ") {
			t.Errorf("creds %s=%q: %d %s", tt.field, tt.value, code, got)
		}
	}
}
