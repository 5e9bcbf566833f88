package sessionid

import (
	"net/http"
	"strings"
)

// SubprotocolPrefix starts the websocket subprotocol token that carries a session id,
// "x-nv-sessionid.<id>", as browsers send it.
const SubprotocolPrefix = "x-nv-sessionid."

// FromRequest finds a websocket handshake's session id where the edge looks for it: a subprotocol
// token, then the X-Session-Id header, then the sessionId query parameter. token is the
// subprotocol an app must echo (browsers drop a connection whose subprotocol is not echoed), empty
// when the id came another way. The id is not validated.
func FromRequest(r *http.Request) (id, token string) {
	for _, h := range r.Header.Values("Sec-WebSocket-Protocol") {
		for _, p := range strings.Split(h, ",") {
			p = strings.TrimSpace(p)
			if rest, ok := strings.CutPrefix(p, SubprotocolPrefix); ok {
				return rest, p
			}
		}
	}
	if id := r.Header.Get("X-Session-Id"); id != "" {
		return id, ""
	}
	return r.URL.Query().Get("sessionId"), ""
}
