// Package webclient is livegate's web client: one static page that takes an edge host and a
// session id (query parameters edge, session, optionally port and peer_id), opens the session's
// signaling websocket through the edge, plays the app's video, sends input over the data channel
// and shows figures from getStats(). It needs nothing beyond the page: no build step, no CDN.
package webclient

import (
	_ "embed"
	"net/http"
)

//go:embed index.html
var page []byte

// Handler serves the page on / and /index.html.
func Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" && r.URL.Path != "/index.html" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-cache")
		_, _ = w.Write(page)
	})
}
