package faults

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/livegate/livegate/e2e/internal/stack"
	"github.com/livegate/livegate/pkg/kvstore"
	"github.com/livegate/livegate/pkg/wire"
	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/types/known/durationpb"
)

// TestSessionSquatted: another instance writes a route with the session id of a live one (a
// compromised or misconfigured container). It is refused with a route_refused event naming the
// holder; when the holder's key lapses (its agent restarting) the squatter is still refused for
// the holder's lease, and the holder's renewed route gets its session back; only when the
// holder's session ends does the id become free.
func TestSessionSquatted(t *testing.T) {
	e := newEnv(t, config{nodes: []nodeConfig{{}, {}}})
	g := e.edges[0]
	js, err := jetstream.New(e.kv.NC)
	if err != nil {
		t.Fatal(err)
	}
	const id = "squatted-1"
	holder := netip.AddrPortFrom(stack.LabNodeLAN(1), stack.AppSignalingPort).String()
	squatter := netip.AddrPortFrom(stack.LabNodeLAN(2), stack.AppSignalingPort).String()
	// The holder's route is renewed as its agent would: a key that lives one lease unless
	// written again, every third of it.
	renew := func() error {
		data, err := wire.Marshal(&livegatev1.Route{SessionId: id, InstanceId: "holder", Pool: pool, SignalingBackend: holder,
			MediaBackends: []string{netip.AddrPortFrom(stack.LabNodeLAN(1), stack.AppMediaPort).String()}, LeaseTtl: durationpb.New(leaseTTL)})
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(e.ctx, kvTimeout)
		defer cancel()
		_, err = kvstore.PutTTL(ctx, js, kvstore.RoutesBucket, "holder", data, leaseTTL)
		return err
	}
	var agent sync.WaitGroup
	runAgent := func(ctx context.Context) {
		agent.Go(func() {
			for {
				if err := renew(); err != nil && ctx.Err() == nil {
					t.Errorf("renew the holder's route: %v", err)
				}
				select {
				case <-ctx.Done():
					return
				case <-time.After(leaseTTL / 3):
				}
			}
		})
	}
	actx, stopAgent := context.WithCancel(e.ctx)
	runAgent(actx)
	defer func() { stopAgent(); agent.Wait() }()
	e.routed("holder", id)
	mapped := func(want string) func() error {
		return func() error {
			m, err := g.showMap(e.ctx)
			if err != nil || m[id] != want {
				return fmt.Errorf("map entry %s = %q (%v), want %s", id, m[id], err, want)
			}
			return nil
		}
	}

	mark := e.obs.Mark()
	if err := e.kv.putRoute(e.ctx, "squatter", id, stack.LabNodeLAN(2)); err != nil {
		t.Fatal(err)
	}
	ev := e.waitEvent(mark, "squatter", livegatev1.EventType_EVENT_TYPE_ROUTE_REFUSED)
	if reason := ev.Event.GetRouteRefused().GetReason(); !strings.Contains(reason, "held by instance holder") {
		t.Errorf("the squatter refused for %q, want the holder named", reason)
	}

	// The holder's agent restarts: its key lapses, and comes back a while later.
	mark = e.obs.Mark()
	stopAgent()
	agent.Wait()
	stopped := time.Now()
	removed := e.waitEvent(mark, "holder", livegatev1.EventType_EVENT_TYPE_ROUTE_REMOVED)
	t.Logf("figure: the holder's key lapsed; its route removed (%q) %s after its renewals stopped (lease %s)",
		removed.Event.GetRouteRemoved().GetReason(), round(removed.At.Sub(stopped)), leaseTTL)
	// The pass that removed the holder's route would have programmed the squatter.
	if m, err := g.showMap(e.ctx); err != nil || m[id] == squatter {
		t.Fatalf("the squatter took %s while the holder's lease lasted (%v)", id, err)
	}
	actx, stopAgent = context.WithCancel(e.ctx)
	runAgent(actx)
	took := e.eventually(10*time.Second, "the holder's session back on the holder", mapped(holder))
	t.Logf("figure: the holder's renewed route got its session id back %s after it renewed", round(took))
	w := e.mustDial(g, id)
	if err := e.echo(w); err != nil {
		t.Error(err)
	}
	w.Close()

	// The holder's session ends: the id is free, and the other instance gets it.
	stopAgent()
	agent.Wait()
	if err := e.kv.deleteRoute(e.ctx, "holder"); err != nil {
		t.Fatal(err)
	}
	e.eventually(10*time.Second, "the other instance routed once the session ended", mapped(squatter))
	if err := e.kv.deleteRoute(e.ctx, "squatter"); err != nil {
		t.Fatal(err)
	}
	e.clean()
}
