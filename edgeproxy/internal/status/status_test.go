package status

import (
	"bytes"
	"strings"
	"testing"
	"time"

	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
	"google.golang.org/protobuf/types/known/timestamppb"
)

var t0 = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

func refusal(instance, session, edge, reason string) *livegatev1.Event {
	return &livegatev1.Event{Type: livegatev1.EventType_EVENT_TYPE_ROUTE_REFUSED, InstanceId: instance, SessionId: session, Pool: "default",
		Time:    timestamppb.New(t0),
		Details: &livegatev1.Event_RouteRefused{RouteRefused: &livegatev1.RouteRefused{EdgeId: edge, Reason: reason}}}
}

func TestBuild(t *testing.T) {
	s := Snapshot{
		At: t0,
		Edges: map[string]*livegatev1.EdgeStatus{
			"edge-b": {Pool: "default", Capacity: 100, FreePorts: 97, Routes: 3, Heartbeat: timestamppb.New(t0.Add(-2 * time.Second))},
			"edge-a": {Pool: "default", Capacity: 100, FreePorts: 100, Heartbeat: timestamppb.New(t0.Add(-time.Minute))},
		},
		Routes: map[string]*livegatev1.Route{
			"app-1": {SessionId: "s1", Pool: "default", SignalingBackend: "10.0.0.1:31000"},
			"app-2": {SessionId: "s2", Pool: "default", SignalingBackend: "10.0.0.2:49100"},
			"app-3": {SessionId: "s3-new", Pool: "default", SignalingBackend: "10.0.0.3:31000"},
		},
		Endpoints: map[string]*livegatev1.Endpoint{
			"app-1": {SessionId: "s1", EdgeId: "edge-b", PublicHost: "edge-b.example", SignalingPort: 48322, PublicUdpPorts: []uint32{10500}},
			"app-3": {SessionId: "s3-old", EdgeId: "edge-b"},
		},
		Refusals: map[string]*livegatev1.Event{
			"app-2": refusal("app-2", "s2", "edge-b", "signaling_backend: port 49100 is outside the allowed range 30000-32767"),
			"app-3": refusal("app-3", "s3-old", "edge-b", "stale"),
		},
		Invalid: map[string]string{"app-0": "decode Route: bad"},
	}
	r := Build(s, 15*time.Second)
	if len(r.Edges) != 2 || r.Edges[0].EdgeID != "edge-a" || r.Edges[0].Healthy || !r.Edges[1].Healthy || r.Edges[1].Ports.InUse != 3 {
		t.Errorf("edges %+v", r.Edges)
	}
	var states []string
	for _, rt := range r.Routes {
		states = append(states, rt.InstanceID+"="+rt.State)
	}
	if got := strings.Join(states, " "); got != "app-0=invalid app-1=served app-2=refused app-3=waiting" {
		t.Errorf("states %s", got)
	}
	if ep := r.Routes[1].Endpoint; ep == nil || ep.PublicUDPPorts[0] != 10500 {
		t.Errorf("served route's endpoint %+v", ep)
	}
	if rf := r.Routes[2].Refusal; rf == nil || rf.EdgeID != "edge-b" || !strings.Contains(rf.Reason, "49100") {
		t.Errorf("refused route's refusal %+v", rf)
	}
	var text bytes.Buffer
	if err := WriteText(&text, r); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"EDGES (2)", "stale", "3/100", "ROUTES (4)", "edge-b.example:48322 udp 10500", "port 49100 is outside"} {
		if !strings.Contains(text.String(), want) {
			t.Errorf("text lacks %q:\n%s", want, text.String())
		}
	}
}
