package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/livegate/livegate/pkg/events"
	"github.com/livegate/livegate/pkg/natstest"
	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
)

// TestRouteRefusalReachesTheAgent: an edge's route_refused event about this instance shows in
// /v1/streaming/session, the log and the metric, so the app team sees why the session is not
// routable without reading the edge's log.
func TestRouteRefusalReachesTheAgent(t *testing.T) {
	srv := natstest.External(t)
	n := connect(t, srv.URL())
	instance := fmt.Sprintf("lga-%d-refused", os.Getpid())
	a := startAgent(t, nil, "--nats-url="+srv.URL(), "--instance-id="+instance, "--pool=lgapool", "--session-id=s-ref",
		"--signaling-backend=127.0.0.1:49100", "--media-backend=127.0.0.1:47998")
	a.appEvent("app-ready")
	a.appEvent("rtx-ready")
	eventually(t, 10*time.Second, "route written", func() bool { return n.route(t, instance) != nil })
	const reason = "signaling_backend: port 49100 is outside the allowed range 30000-32767"
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := events.NewPublisher(n.js, "livegate-edgeproxy/edge-r").Publish(ctx, &livegatev1.Event{
		Type: livegatev1.EventType_EVENT_TYPE_ROUTE_REFUSED, InstanceId: instance, Pool: "lgapool", SessionId: "s-ref",
		Details: &livegatev1.Event_RouteRefused{RouteRefused: &livegatev1.RouteRefused{EdgeId: "edge-r", Reason: reason}},
	}); err != nil {
		t.Fatal(err)
	}
	var refusal map[string]any
	eventually(t, 10*time.Second, "refusal in the session view", func() bool {
		refusal, _ = a.session()["routeRefusal"].(map[string]any)
		return refusal != nil
	})
	if refusal["edgeId"] != "edge-r" || refusal["reason"] != reason || refusal["sessionId"] != "s-ref" {
		t.Errorf("routeRefusal %v", refusal)
	}
	if _, metrics := a.call("GET", a.rest+"/metrics", ""); !strings.Contains(metrics, "\nlivegate_agent_route_refused 1\n") {
		t.Errorf("metrics lack livegate_agent_route_refused 1")
	}
	if l := a.log.String(); !strings.Contains(l, "route refused by the edge") || !strings.Contains(l, reason) {
		t.Errorf("refusal not logged")
	}
}
