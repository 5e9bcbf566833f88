package faults

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/livegate/livegate/e2e/internal/observer"
	"github.com/livegate/livegate/e2e/internal/stack"
	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
)

// TestEdgeKilledUnderChurn: the edge dies with SIGKILL while routes come and go, stays down a
// moment and starts again. Its HAProxy and the kernel's rules keep running meanwhile, so an
// established websocket and a media flow carry on untouched; the restarted edge adopts HAProxy
// and applies every route change made while it was down.
func TestEdgeKilledUnderChurn(t *testing.T) {
	e := newEnv(t, config{nodes: []nodeConfig{{agent: true}, {}}})
	g := e.edges[0]
	s := e.routed("node1", "")
	w := e.mustDial(g, s.id)
	defer w.Close()
	// The agent's state after its client connected; any client_disconnected from here on
	// would mean the websocket broke.
	e.waitEvent(0, "node1", livegatev1.EventType_EVENT_TYPE_CLIENT_CONNECTED)
	mark := e.obs.Mark()
	media := e.startFlow(g, s.port, 9*time.Second)

	ch := startChurn(e, 10, 150*time.Millisecond)
	e.flowing(media)
	g.P.Kill()
	killed := time.Now()
	t.Logf("edge killed (SIGKILL) under churn")
	// Down long enough for a dozen route changes to go by unseen.
	time.Sleep(2 * time.Second)
	restart := time.Now()
	if err := g.start(); err != nil {
		t.Fatal(err)
	}
	t.Logf("edge restarted; healthy (KV snapshot programmed) %s later", since(restart))
	// The churn goes on a while, so the edge applies changes on top of its snapshot too.
	time.Sleep(time.Second)
	final, changes := ch.stop()
	stopped := time.Now()
	took := e.eventually(20*time.Second, "edge converged on the routes changed while it was down", func() error {
		return e.converged(g, final, s)
	})
	t.Logf("figure: %d route changes, %d while the edge was down; converged %s after the restart, %s after the last change (resync %s)",
		changes, ch.whileDown(killed, restart), round(stopped.Sub(restart)+took), round(took), resync)

	e.carriedOn("the edge's SIGKILL and restart", s, w, media)
	if got := e.obs.Summary(mark); slices.ContainsFunc(e.obs.Events()[mark:], func(r observer.Received) bool {
		return r.Event.GetInstanceId() == "node1" && r.Event.GetType() == livegatev1.EventType_EVENT_TYPE_CLIENT_DISCONNECTED
	}) {
		t.Errorf("the app saw its client leave during the edge restart: %s", got)
	}
	for k := range final {
		if err := e.kv.deleteRoute(e.ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	w.Close()
	stopAgents(t, e)
	e.clean()
}

// churn writes and deletes routes to the app-only node 2 in a loop, as agents coming and going
// would.
type churn struct {
	cancel context.CancelFunc
	done   chan struct{}
	mu     sync.Mutex
	state  map[string]string
	times  []time.Time
	n      int
}

func startChurn(e *env, keys int, every time.Duration) *churn {
	ctx, cancel := context.WithCancel(e.ctx)
	c := &churn{cancel: cancel, done: make(chan struct{}), state: map[string]string{}}
	// A test that fails before it stops the churn would leave it writing while the env closes
	// the KV connection, and its errors would bury the failure.
	e.t.Cleanup(func() { c.stop() })
	go func() {
		defer close(c.done)
		t := time.NewTicker(every)
		defer t.Stop()
		for i := 0; ; i++ {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			key := fmt.Sprintf("churn%d", i%keys)
			c.mu.Lock()
			_, present := c.state[key]
			c.mu.Unlock()
			var err error
			session := fmt.Sprintf("sess-%s-%d", key, i)
			if present {
				err = e.kv.deleteRoute(ctx, key)
			} else {
				err = e.kv.putRoute(ctx, key, session, stack.LabNodeLAN(2))
			}
			if err != nil {
				if ctx.Err() == nil {
					e.t.Errorf("churn: %v", err)
				}
				return
			}
			c.mu.Lock()
			if present {
				delete(c.state, key)
			} else {
				c.state[key] = session
			}
			c.times = append(c.times, time.Now())
			c.mu.Unlock()
		}
	}()
	return c
}

// stop ends the churn and returns the routes it left (key → session) and how many changes it
// made.
func (c *churn) stop() (map[string]string, int) {
	c.cancel()
	<-c.done
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.state), len(c.times)
}

// whileDown counts the changes made between the edge's kill and its restart.
func (c *churn) whileDown(killed, restart time.Time) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, at := range c.times {
		if at.After(killed) && at.Before(restart) {
			n++
		}
	}
	return n
}

// converged reports how edge g differs from serving exactly the churn's routes plus session s:
// endpoints, HAProxy map and DNAT map.
func (e *env) converged(g *edge, final map[string]string, s session) error {
	want := maps.Clone(final)
	want[s.instance] = s.id
	m, err := g.showMap(e.ctx)
	if err != nil {
		return err
	}
	if len(m) != len(want) {
		return fmt.Errorf("map has %d entries, want %d", len(m), len(want))
	}
	ports := map[int]bool{}
	for k, sess := range want {
		if m[sess] == "" {
			return fmt.Errorf("map lacks %s of %s", sess, k)
		}
		got, err := e.endpoint(k)
		if err != nil {
			return err
		}
		if got.id != sess || got.edge != g {
			return fmt.Errorf("endpoint of %s is %s, want session %s on %s", k, got, sess, g.ID)
		}
		ports[got.port] = true
	}
	eps, err := stack.Keys(e.ctx, e.kv.Endpoints, kvTimeout)
	if err != nil || len(eps) != len(want) {
		return fmt.Errorf("%d endpoints (%v), want %d", len(eps), err, len(want))
	}
	dnat, err := g.dnatPorts(e.ctx)
	if err != nil || !maps.Equal(dnat, ports) {
		return fmt.Errorf("DNAT map ports %v (%v), want %v", dnat, err, ports)
	}
	return nil
}
