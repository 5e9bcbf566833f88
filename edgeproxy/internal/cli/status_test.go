package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/livegate/livegate/edgeproxy/internal/status"
	"github.com/livegate/livegate/pkg/events"
	"github.com/livegate/livegate/pkg/kvstore"
	"github.com/livegate/livegate/pkg/natstest"
	"github.com/livegate/livegate/pkg/wire"
	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// TestCommandReadsNATS: the command reads a real NATS server as the edges and agents left it.
func TestCommandReadsNATS(t *testing.T) {
	srv := natstest.External(t)
	_, js := natstest.Connect(t, srv.URL())
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var out, errOut bytes.Buffer
	// Nothing there yet: an empty report, not an error.
	if code := StatusCommand(Hooks{})(ctx, []string{"--nats-url", srv.URL(), "-o", "json"}, &out, &errOut); code != 0 || !strings.Contains(out.String(), `"edges":[]`) {
		t.Fatalf("empty NATS: exit %d, %s %s", code, out.String(), errOut.String())
	}
	if err := events.EnsureStream(ctx, js); err != nil {
		t.Fatal(err)
	}
	if _, err := kvstore.Ensure(ctx, js); err != nil {
		t.Fatal(err)
	}
	edge, _ := wire.Marshal(&livegatev1.EdgeStatus{EdgeId: "edge-1", Pool: "default", Capacity: 10, FreePorts: 9, Routes: 1, Heartbeat: timestamppb.Now()})
	if _, err := kvstore.PutTTL(ctx, js, kvstore.EdgesBucket, "edge-1", edge, time.Minute); err != nil {
		t.Fatal(err)
	}
	for key, sess := range map[string]string{"app-1": "s1", "app-2": "s2"} {
		route, _ := wire.Marshal(&livegatev1.Route{InstanceId: key, SessionId: sess, Pool: "default", SignalingBackend: "10.0.0.1:49100"})
		if _, err := kvstore.PutTTL(ctx, js, kvstore.RoutesBucket, key, route, time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	kv, err := js.KeyValue(ctx, kvstore.EndpointsBucket)
	if err != nil {
		t.Fatal(err)
	}
	ep, _ := wire.Marshal(&livegatev1.Endpoint{InstanceId: "app-1", SessionId: "s1", EdgeId: "edge-1", PublicHost: "edge-1.example", SignalingPort: 48322, PublicUdpPorts: []uint32{10500}})
	if _, err := kv.Put(ctx, "app-1", ep); err != nil {
		t.Fatal(err)
	}
	if err := events.NewPublisher(js, "livegate-edgeproxy/edge-1").Publish(ctx, &livegatev1.Event{Type: livegatev1.EventType_EVENT_TYPE_ROUTE_REFUSED, InstanceId: "app-2", SessionId: "s2", Pool: "default",
		Time:    timestamppb.New(time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)),
		Details: &livegatev1.Event_RouteRefused{RouteRefused: &livegatev1.RouteRefused{EdgeId: "edge-1", Reason: "signaling_backend: port 49100 is outside the allowed range 30000-32767"}}}); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	if code := StatusCommand(Hooks{})(ctx, []string{"--nats-url", srv.URL(), "-o", "json"}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	var r status.Report
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		t.Fatalf("%v: %s", err, out.String())
	}
	if len(r.Edges) != 1 || !r.Edges[0].Healthy || r.Edges[0].Ports.InUse != 1 || len(r.Routes) != 2 ||
		r.Routes[0].State != status.StateServed || r.Routes[1].State != status.StateRefused || r.Routes[1].Refusal.EdgeID != "edge-1" {
		t.Errorf("report %s", out.String())
	}
	out.Reset()
	if code := StatusCommand(Hooks{})(ctx, []string{"--nats-url", srv.URL()}, &out, &errOut); code != 0 || !strings.Contains(out.String(), "refused") {
		t.Errorf("text: exit %d\n%s", code, out.String())
	}
	// No NATS there: a clear error, exit 1.
	errOut.Reset()
	if code := StatusCommand(Hooks{})(ctx, []string{"--nats-url", "nats://127.0.0.1:9", "--timeout", "2s"}, &out, &errOut); code != 1 || !strings.Contains(errOut.String(), "is NATS up?") {
		t.Errorf("no NATS: exit %d, %s", code, errOut.String())
	}
}
