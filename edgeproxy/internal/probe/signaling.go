// Package probe checks a live session through an edge the way a browser uses it: the signaling
// websocket with the session id in its subprotocol, and the media path with a DTLS-SRTP handshake
// and an RTP echo through each public UDP port. It backs `livegate-edgeproxy probe`.
package probe

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/coder/websocket"
	"github.com/livegate/livegate/pkg/sessionid"
)

// SubprotocolPrefix is the prefix of the websocket subprotocol that carries the session id.
const SubprotocolPrefix = "x-nv-sessionid."

// ProbeHeader marks the probe's websocket upgrade, so an app following the app contract does not
// take the probe for the session's client: it does not report client-connected and
// client-disconnected for it, and the probe's close does not start the session's resume window.
const ProbeHeader = "X-Livegate-Probe"

// ErrSubprotocolNotEchoed means the 101 answer did not select the session subprotocol, which
// browsers treat as a protocol error (close code 1002).
var ErrSubprotocolNotEchoed = errors.New("101 answer did not echo the session subprotocol (browsers would close with 1002)")

// SignalingURL completes a signaling address the way the reference client does: it adds
// peer_id and version=2 to the query when they are missing.
func SignalingURL(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("signaling url %q: %w", raw, err)
	}
	switch u.Scheme {
	case "wss", "ws":
	default:
		return nil, fmt.Errorf("signaling url %q: scheme %q, want wss or ws", raw, u.Scheme)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("signaling url %q: no host", raw)
	}
	q := u.Query()
	if q.Get("peer_id") == "" {
		q.Set("peer_id", "livegate-probe-"+randomHex(4))
	}
	if q.Get("version") == "" {
		q.Set("version", "2")
	}
	u.RawQuery = q.Encode()
	return u, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Signaling opens the signaling websocket at rawURL (see SignalingURL) offering the subprotocol
// x-nv-sessionid.<sessionID>, checks that the answer is 101 and echoes that subprotocol, then
// closes it normally. It returns how long the opening handshake took. insecure skips TLS
// certificate verification (an edge with a self-signed certificate).
func Signaling(ctx context.Context, rawURL, sessionID string, insecure bool) (time.Duration, error) {
	if err := sessionid.Validate(sessionID); err != nil {
		return 0, fmt.Errorf("signaling: %w", err)
	}
	u, err := SignalingURL(rawURL)
	if err != nil {
		return 0, err
	}
	want := SubprotocolPrefix + sessionID
	client := &http.Client{Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: insecure}, //nolint:gosec // opt-in via --insecure
		Proxy:           http.ProxyFromEnvironment,
	}}
	defer client.CloseIdleConnections()
	start := time.Now()
	conn, resp, err := websocket.Dial(ctx, u.String(), &websocket.DialOptions{
		HTTPClient:   client,
		Subprotocols: []string{want},
		HTTPHeader:   http.Header{ProbeHeader: {"1"}},
	})
	elapsed := time.Since(start)
	if err != nil {
		return elapsed, fmt.Errorf("signaling %s: %w", u.Redacted(), explainDialError(err, resp))
	}
	defer func() { _ = conn.CloseNow() }()
	if got := conn.Subprotocol(); got != want {
		return elapsed, fmt.Errorf("signaling %s: %w (offered %q, got %q)", u.Redacted(), ErrSubprotocolNotEchoed, want, got)
	}
	_ = conn.Close(websocket.StatusNormalClosure, "probe done")
	return elapsed, nil
}

// explainDialError adds what an answer other than 101 means for a session behind an edge.
func explainDialError(err error, resp *http.Response) error {
	if resp == nil || resp.StatusCode == http.StatusSwitchingProtocols {
		return err
	}
	var body string
	if resp.Body != nil {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
		body = strings.TrimSpace(string(b))
	}
	hint := ""
	switch resp.StatusCode {
	case http.StatusNotFound:
		hint = ": no route for this session id (not programmed on this edge, or ended)"
	case http.StatusTooManyRequests:
		hint = ": too many unknown session ids from this address (rate-limited)"
	case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		hint = ": the edge has a route but the app's signaling port did not answer"
	}
	msg := fmt.Sprintf("answer %s, want 101 Switching Protocols%s", resp.Status, hint)
	if body != "" {
		msg += fmt.Sprintf(" (body: %q)", body)
	}
	return errors.New(msg)
}
