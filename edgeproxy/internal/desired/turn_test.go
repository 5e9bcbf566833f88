package desired

import (
	"fmt"
	"testing"
	"time"

	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// periodRelay hands out credentials that change every period and are renewed half-way.
type periodRelay struct{ period time.Duration }

func (r periodRelay) window(now time.Time) time.Time { return now.Truncate(r.period) }

func (r periodRelay) Credentials(session string, now time.Time) *livegatev1.TurnRelay {
	w := r.window(now)
	return &livegatev1.TurnRelay{Uris: []string{"turn:198.18.1.1:3478"}, Username: fmt.Sprintf("%d:%s", w.Unix(), session),
		Credential: "c", ExpiresAt: timestamppb.New(w.Add(r.period))}
}

func (r periodRelay) Current(session string, published *livegatev1.TurnRelay, now time.Time) (bool, time.Time) {
	if published == nil || published.GetUsername() != fmt.Sprintf("%d:%s", r.window(now).Unix(), session) {
		return false, time.Time{}
	}
	return true, r.window(now).Add(r.period)
}

// TestTURNCredentialsRenewed: an endpoint carries its session's TURN credential; the commit tells
// the relay which sessions it serves and when the credential falls due, and the pass then
// rewrites the endpoint with a fresh one.
func TestTURNCredentialsRenewed(t *testing.T) {
	now := time.Unix(1200, 0)
	kv := newStore()
	a := newEdge(t, kv, edgeConfig("edge-a"), mediaPorts, periodRelay{period: time.Minute}, &now)
	kv.set(RoutesBucket, "i1", encode(t, edgeRoute("edge-a", "s1", "127.0.0.1:31000")))
	r := a.pass(now)
	ep := endpointIn(t, kv, "i1")
	if ep.GetTurn().GetUsername() != "1200:s1" {
		t.Fatalf("endpoint TURN %v", ep.GetTurn())
	}
	if m := r.commit.Relay["s1"]; len(m.Ports) != 1 || len(m.Backends) != 1 || len(r.commit.Relay) != 1 {
		t.Fatalf("relay sessions %v", r.commit.Relay)
	}
	if !r.commit.Next.Equal(time.Unix(1260, 0)) {
		t.Fatalf("renewal due %v, want 1260", r.commit.Next.Unix())
	}
	a.watch(now)
	r = a.pass(now.Add(30 * time.Second))
	if len(r.writes) != 0 || r.commit.Relay != nil {
		t.Fatalf("before the renewal: writes %v, relay %v", r.writes, r.commit.Relay)
	}
	r = a.pass(time.Unix(1260, 0))
	if len(r.writes) != 1 || endpointIn(t, kv, "i1").GetTurn().GetUsername() != "1260:s1" || len(r.events(Programmed)) != 0 {
		t.Fatalf("at the renewal: writes %v, endpoint %v, events %v", r.writes, endpointIn(t, kv, "i1"), r.commit.Events)
	}
}

// TestNoRelayPublishesNoTURN: without a relay the endpoint carries no credential, and one that
// carries one is stale.
func TestNoRelayPublishesNoTURN(t *testing.T) {
	now := time.Unix(1200, 0)
	kv := newStore()
	a := newEdge(t, kv, edgeConfig("edge-a"), mediaPorts, nil, &now)
	kv.set(RoutesBucket, "i1", encode(t, edgeRoute("edge-a", "s1")))
	if r := a.pass(now); endpointIn(t, kv, "i1").GetTurn() != nil || r.commit.Relay != nil || !r.commit.Next.IsZero() {
		t.Fatalf("endpoint %v, relay %v, next %v", endpointIn(t, kv, "i1"), r.commit.Relay, r.commit.Next)
	}
	w := a.s.Served()["i1"]
	stale := a.s.endpointFor(w, &livegatev1.TurnRelay{Username: "x"})
	if a.s.publishes(stale, w) || !a.s.publishes(a.s.endpointFor(w, nil), w) {
		t.Fatal("an endpoint with a TURN credential compares equal without a relay")
	}
}
