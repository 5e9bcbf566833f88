package faults

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/livegate/livegate/e2e/internal/stack"
	"github.com/livegate/livegate/e2e/internal/wsclient"
	"github.com/livegate/livegate/pkg/httpcall"
	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
)

// TestDrainHandsSessionsToThePool drains one edge of a two-edge pool that carries live sessions
// (one with an agent and a resume window, the others routes the test writes): until the
// deadline none of its websockets or its media is cut and new sessions go to the other edge;
// at the deadline every session it held moves to the other edge and stays routable, the agent's
// client resumes there, and the metrics and events say so. Then the drained edge restarts and is
// still draining, until `drain --cancel`.
func TestDrainHandsSessionsToThePool(t *testing.T) {
	e := newEnv(t, twoEdgePool())
	all, drained, other := e.poolSessions("d", 8)
	var held []session
	for _, s := range all {
		if s.edge == drained {
			held = append(held, s)
		}
	}
	t.Logf("draining %s with %d", drained.ID, len(held))

	// A client on every session of the drained edge, and media through the agent's session.
	conns := map[string]*wsclient.Conn{}
	for _, s := range held {
		conns[s.instance] = e.mustDial(drained, s.id)
	}
	media := e.startFlow(drained, all["node1"].port, 8*time.Second)
	e.flowing(media)

	const deadline = 15 * time.Second
	mark := e.obs.Mark()
	out, err := drained.NS.Command(e.ctx, e.bins.Edge, "drain", "--deadline", deadline.String()).CombinedOutput()
	if err != nil {
		t.Fatalf("livegate-edgeproxy drain: %v: %s", err, out)
	}
	drainedAt := time.Now()
	deadlineAt := drainedAt.Add(deadline)
	t.Logf("drain: %s", strings.TrimSpace(string(out)))

	// Until shortly before the deadline every client of the drained edge keeps echoing.
	echoUntil := deadlineAt.Add(-time.Second)
	var wg sync.WaitGroup
	cut := make(chan error, len(conns))
	for inst, w := range conns {
		wg.Go(func() {
			for n := 0; n < 200 && time.Now().Before(echoUntil); n++ {
				if err := e.echo(w); err != nil {
					cut <- fmt.Errorf("%s's websocket through %s %s after the drain, before its deadline: %w", inst, drained.ID, since(drainedAt), err)
					return
				}
				time.Sleep(250 * time.Millisecond)
			}
		})
	}

	code, body := e.admin(drained, "/readyz")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, `"status":"draining"`) {
		t.Errorf("%s /readyz while draining: %d %s", drained.ID, code, body)
	}
	if code, body := e.admin(drained, "/healthz"); code != http.StatusOK {
		t.Errorf("%s /healthz while draining: %d %s", drained.ID, code, body)
	}
	e.eventually(10*time.Second, "status shows "+drained.ID+" draining", func() error {
		return e.statusDraining(drained, true)
	})

	// New sessions go to the other edge.
	for key, s := range e.routeMany("n", 4) {
		if s.edge != other {
			t.Errorf("new session %s went to %s while %s drains", key, s.edge.ID, drained.ID)
		} else {
			all[key] = s
		}
	}
	for _, s := range held {
		if err := e.unchanged(s); err != nil {
			t.Errorf("before the deadline: %v", err)
		}
	}
	waitFlow(t, media, "media of node1 while its edge drains", 0.05)
	wg.Wait()
	close(cut)
	for err := range cut {
		t.Error(err)
	}
	if time.Now().After(deadlineAt) {
		t.Fatalf("the checks before the deadline took until %s after it", since(deadlineAt))
	}

	// At the deadline the held sessions move to the other edge.
	took := e.eventually(30*time.Second, "every session on "+other.ID, func() error {
		if err := e.allOn(all, other); err != nil {
			return err
		}
		if m, err := drained.showMap(e.ctx); err != nil || len(m) > 0 {
			return fmt.Errorf("%s map still holds %v (%v)", drained.ID, m, err)
		}
		return nil
	})
	handedAt := time.Now()
	t.Logf("figure: %d sessions handed from %s to %s %s after the drain (deadline %s), all there %s after the deadline (waited %s)",
		len(held), drained.ID, other.ID, since(drainedAt), deadline, round(handedAt.Sub(deadlineAt)), round(took))
	if handedAt.Before(deadlineAt) {
		t.Errorf("sessions moved %s before the deadline", round(deadlineAt.Sub(handedAt)))
	}
	for _, w := range conns {
		w.Close()
	}
	for k := range all {
		moved := e.routed(k, all[k].id)
		if moved.edge != other {
			t.Errorf("%s routed on %s", k, moved.edge.ID)
		}
		w := e.mustDial(other, moved.id)
		if err := e.echo(w); err != nil {
			t.Errorf("%s through %s after the hand-over: %v", k, other.ID, err)
		}
		w.Close()
	}
	resumed := e.waitEvent(mark, "node1", livegatev1.EventType_EVENT_TYPE_SESSION_RESUMED)
	t.Logf("node1's client resumed session %s through %s", resumed.Event.GetSessionId(), other.ID)
	if err := e.probe(other, e.routed("node1", all["node1"].id).port); err != nil {
		t.Error(err)
	}
	for _, s := range held {
		ev := e.waitEvent(mark, s.instance, livegatev1.EventType_EVENT_TYPE_ROUTE_REMOVED)
		if rr := ev.Event.GetRouteRemoved(); rr.GetEdgeId() != drained.ID || !strings.Contains(rr.GetReason(), "edge drained") {
			t.Errorf("route_removed of %s: %v, want edge %s and a reason naming the drain", s.instance, rr, drained.ID)
		}
	}
	_, metrics := e.admin(drained, "/metrics")
	if want := fmt.Sprintf(`livegate_edge_routes_removed_total{reason="drained"} %d`, len(held)); !strings.Contains(metrics, want) {
		t.Errorf("%s metrics lack %s", drained.ID, want)
	}
	if !strings.Contains(metrics, "livegate_edge_draining 1") || !strings.Contains(metrics, "livegate_edge_claiming 0") {
		t.Errorf("%s metrics do not say draining and not claiming", drained.ID)
	}
	if served := e.exactlyOnce(all); served[other.ID] != len(all) {
		t.Errorf("after the hand-over: %v", served)
	}

	// The drain survives a restart of the edge, and ends with drain --cancel.
	if err := drained.P.Stop(3 * time.Second); err != nil {
		t.Logf("%s stopped: %v", drained.ID, err)
	}
	if err := drained.start(); err != nil {
		t.Fatal(err)
	}
	if code, body := e.admin(drained, "/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "draining") {
		t.Errorf("%s /readyz after a restart: %d %s", drained.ID, code, body)
	}
	e.eventually(10*time.Second, "status shows "+drained.ID+" still draining", func() error {
		return e.statusDraining(drained, true)
	})
	if out, err := drained.NS.Command(e.ctx, e.bins.Edge, "drain", "--cancel").CombinedOutput(); err != nil {
		t.Fatalf("livegate-edgeproxy drain --cancel: %v: %s", err, out)
	}
	if code, body := e.admin(drained, "/readyz"); code != http.StatusOK {
		t.Errorf("%s /readyz after drain --cancel: %d %s", drained.ID, code, body)
	}
	e.eventually(10*time.Second, "status shows "+drained.ID+" no longer draining", func() error {
		return e.statusDraining(drained, false)
	})
	for k := range all {
		if k == "node1" {
			continue
		}
		if err := e.kv.deleteRoute(e.ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	stopAgents(t, e)
	e.clean()
}

// admin GETs path from edge g's admin address.
func (e *env) admin(g *edge, path string) (int, string) {
	e.t.Helper()
	return httpcall.Do(e.t, g.NS.HTTPClient(5*time.Second), httpcall.New(e.t, http.MethodGet, "http://127.0.0.1:9470"+path, "", ""))
}

// statusDraining checks what `livegate-edgeproxy status -o json` says of g's drain.
func (e *env) statusDraining(g *edge, want bool) error {
	ctx, cancel := context.WithTimeout(e.ctx, 15*time.Second)
	defer cancel()
	out, err := g.NS.Command(ctx, e.bins.Edge, "status", "-o", "json", "--nats-url", fmt.Sprintf("nats://%s:%d", stack.LabHubCtl, stack.NATSPort)).Output()
	if err != nil {
		return fmt.Errorf("livegate-edgeproxy status: %w", err)
	}
	var r struct {
		Edges []struct {
			EdgeID   string `json:"edgeId"`
			Draining bool   `json:"draining"`
			Claiming bool   `json:"claiming"`
		} `json:"edges"`
	}
	if err := json.Unmarshal(out, &r); err != nil {
		return fmt.Errorf("status -o json: %w", err)
	}
	for _, s := range r.Edges {
		if s.EdgeID == g.ID {
			if s.Draining != want || s.Claiming == want {
				return fmt.Errorf("status says %s draining %t claiming %t", g.ID, s.Draining, s.Claiming)
			}
			return nil
		}
	}
	return errors.New("status lists no " + g.ID)
}
