package httpcall_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/livegate/livegate/pkg/httpcall"
)

func TestDoReturnsStatusAndBody(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.WriteHeader(http.StatusTeapot)
		_, _ = io.WriteString(w, r.Method+" "+r.Header.Get("Content-Type")+" "+string(b))
	}))
	defer srv.Close()
	for _, tt := range []struct {
		method, contentType, body, want string
	}{
		{http.MethodGet, "", "", "GET  "},
		{http.MethodPost, "application/json", `{"a":1}`, `POST application/json {"a":1}`},
		{http.MethodPost, "application/json", "", "POST application/json "},
	} {
		code, got := httpcall.Do(t, nil, httpcall.New(t, tt.method, srv.URL, tt.contentType, tt.body))
		if code != http.StatusTeapot || got != tt.want {
			t.Errorf("%s %q %q: got %d %q, want %d %q", tt.method, tt.contentType, tt.body, code, got, http.StatusTeapot, tt.want)
		}
	}
}
