package sessionid

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestFromRequest(t *testing.T) {
	tests := []struct {
		name      string
		protocols []string
		header    string
		query     string
		id, token string
	}{
		{"subprotocol among others", []string{"other, x-nv-sessionid.s1", "more"}, "h", "?sessionId=q", "s1", "x-nv-sessionid.s1"},
		{"header", []string{"other"}, "h1", "?sessionId=q", "h1", ""},
		{"query", nil, "", "?sessionId=q1", "q1", ""},
		{"none", nil, "", "", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, "/sign_in"+tt.query, nil)
			for _, p := range tt.protocols {
				r.Header.Add("Sec-WebSocket-Protocol", p)
			}
			if tt.header != "" {
				r.Header.Set("X-Session-Id", tt.header)
			}
			if id, token := FromRequest(r); id != tt.id || token != tt.token {
				t.Errorf("FromRequest = %q, %q; want %q, %q", id, token, tt.id, tt.token)
			}
		})
	}
}
