package faults

import (
	"fmt"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/livegate/livegate/e2e/internal/stack"
)

// TestHAProxySupervised: the HAProxy the edge supervises is reloaded, then killed. After the
// reload the new worker has the whole map and an established websocket carries on; after the
// kill the edge starts HAProxy again, the map is back, and a route written while HAProxy was
// down is in it.
func TestHAProxySupervised(t *testing.T) {
	haproxyFaults(t, false)
}

// TestHAProxyAttached: the same with the operator's HAProxy (attached mode, --haproxy-socket),
// which the test runs and restarts itself as the operator's supervisor would.
func TestHAProxyAttached(t *testing.T) {
	haproxyFaults(t, true)
}

func haproxyFaults(t *testing.T, attached bool) {
	e := newEnv(t, config{nodes: []nodeConfig{{}}, attached: attached})
	g := e.edges[0]
	mode := "supervised"
	if attached {
		mode = "attached"
	}
	want := map[string]string{}
	for i := 1; i <= 5; i++ {
		key := fmt.Sprintf("h%d", i)
		if err := e.kv.putRoute(e.ctx, key, "sess-"+key, stack.LabNodeLAN(1)); err != nil {
			t.Fatal(err)
		}
		want["sess-"+key] = fmt.Sprintf("%s:%d", stack.LabNodeLAN(1), stack.AppSignalingPort)
	}
	for k := range want {
		e.routed(k[len("sess-"):], k)
	}
	w := e.mustDial(g, "sess-h1")
	defer w.Close()

	// Reload: SIGUSR2 to the master, as `systemctl reload` or an operator would.
	master, oldWorker := g.haproxyPids(t)
	if err := syscall.Kill(master, syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	took := e.eventually(20*time.Second, "new worker with the whole map after reload", func() error {
		return g.hasMap(oldWorker, want)
	})
	t.Logf("figure (%s): HAProxy reloaded; the new worker answered with the whole map (%d entries) %s after SIGUSR2", mode, len(want), round(took))
	if err := e.echo(w); err != nil {
		t.Errorf("established websocket after the reload: %v", err)
	} else {
		t.Logf("%s: the websocket opened before the reload still echoes (the old worker keeps it)", mode)
	}
	w2 := e.mustDial(g, "sess-h2")
	if err := e.echo(w2); err != nil {
		t.Error(err)
	}
	w2.Close()

	// Kill: master and worker die at once, as in a crash; a route is written while HAProxy is
	// down.
	master, worker := g.haproxyPids(t)
	_ = syscall.Kill(master, syscall.SIGKILL)
	_ = syscall.Kill(worker, syscall.SIGKILL)
	killed := time.Now()
	if err := e.kv.putRoute(e.ctx, "h6", "sess-h6", stack.LabNodeLAN(1)); err != nil {
		t.Fatal(err)
	}
	restarted := killed
	if attached {
		if err := g.haproxy.Wait(10 * time.Second); err != nil {
			t.Fatal(err)
		}
		restarted = time.Now()
		if err := g.startHAProxy(); err != nil {
			t.Fatal(err)
		}
	}
	var back time.Duration
	took = e.eventually(20*time.Second, "map back after the kill", func() error {
		err := g.hasMap(worker, want)
		if err == nil && back == 0 {
			back = time.Since(restarted)
		}
		if err != nil {
			return err
		}
		m, err := g.showMap(e.ctx)
		if err != nil || m["sess-h6"] == "" {
			return fmt.Errorf("route written while HAProxy was down not in the map (%v)", err)
		}
		return nil
	})
	from := "the kill (the edge restarts it after its back-off)"
	if attached {
		from = "the operator restarted it"
	}
	t.Logf("figure (%s): HAProxy killed (SIGKILL, master and worker); its map was back %s and the route written meanwhile in it %s after %s",
		mode, round(back), round(took+killed.Sub(restarted)), from)
	if err := e.echo(w); err == nil {
		t.Errorf("%s: a websocket of the killed HAProxy still echoes", mode)
	}
	w3 := e.mustDial(g, "sess-h6")
	if err := e.echo(w3); err != nil {
		t.Error(err)
	}
	w3.Close()
	if err := e.probe(g, e.routed("h6", "sess-h6").port); err != nil {
		t.Error(err)
	}
	if !attached {
		stopWhileHAProxyStarts(e, g, want)
	}
	for i := 1; i <= 6; i++ {
		if err := e.kv.deleteRoute(e.ctx, fmt.Sprintf("h%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	e.clean()
}

// hasMap reports why HAProxy does not (yet) answer with a new worker (not old) holding every
// entry of want.
func (g *edge) hasMap(old int, want map[string]string) error {
	pid, err := g.workerPid(g.e.ctx)
	if err != nil {
		return err
	}
	if pid == old {
		return fmt.Errorf("worker %d still answers", pid)
	}
	m, err := g.showMap(g.e.ctx)
	if err != nil {
		return err
	}
	for k, v := range want {
		if m[k] != v {
			return fmt.Errorf("map entry %s = %q, want %q", k, m[k], v)
		}
	}
	return nil
}

// stopWhileHAProxyStarts kills HAProxy once more and stops the edge (SIGTERM, as an upgrade or a
// restart does) as soon as it has started the next one, while the edge is still waiting for it
// to answer: that HAProxy stays and serves the whole map with no edge at all, and the next edge
// process adopts it.
func stopWhileHAProxyStarts(e *env, g *edge, want map[string]string) {
	t := e.t
	t.Helper()
	// The case's edges stop HAProxy with them (the namespace goes with the case); this step
	// needs the default, so an edge killed outright hands HAProxy to one run without the flag.
	args := g.args
	defer func() { g.args = args }()
	g.P.Kill()
	g.args = append(slices.Clone(args), "--haproxy-stop-on-exit=false")
	if err := g.start(); err != nil {
		t.Fatal(err)
	}
	master, worker := g.haproxyPids(t)
	_ = syscall.Kill(master, syscall.SIGKILL)
	_ = syscall.Kill(worker, syscall.SIGKILL)
	var fresh int
	e.eventually(20*time.Second, "the edge starting a new HAProxy", func() error {
		p, err := g.haproxyMaster()
		if err != nil || p == master {
			return fmt.Errorf("haproxy master %d (%v)", p, err)
		}
		fresh = p
		return nil
	})
	if err := g.P.Stop(10 * time.Second); err != nil {
		t.Errorf("edge stop while HAProxy started: %v", err)
	}
	if err := syscall.Kill(fresh, 0); err != nil {
		t.Fatalf("the HAProxy the edge had just started (%d) went down with the edge: %v", fresh, err)
	}
	took := e.eventually(20*time.Second, "the new HAProxy serving the whole map with no edge", func() error {
		return g.hasMap(worker, want)
	})
	t.Logf("figure: edge stopped while the HAProxy it had just started came up; HAProxy %d stayed and served the whole map %s later", fresh, round(took))
	g.args = args
	if err := g.start(); err != nil {
		t.Fatal(err)
	}
	if p, err := g.haproxyMaster(); err != nil || p != fresh {
		t.Errorf("the next edge runs HAProxy %d (%v), want the adopted %d", p, err, fresh)
	}
}
