package lifecycle

import (
	"sync"
	"testing"
	"time"

	"github.com/livegate/livegate/agent/internal/metrics"
	"github.com/livegate/livegate/agent/internal/session"
	"github.com/livegate/livegate/pkg/events"
	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// recorder is a Publisher that remembers what it was asked.
type recorder struct {
	mu     sync.Mutex
	events []string
	routes []string
}

func (r *recorder) Publish(ev *livegatev1.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, events.TypeToken(ev.Type)+"@"+ev.InstanceId+"/"+ev.Pool)
}

func (r *recorder) SetRoute(id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.routes = append(r.routes, id)
}

func (r *recorder) snapshot() ([]string, []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.events...), append([]string(nil), r.routes...)
}

// TestResumeTimerIsReal checks that the resume window ends the session by itself, without another
// endsession call, and that the effects reach the publisher and the recycle hook in order.
func TestResumeTimerIsReal(t *testing.T) {
	rec := &recorder{}
	recycled := make(chan session.Recycle, 1)
	a := New(session.Config{QuitOnSessionEnded: true, ResumeTimeout: 50 * time.Millisecond, SessionID: "s1"},
		WithPublisher(rec), WithIdentity("i1", "p1"), WithRecycle(func(r session.Recycle) { recycled <- r }))
	notes, cancel := a.Subscribe()
	defer cancel()
	a.Signal(session.AppReady)
	a.Signal(session.RtxReady)
	a.Signal(session.ClientConnected)
	a.Signal(session.ClientDisconnected)
	select {
	case r := <-recycled:
		if r.SessionID != "s1" || r.Reason != session.ReasonResumeTimeout {
			t.Errorf("recycle %+v", r)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the resume window never ran out")
	}
	evs, routes := rec.snapshot()
	want := []string{"app_ready", "rtx_ready", "ready_for_connection", "client_connected", "client_disconnected", "session_awaiting_resume", "session_ended"}
	if len(evs) != len(want) {
		t.Fatalf("events %v", evs)
	}
	for i, w := range want {
		if evs[i] != w+"@i1/p1" {
			t.Errorf("event %d = %s, want %s@i1/p1", i, evs[i], w)
		}
	}
	if len(routes) != 2 || routes[0] != "s1" || routes[1] != "" {
		t.Errorf("routes %q", routes)
	}
	n := <-notes
	if n.Kind != KindSessionEnded || n.Data.(SessionEnded) != (SessionEnded{SessionID: "s1", Reason: session.ReasonResumeTimeout, Recycle: true}) {
		t.Errorf("notification %+v", n)
	}
	if v := a.View(); v.Phase != "ended" || v.StatusCode != 503 {
		t.Errorf("view %+v", v)
	}
}

func TestResumeCancelsTimer(t *testing.T) {
	recycled := make(chan session.Recycle, 1)
	a := New(session.Config{QuitOnSessionEnded: true, ResumeTimeout: 30 * time.Millisecond, SessionID: "s1"},
		WithRecycle(func(r session.Recycle) { recycled <- r }))
	a.Signal(session.ClientConnected)
	a.Signal(session.ClientDisconnected)
	a.Signal(session.ClientConnected)
	// Long enough for a timer that was not stopped to have fired many times over.
	time.Sleep(300 * time.Millisecond)
	select {
	case r := <-recycled:
		t.Fatalf("session ended after the client came back: %+v", r)
	default:
	}
	if v := a.View(); v.Phase != "active" {
		t.Errorf("phase %s", v.Phase)
	}
}

func TestStopEndsTheSession(t *testing.T) {
	rec := &recorder{}
	a := New(session.Config{QuitOnSessionEnded: true, SessionID: "s1"}, WithPublisher(rec))
	a.Signal(session.AppReady)
	a.Signal(session.RtxReady)
	a.Stop()
	a.Signal(session.ClientConnected)
	evs, routes := rec.snapshot()
	if evs[len(evs)-1] != "session_ended@/" || routes[len(routes)-1] != "" {
		t.Errorf("events %v routes %q", evs, routes)
	}
	if v := a.View(); v.ClientConnected || v.LastEndReason != session.ReasonAgentStopped {
		t.Errorf("view after stop %+v", v)
	}
}

// TestRouteRefusal: an edge's refusal of the current session's route shows in the view and the
// gauge until an endpoint is assigned; one about another session is ignored.
func TestRouteRefusal(t *testing.T) {
	m := metrics.New()
	a := New(session.Config{SessionID: "s1"}, WithMetrics(m))
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	a.RouteRefused("e1", "old", "stale", at)
	if v := a.View(); v.RouteRefusal != nil {
		t.Fatalf("refusal of another session kept: %+v", v.RouteRefusal)
	}
	a.RouteRefused("e1", "s1", "signaling_backend: port 49100 is outside 30000-32767", at)
	a.RouteRefused("e1", "s1", "signaling_backend: port 49100 is outside 30000-32767", at.Add(time.Second))
	want := Refusal{EdgeID: "e1", SessionID: "s1", Reason: "signaling_backend: port 49100 is outside 30000-32767", RefusedAt: at}
	if v := a.View(); v.RouteRefusal == nil || *v.RouteRefusal != want {
		t.Fatalf("refusal %+v, want %+v", v.RouteRefusal, want)
	}
	if got := testutil.ToFloat64(m.RouteRefused); got != 1 {
		t.Errorf("route_refused gauge %v", got)
	}
	if got := testutil.ToFloat64(m.RouteRefusals); got != 1 {
		t.Errorf("route_refusals_total %v, want the repeat counted once", got)
	}
	a.AssignEndpoint(&livegatev1.Endpoint{InstanceId: "i1", SessionId: "s1", EdgeId: "e2", PublicHost: "edge-2"})
	if v := a.View(); v.RouteRefusal != nil || testutil.ToFloat64(m.RouteRefused) != 0 {
		t.Errorf("refusal kept after an endpoint was assigned: %+v", v.RouteRefusal)
	}
}
