package events_test

import (
	"strings"
	"testing"

	"github.com/livegate/livegate/pkg/events"
	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
)

// FuzzEventMessage decodes any event body, as a consumer of LIVEGATE_EVENTS does, and publishes
// what it decoded again, as a relay would. A decoded event always has a type; an event Message
// accepts always gets a subject of exactly livegate.v1.events.<pool>.<instance>.<type>, with no
// wildcard, whitespace or empty token, and headers that carry the event's own id and source
// verbatim (nats.go turns CR and LF in header values into spaces on the wire) and are otherwise
// single-line. A refusal says why.
func FuzzEventMessage(f *testing.F) {
	f.Add([]byte(`{"id":"e1","type":"EVENT_TYPE_SESSION_ENDED","pool":"p","instanceId":"i","sessionEnded":{"reason":"graceful"}}`))
	f.Add([]byte(`{"id":"e1","type":"EVENT_TYPE_ROUTE_REFUSED","pool":"p","instanceId":"i","source":"edge/a","routeRefused":{"edgeId":"a","reason":"session_id: bad"}}`))
	f.Add([]byte(`{"type":"EVENT_TYPE_SESSION_ENDED","pool":"p.>","instanceId":"*"}`))
	f.Add([]byte(`{"type":"EVENT_TYPE_SESSION_ENDED","pool":"p","instanceId":"i","id":"a\r\nNats-Msg-Id: x"}`))
	f.Add([]byte(`{"type":"EVENT_TYPE_SESSION_ENDED","pool":"p","instanceId":"i","source":"s\nce-type: evil","time":"2026-01-01T00:00:00Z"}`))
	f.Add([]byte(`{"type":99,"pool":"p","instanceId":"i"}`))
	f.Add([]byte(`{"type":"EVENT_TYPE_SESSION_ENDED","time":"9999-12-31T23:59:59Z","pool":"p","instanceId":"i"}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		ev, err := events.Decode(data)
		if err != nil {
			if msg := err.Error(); !strings.HasPrefix(msg, "decode Event") {
				t.Fatalf("Decode refusal %q does not name the message", msg)
			}
			return
		}
		if ev.GetType() == livegatev1.EventType_EVENT_TYPE_UNSPECIFIED {
			t.Fatal("decoded an event without a type")
		}
		msg, err := events.Message(ev)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("Message refused with an empty error")
			}
			return
		}
		tokens := strings.Split(msg.Subject, ".")
		if len(tokens) != 6 || strings.Join(tokens[:3], ".") != events.SubjectPrefix ||
			tokens[3] != ev.GetPool() || tokens[4] != ev.GetInstanceId() || tokens[5] != events.TypeToken(ev.GetType()) {
			t.Fatalf("subject %q for pool %q instance %q type %v", msg.Subject, ev.GetPool(), ev.GetInstanceId(), ev.GetType())
		}
		for _, tok := range tokens {
			if tok == "" || tok == "*" || tok == ">" || strings.ContainsAny(tok, " \t\r\n*>") {
				t.Fatalf("subject %q has a bad token %q", msg.Subject, tok)
			}
		}
		verbatim := map[string]string{events.HeaderID: ev.GetId(), "Nats-Msg-Id": ev.GetId(), events.HeaderSource: ev.GetSource()}
		for k, vs := range msg.Header {
			for _, v := range vs {
				if want, ok := verbatim[k]; ok {
					if v != want {
						t.Fatalf("header %s = %q, want the event's %q", k, v, want)
					}
					continue
				}
				if strings.ContainsAny(v, "\r\n") {
					t.Fatalf("header %s: %q spans lines", k, v)
				}
			}
		}
	})
}
