package wire

import (
	"strings"
	"testing"

	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
	"google.golang.org/protobuf/proto"
)

// FuzzWireRoundTrip decodes any bytes as each message livegate reads from NATS (a route, an
// endpoint, an edge heartbeat, an event). What decodes must encode and decode back to the same
// message, so a value relayed or rewritten by the edge or the agent never changes meaning; what
// does not decode must say which message it was.
func FuzzWireRoundTrip(f *testing.F) {
	f.Add([]byte(`{"sessionId":"a","instanceId":"i","signalingBackend":"10.0.0.1:30000","mediaBackends":["198.18.0.2:30000"],"edgeId":"e","pool":"p","leaseTtl":"15s","renewedAt":"2026-01-01T00:00:00Z"}`))
	f.Add([]byte(`{"instanceId":"i","sessionId":"s","edgeId":"e","publicHost":"edge.example","signalingPort":48322,"publicUdpPorts":[10500,70000],"mediaBackends":["10.0.0.1:30000"]}`))
	f.Add([]byte(`{"edgeId":"e","pool":"p","publicHost":"h","capacity":9500,"freePorts":9499,"routes":1,"heartbeat":"2026-01-01T00:00:00.5Z","version":"v"}`))
	f.Add([]byte(`{"type":"EVENT_TYPE_AWAITING_RESUME","awaitingResume":{"resumeTimeout":"30s","deadline":"2026-01-01T00:00:30Z"}}`))
	f.Add([]byte(`{"signalingPort":-1,"publicUdpPorts":[4294967296]}`))
	f.Add([]byte(`{"leaseTtl":"315576000001s"}`))
	f.Add([]byte(`{"sessionId":"\u0000\ud800"}`))
	f.Add([]byte(`{"sessionId":"a","session_id":"b"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, m := range []proto.Message{&livegatev1.Route{}, &livegatev1.Endpoint{}, &livegatev1.EdgeStatus{}, &livegatev1.Event{}} {
			name := string(m.ProtoReflect().Descriptor().Name())
			if err := Unmarshal(b, m); err != nil {
				if !strings.HasPrefix(err.Error(), "decode "+name) {
					t.Fatalf("refusal %q does not name %s", err, name)
				}
				continue
			}
			out, err := Marshal(m)
			if err != nil {
				t.Fatalf("%s decoded from %q does not encode: %v", name, b, err)
			}
			back := m.ProtoReflect().New().Interface()
			if err := Unmarshal(out, back); err != nil {
				t.Fatalf("%s: own encoding %q does not decode: %v", name, out, err)
			}
			if !proto.Equal(m, back) {
				t.Fatalf("%s changed in a round trip: %v -> %v", name, m, back)
			}
		}
	})
}
