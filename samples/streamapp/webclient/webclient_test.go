package webclient

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestHandlerServesThePageOnly(t *testing.T) {
	for path, want := range map[string]int{"/": 200, "/index.html": 200, "/?edge=e&session=s": 200, "/other": 404, "/sign_in": 404} {
		rec := httptest.NewRecorder()
		Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		if rec.Code != want {
			t.Errorf("GET %s: %d, want %d", path, rec.Code, want)
		}
		if want == 200 && (!strings.Contains(rec.Body.String(), "x-nv-sessionid.") || rec.Header().Get("Content-Type") != "text/html; charset=utf-8") {
			t.Errorf("GET %s: not the page (%s)", path, rec.Header().Get("Content-Type"))
		}
	}
}

// TestPageFetchesNothing keeps the page self-contained: no script, style or image from elsewhere.
func TestPageFetchesNothing(t *testing.T) {
	for _, ref := range []string{"src=", "href=", "@import", "http://", "https://cdn"} {
		if strings.Contains(string(page), ref) {
			t.Errorf("the page refers to something outside itself: %q", ref)
		}
	}
}
