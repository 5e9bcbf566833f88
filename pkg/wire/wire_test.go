package wire

import (
	"strings"
	"testing"

	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
)

func TestRoundTrip(t *testing.T) {
	in := &livegatev1.Route{
		SessionId:        "abc",
		InstanceId:       "node-1",
		SignalingBackend: "198.18.0.2:30001",
		MediaBackends:    []string{"198.18.0.2:30002"},
		Pool:             "default",
		LeaseTtl:         durationpb.New(15e9),
	}
	b, err := Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"signalingBackend"`) {
		t.Fatalf("not protojson with JSON names: %s", b)
	}
	out := &livegatev1.Route{}
	if err := Unmarshal(b, out); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(in, out) {
		t.Fatalf("round trip: got %v want %v", out, in)
	}
}

func TestUnmarshalRejects(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"not json", "{", "decode Route"},
		{"wrong type", `{"sessionId": 5}`, "decode Route"},
		{"too large", `{"sessionId":"` + strings.Repeat("a", MaxSize) + `"}`, "more than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Unmarshal([]byte(tt.in), &livegatev1.Route{})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Unmarshal(%.40q) = %v, want error containing %q", tt.in, err, tt.want)
			}
		})
	}
}

func TestUnknownFieldsDropped(t *testing.T) {
	r := &livegatev1.Route{}
	if err := Unmarshal([]byte(`{"sessionId":"a","fromTheFuture":1}`), r); err != nil {
		t.Fatal(err)
	}
	if r.GetSessionId() != "a" {
		t.Fatalf("got %q", r.GetSessionId())
	}
}
