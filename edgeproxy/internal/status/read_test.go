package status

import (
	"strings"
	"testing"

	"github.com/livegate/livegate/pkg/natstest"
	"github.com/livegate/livegate/pkg/wire"
	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
)

// Read against real NATS: no bucket yet reads as empty; then a route that does not decode is
// reported invalid, an endpoint that does not is left out, and an edge status that does not
// fails the read.
func TestReadBuckets(t *testing.T) {
	_, js := natstest.Connect(t, natstest.Embedded(t))
	ctx := t.Context()
	if s, err := Read(ctx, js, t0); err != nil || len(s.Edges)+len(s.Routes)+len(s.Endpoints) != 0 {
		t.Fatalf("before any bucket: %+v, %v", s, err)
	}
	b := natstest.Buckets(t, js)
	mustPut := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	route, err := wire.Marshal(&livegatev1.Route{SessionId: "s1", Pool: "default"})
	mustPut(err)
	edge, err := wire.Marshal(&livegatev1.EdgeStatus{Pool: "default", Capacity: 10})
	mustPut(err)
	_, err = b.Routes.Put(ctx, "app-1", route)
	mustPut(err)
	_, err = b.Routes.Put(ctx, "app-2", []byte("not a route"))
	mustPut(err)
	_, err = b.Endpoints.Put(ctx, "app-1", []byte("not an endpoint"))
	mustPut(err)
	_, err = b.Edges.Put(ctx, "edge-a", edge)
	mustPut(err)
	s, err := Read(ctx, js, t0)
	if err != nil {
		t.Fatal(err)
	}
	if s.Routes["app-1"].GetSessionId() != "s1" || len(s.Routes) != 1 || s.Invalid["app-2"] == "" || len(s.Endpoints) != 0 ||
		s.Edges["edge-a"].GetCapacity() != 10 {
		t.Fatalf("snapshot %+v", s)
	}
	_, err = b.Edges.Put(ctx, "edge-b", []byte("not a status"))
	mustPut(err)
	if _, err := Read(ctx, js, t0); err == nil || !strings.Contains(err.Error(), "key edge-b") {
		t.Fatalf("Read with a bad edge status = %v", err)
	}
}
