package probe_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/livegate/livegate/edgeproxy/internal/probe"
	"github.com/livegate/livegate/edgeproxy/internal/probe/probetest"
)

func TestSignalingChecksSubprotocolAndQuery(t *testing.T) {
	s, url := probetest.StartSignaling(t, true)
	took, err := probe.Signaling(t.Context(), url, "sess-1", true)
	if err != nil {
		t.Fatalf("Signaling: %v", err)
	}
	if took <= 0 {
		t.Errorf("handshake took %s", took)
	}
	seen := s.Seen()
	if len(seen.Offered) != 1 || seen.Offered[0] != "x-nv-sessionid.sess-1" {
		t.Errorf("offered subprotocols %q, want x-nv-sessionid.sess-1", seen.Offered)
	}
	if q := seen.Queries[0]; !strings.Contains(q, "peer_id=livegate-probe-") || !strings.Contains(q, "version=2") {
		t.Errorf("query %q lacks peer_id or version=2", q)
	}
	// The app must be able to tell the probe from the session's client.
	if seen.Marked[0] != "1" {
		t.Errorf("%s = %q, want 1", probe.ProbeHeader, seen.Marked[0])
	}
}

func TestSignalingKeepsGivenQuery(t *testing.T) {
	u, err := probe.SignalingURL("wss://edge.example:48322/sign_in?peer_id=me&version=3")
	if err != nil {
		t.Fatal(err)
	}
	if got := u.Query(); got.Get("peer_id") != "me" || got.Get("version") != "3" {
		t.Errorf("query = %v, want the given peer_id and version", got)
	}
	for _, bad := range []string{"https://edge/sign_in", "wss:///sign_in", "::"} {
		if _, err := probe.SignalingURL(bad); err == nil {
			t.Errorf("probe.SignalingURL(%q) accepted it", bad)
		}
	}
}

func TestSignalingFailures(t *testing.T) {
	_, echoURL := probetest.StartSignaling(t, true)
	_, silentURL := probetest.StartSignaling(t, false)
	tests := []struct {
		name     string
		url, id  string
		insecure bool
		is       error
		contains string
	}{
		{"subprotocol not echoed", silentURL, "sess-1", true, probe.ErrSubprotocolNotEchoed, "x-nv-sessionid.sess-1"},
		{"no route", strings.Replace(echoURL, "/sign_in", "/nowhere", 1), "sess-1", true, nil, "404"},
		{"certificate not trusted", echoURL, "sess-1", false, nil, "certificate"},
		{"bad session id", echoURL, "bad id", true, nil, "session id"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := probe.Signaling(t.Context(), tt.url, tt.id, tt.insecure)
			if err == nil {
				t.Fatal("Signaling succeeded")
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("err = %v, want %v", err, tt.is)
			}
			t.Logf("error: %v", err)
			if !strings.Contains(err.Error(), tt.contains) {
				t.Errorf("err = %v, want it to mention %q", err, tt.contains)
			}
		})
	}
}

func TestMediaAddr(t *testing.T) {
	got, err := probe.MediaAddr("udp://198.18.0.1:10500")
	if err != nil || got != "198.18.0.1:10500" {
		t.Errorf("MediaAddr = %q, %v", got, err)
	}
	got, err = probe.MediaAddr("udp://[2001:db8::1]:10500")
	if err != nil || got != "[2001:db8::1]:10500" {
		t.Errorf("MediaAddr v6 = %q, %v", got, err)
	}
}
