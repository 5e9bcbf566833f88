package reconcile_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/livegate/livegate/edgeproxy/internal/media"
	"github.com/livegate/livegate/edgeproxy/internal/reconcile"
	"github.com/livegate/livegate/pkg/events"
	"github.com/livegate/livegate/pkg/kvstore"
	"github.com/livegate/livegate/pkg/wire"
	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"google.golang.org/protobuf/types/known/durationpb"
)

// TestSessionSquatterRefused writes a second instance's route with the session id of a served
// one. The squatter is refused with a route_refused event naming the holder and counted; when
// the holder's key lapses (its agent restarting) the squatter is still refused for the holder's
// lease, and the holder's new route gets its session back; once the holder's route is deleted
// outright (its session ended) the id is free and the other instance gets it.
func TestSessionSquatterRefused(t *testing.T) {
	e := newEnv(t)
	drv := &recordingDriver{m: map[string]string{}}
	reg := prometheus.NewRegistry()
	runLoop(t, e, config("edge-a", "default"), reconcile.Deps{
		Driver: drv, Media: media.Off{},
		Events: events.NewPublisher(e.js, "test/edge-a"), Metrics: reconcile.NewMetrics(reg),
		Log: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.InfoLevel),
	})

	const owner, squatter = "127.0.0.1:30001", "127.0.0.1:30002"
	// The owner's key lives 1 s unless renewed; its lease, as its agent declares it, is 3 s.
	putOwner := func() {
		t.Helper()
		data, err := wire.Marshal(&livegatev1.Route{SessionId: "s", SignalingBackend: owner, EdgeId: "edge-a", LeaseTtl: durationpb.New(3 * time.Second)})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := kvstore.PutTTL(context.Background(), e.js, kvstore.RoutesBucket, "i-owner", data, time.Second); err != nil {
			t.Fatal(err)
		}
	}
	routed := func(want string) func() bool {
		return func() bool { m, _ := drv.List(context.Background()); return m["s"] == want }
	}
	neverSquatter := func() {
		t.Helper()
		drv.mu.Lock()
		defer drv.mu.Unlock()
		for _, v := range drv.seen {
			if v == squatter {
				t.Fatal("the squatter's backend reached HAProxy while the holder's lease lasted")
			}
		}
	}
	conflicts := func() float64 {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() == "livegate_edge_session_conflicts_total" {
				return mf.GetMetric()[0].GetCounter().GetValue()
			}
		}
		return -1
	}

	putOwner()
	waitFor(t, "the owner routed", routed(owner))
	putRoute(t, e, "i-squat", &livegatev1.Route{SessionId: "s", SignalingBackend: squatter, EdgeId: "edge-a"})
	waitFor(t, "the squatter refused and reported", func() bool {
		ev := lastEvent(t, e, "default", "i-squat", livegatev1.EventType_EVENT_TYPE_ROUTE_REFUSED)
		return ev != nil && strings.Contains(ev.GetRouteRefused().GetReason(), "session_id: held by instance i-owner")
	})
	if got := conflicts(); got != 1 {
		t.Fatalf("livegate_edge_session_conflicts_total = %v, want 1", got)
	}

	// The owner's key lapses: the squatter stays refused, and the owner's return routes to it.
	// The pass that reports the owner's route removed has programmed what follows its lapse.
	waitFor(t, "the owner's route removed as expired", func() bool {
		ev := lastEvent(t, e, "default", "i-owner", livegatev1.EventType_EVENT_TYPE_ROUTE_REMOVED)
		return ev != nil && ev.GetRouteRemoved().GetReason() == "route lease expired"
	})
	neverSquatter()
	putOwner()
	waitFor(t, "the owner routed again", routed(owner))
	neverSquatter()

	// The session ends: the id is free.
	if err := e.kv.Routes.Delete(context.Background(), "i-owner"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the other instance routed once the session ended", routed(squatter))
}
