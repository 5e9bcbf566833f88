package events_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/livegate/livegate/pkg/events"
	"github.com/livegate/livegate/pkg/natstest"
	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
)

func TestTypeTokens(t *testing.T) {
	for name, v := range livegatev1.EventType_value {
		typ := livegatev1.EventType(v)
		if typ == livegatev1.EventType_EVENT_TYPE_UNSPECIFIED {
			continue
		}
		tok := events.TypeToken(typ)
		if strings.ContainsAny(tok, ". *>") || tok != strings.ToLower(tok) {
			t.Errorf("%s: token %q is not one lower-case subject token", name, tok)
		}
		back, err := events.ParseTypeToken(tok)
		if err != nil || back != typ {
			t.Errorf("ParseTypeToken(%q) = %v, %v; want %v", tok, back, err, typ)
		}
	}
	if got := events.Subject("pool-a", "node-1", livegatev1.EventType_EVENT_TYPE_SESSION_ENDED); got != "livegate.v1.events.pool-a.node-1.session_ended" {
		t.Errorf("Subject = %q", got)
	}
	if _, err := events.ParseTypeToken("unspecified"); err == nil {
		t.Error("ParseTypeToken accepted unspecified")
	}
}

// TestValidateTokenLongValueNotRepeated: a 10 KB instance id is refused by its length, not quoted
// whole into the error and every log line that carries it.
func TestValidateTokenLongValueNotRepeated(t *testing.T) {
	err := events.ValidateToken("instance id", strings.Repeat("x", 10<<10))
	if err == nil || len(err.Error()) > 200 || !strings.Contains(err.Error(), "10240 bytes") {
		t.Fatalf("ValidateToken(10 KB) = %v: want a short error that gives the length", err)
	}
}

func TestValidateToken(t *testing.T) {
	for _, tt := range []struct {
		in string
		ok bool
	}{
		{"node-1", true}, {"Pool_A", true}, {"", false}, {"a.b", false}, {"a b", false},
		{"a*", false}, {"a>", false}, {"a~b", false}, {strings.Repeat("x", 129), false},
	} {
		if err := events.ValidateToken("pool", tt.in); (err == nil) != tt.ok {
			t.Errorf("ValidateToken(%q) = %v, want ok=%v", tt.in, err, tt.ok)
		}
	}
}

func TestMessageRejects(t *testing.T) {
	for _, ev := range []*livegatev1.Event{
		{Pool: "p", InstanceId: "i"},
		{Type: livegatev1.EventType_EVENT_TYPE_APP_READY, Pool: "p.x", InstanceId: "i"},
		{Type: livegatev1.EventType_EVENT_TYPE_APP_READY, Pool: "p", InstanceId: ""},
	} {
		if _, err := events.Message(ev); err == nil {
			t.Errorf("Message(%v) accepted", ev)
		}
	}
}

func servers(t *testing.T) map[string]func(*testing.T) string {
	return map[string]func(*testing.T) string{
		"embedded": func(t *testing.T) string { return natstest.Embedded(t) },
		"binary":   func(t *testing.T) string { return natstest.External(t).URL() },
	}
}

func TestPublishHeadersAndDedup(t *testing.T) {
	for name, start := range servers(t) {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			_, js := natstest.Connect(t, start(t))
			if err := events.EnsureStream(ctx, js); err != nil {
				t.Fatal(err)
			}
			// A second call must be a no-op update, not an error.
			if err := events.EnsureStream(ctx, js); err != nil {
				t.Fatal(err)
			}
			pub := events.NewPublisher(js, "livegate-agent/node-1")
			ev := &livegatev1.Event{
				Type:       livegatev1.EventType_EVENT_TYPE_SESSION_ENDED,
				SessionId:  "s1",
				InstanceId: "node-1",
				Pool:       "default",
				Details:    &livegatev1.Event_SessionEnded{SessionEnded: &livegatev1.SessionEnded{Reason: "graceful", Recycle: true}},
			}
			if err := pub.Publish(ctx, ev); err != nil {
				t.Fatal(err)
			}
			// The same event again (a retry after a lost ack) is dropped by Nats-Msg-Id.
			if err := pub.Publish(ctx, ev); err != nil {
				t.Fatal(err)
			}
			other := &livegatev1.Event{Type: livegatev1.EventType_EVENT_TYPE_APP_READY, InstanceId: "node-1", Pool: "default"}
			if err := pub.Publish(ctx, other); err != nil {
				t.Fatal(err)
			}
			stream, err := js.Stream(ctx, events.StreamName)
			if err != nil {
				t.Fatal(err)
			}
			info, err := stream.Info(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if info.State.Msgs != 2 {
				t.Fatalf("stream holds %d messages, want 2 (duplicate not dropped?)", info.State.Msgs)
			}
			msg, err := stream.GetLastMsgForSubject(ctx, "livegate.v1.events.default.node-1.session_ended")
			if err != nil {
				t.Fatal(err)
			}
			want := map[string]string{
				"ce-specversion": "1.0",
				"ce-id":          ev.Id,
				"ce-type":        "dev.livegate.v1.session_ended",
				"ce-source":      "livegate-agent/node-1",
				"Nats-Msg-Id":    ev.Id,
				"content-type":   "application/json",
			}
			for k, v := range want {
				if got := msg.Header.Get(k); got != v {
					t.Errorf("header %s = %q, want %q", k, got, v)
				}
			}
			if _, err := time.Parse(time.RFC3339Nano, msg.Header.Get("ce-time")); err != nil {
				t.Errorf("ce-time %q: %v", msg.Header.Get("ce-time"), err)
			}
			got, err := events.Decode(msg.Data)
			if err != nil {
				t.Fatal(err)
			}
			if got.GetSessionEnded().GetReason() != "graceful" || got.GetSessionId() != "s1" {
				t.Errorf("decoded %v", got)
			}
		})
	}
}

// TestDeliverRetries: an event published while the stream cannot take it (here: not created yet,
// as during a leader election) is retried under its id until the stream has it, once.
func TestDeliverRetries(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	nc, js := natstest.Connect(t, natstest.Embedded(t))
	pub := events.NewPublisher(js, "livegate-edgeproxy/e1")
	if err := pub.Deliver(ctx, &livegatev1.Event{Type: livegatev1.EventType_EVENT_TYPE_ROUTE_PROGRAMMED, Pool: "p"}); err == nil || !strings.Contains(err.Error(), "instance id") {
		t.Fatalf("Deliver of an event without an instance = %v, want the build error", err)
	}
	// A plain subscriber sees the first attempt, which then waits in vain for an acknowledgement.
	sub, err := nc.SubscribeSync(events.SubjectPrefix + ".>")
	if err != nil {
		t.Fatal(err)
	}
	ev := &livegatev1.Event{Type: livegatev1.EventType_EVENT_TYPE_ROUTE_PROGRAMMED, Pool: "p", InstanceId: "i1", SessionId: "s1"}
	done := make(chan error, 1)
	go func() { done <- pub.Deliver(ctx, ev) }()
	if _, err := sub.NextMsg(10 * time.Second); err != nil {
		t.Fatalf("first attempt: %v", err)
	}
	if err := sub.Unsubscribe(); err != nil {
		t.Fatal(err)
	}
	if err := events.EnsureStream(ctx, js); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Deliver: %v", err)
	}
	st, err := js.Stream(ctx, events.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 1 {
		t.Fatalf("stream holds %d messages, want 1", info.State.Msgs)
	}
}
