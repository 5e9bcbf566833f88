// Package drivertest is the contract every haproxy.Driver keeps, checked on a real HAProxy: what
// it adds, replaces and deletes is what websocket handshakes reach, in small batches and in bulk,
// what it reads back is what HAProxy holds, the routes come back after HAProxy restarts, and a
// hostile session id or backend changes nothing. Each driver's tests run it with a Harness.
package drivertest

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/livegate/livegate/edgeproxy/internal/haproxy"
	"github.com/livegate/livegate/edgeproxy/internal/haproxy/haproxytest"
)

// Edge is a driver programming a supervised HAProxy whose session map is empty.
type Edge struct {
	HAProxy *haproxytest.Instance
	Driver  haproxy.Driver
	// Persist makes entries survive a restart of HAProxy, as the edge's map-file writer does for
	// a driver that does not write the map file itself; nil when the driver does.
	Persist func(entries map[string]string) error
}

// Harness starts the edges of one driver.
type Harness struct {
	// Start returns an edge whose HAProxy answers, refusing a session it does not know after
	// missLimit misses from one address.
	Start func(t *testing.T, missLimit int) Edge
	// Bulk is how many entries the bulk case adds to the empty map at once.
	Bulk int
}

// Run runs the whole contract, one subtest a case.
func Run(t *testing.T, h Harness) {
	t.Run("Routing", func(t *testing.T) { routing(t, h) })
	t.Run("KeepAliveRequestsRouteEach", func(t *testing.T) { keepAlive(t, h) })
	t.Run("MissesAreRateLimited", func(t *testing.T) { misses(t, h) })
	t.Run("Bulk", func(t *testing.T) { bulk(t, h) })
	t.Run("RestartRecovery", func(t *testing.T) { restart(t, h) })
	t.Run("HostileInput", func(t *testing.T) { hostile(t, h) })
	t.Run("ApplyKnownTrustsNoBelief", func(t *testing.T) { applyKnown(t, h) })
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func apply(t *testing.T, ctx context.Context, d haproxy.Driver, set map[string]string, del []string) {
	t.Helper()
	if err := d.Apply(ctx, set, del); err != nil {
		t.Fatal(err)
	}
}

func list(t *testing.T, ctx context.Context, d haproxy.Driver, want map[string]string) {
	t.Helper()
	got, err := d.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(got, want) {
		t.Fatalf("List = %v, want %v", got, want)
	}
}

// routing adds, replaces and deletes routes and checks where handshakes go, however they name
// their session.
func routing(t *testing.T, h Harness) {
	e := h.Start(t, 1000)
	ctx := ctxFor(t, 30*time.Second)
	silent := haproxytest.StartBackend(t, "silent", false)
	polite := haproxytest.StartBackend(t, "polite", true)
	first := map[string]string{"sess-a": silent.Addr.String(), "sess-b": polite.Addr.String()}
	apply(t, ctx, e.Driver, first, nil)
	list(t, ctx, e.Driver, first)
	tests := []struct {
		name     string
		protos   []string
		header   http.Header
		path     string
		want     string
		wantProt string
	}{
		{"subprotocol, echoed by haproxy", []string{"x-nv-sessionid.sess-a"}, nil, "/sign_in", "silent /sign_in", "x-nv-sessionid.sess-a"},
		{"subprotocol among others", []string{"foo", "x-nv-sessionid.sess-a"}, nil, "/x", "silent /x", "x-nv-sessionid.sess-a"},
		{"subprotocol, echoed by backend", []string{"x-nv-sessionid.sess-b"}, nil, "/", "polite /", "x-nv-sessionid.sess-b"},
		{"header", nil, http.Header{"X-Session-Id": {"sess-b"}}, "/h", "polite /h", ""},
		{"query", nil, nil, "/sign_in?peer_id=1&sessionId=sess-a", "silent /sign_in", ""},
		{"subprotocol wins over header", []string{"x-nv-sessionid.sess-a"}, http.Header{"X-Session-Id": {"sess-b"}}, "/", "silent /", "x-nv-sessionid.sess-a"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := haproxytest.DialWith(ctx, e.HAProxy.Port, tt.path, tt.protos, tt.header)
			if err != nil {
				t.Fatalf("dial: %v (status %d)", err, res.Status)
			}
			if res.Message != tt.want || res.Subprotocol != tt.wantProt {
				t.Fatalf("got message %q subprotocol %q, want %q %q", res.Message, res.Subprotocol, tt.want, tt.wantProt)
			}
		})
	}
	for _, id := range []string{"unknown", "sess-a;show", "sess-a%0a"} {
		res, err := haproxytest.Dial(ctx, e.HAProxy.Port, "/", id)
		if !errors.Is(err, haproxytest.ErrNotUpgraded) || res.Status != http.StatusNotFound {
			t.Fatalf("session %q: got %v status %d, want 404", id, err, res.Status)
		}
	}
	// Re-pointing a session is a replace: the next handshake goes to the new backend.
	apply(t, ctx, e.Driver, map[string]string{"sess-b": silent.Addr.String()}, []string{"sess-a"})
	if res, err := haproxytest.Dial(ctx, e.HAProxy.Port, "/", "sess-a"); res.Status != http.StatusNotFound {
		t.Fatalf("deleted session: got %v status %d, want 404", err, res.Status)
	}
	if res, err := haproxytest.Dial(ctx, e.HAProxy.Port, "/", "sess-b"); err != nil || res.Message != "silent /" {
		t.Fatalf("re-pointed session: %v %+v", err, res)
	}
	list(t, ctx, e.Driver, map[string]string{"sess-b": silent.Addr.String()})
}

// keepAlive sends requests for two sessions on one client connection: each must reach its own
// backend, never a server connection opened for the other.
func keepAlive(t *testing.T, h Harness) {
	e := h.Start(t, 1000)
	ctx := ctxFor(t, 30*time.Second)
	a, b := haproxytest.StartBackend(t, "a", false), haproxytest.StartBackend(t, "b", false)
	apply(t, ctx, e.Driver, map[string]string{"sa": a.Addr.String(), "sb": b.Addr.String()}, nil)
	hc := &http.Client{Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, MaxConnsPerHost: 1, MaxIdleConnsPerHost: 1,
	}}
	defer hc.CloseIdleConnections()
	for i, id := range []string{"sa", "sb", "sa", "sb"} {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("https://127.0.0.1:%d/", e.HAProxy.Port), nil)
		req.Header.Set("X-Session-Id", id)
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if got, want := resp.Header.Get("X-Backend"), id[1:]; got != want {
			t.Fatalf("request %d for %s reached backend %q, want %q", i, id, got, want)
		}
	}
}

// misses asks for a session more often than the miss limit allows before its route exists, as a
// client's reconnect loop does: the misses get 404, then 429; once the route is live the same
// address reaches it at once (a known session is never refused), while its further misses are
// still refused.
func misses(t *testing.T, h Harness) {
	e := h.Start(t, 3)
	ctx := ctxFor(t, 30*time.Second)
	var statuses []int
	for range 6 {
		res, _ := haproxytest.Dial(ctx, e.HAProxy.Port, "/", "soon")
		statuses = append(statuses, res.Status)
	}
	if statuses[0] != http.StatusNotFound || statuses[5] != http.StatusTooManyRequests {
		t.Fatalf("statuses %v: want 404 first and 429 at the end", statuses)
	}
	b := haproxytest.StartBackend(t, "app", false)
	apply(t, ctx, e.Driver, map[string]string{"soon": b.Addr.String()}, nil)
	for i := range 5 {
		if res, err := haproxytest.Dial(ctx, e.HAProxy.Port, "/", "soon"); err != nil || res.Message != "app /" {
			t.Fatalf("request %d for the now known session: %+v %v", i, res, err)
		}
	}
	if res, _ := haproxytest.Dial(ctx, e.HAProxy.Port, "/", "still-unknown"); res.Status != http.StatusTooManyRequests {
		t.Fatalf("a further miss got %d, want 429", res.Status)
	}
}

// entries are n routes named prefix and a number, to backends that differ.
func entries(prefix string, n int) map[string]string {
	m := make(map[string]string, n)
	for i := range n {
		m[fmt.Sprintf("%s%05d", prefix, i)] = fmt.Sprintf("10.%d.%d.%d:%d", i>>16&255, i>>8&255, i&255, 30000+i%2000)
	}
	return m
}

// bulk fills the empty map at once (an edge starting with many routes), adds more to the full
// map, then replaces half of the first set and deletes the rest in one Apply.
func bulk(t *testing.T, h Harness) {
	e := h.Start(t, 1000)
	ctx := ctxFor(t, 60*time.Second)
	first := entries("s", h.Bulk)
	began := time.Now()
	apply(t, ctx, e.Driver, first, nil)
	t.Logf("%d entries added in %v", len(first), time.Since(began))
	list(t, ctx, e.Driver, first)
	more := entries("t", h.Bulk/2)
	apply(t, ctx, e.Driver, more, nil)
	want := maps.Clone(more)
	set := map[string]string{}
	var del []string
	half := fmt.Sprintf("s%05d", h.Bulk/2)
	for k := range first {
		if k < half {
			set[k] = "127.0.0.1:30001"
			want[k] = set[k]
		} else {
			del = append(del, k)
		}
	}
	began = time.Now()
	apply(t, ctx, e.Driver, set, del)
	t.Logf("%d replaced and %d deleted in %v", len(set), len(del), time.Since(began))
	list(t, ctx, e.Driver, want)
	if lines := strings.Count(strings.TrimSpace(e.HAProxy.ShowMap(t, ctx)), "\n") + 1; lines != len(want) {
		t.Fatalf("show map has %d lines, want %d (no duplicates)", lines, len(want))
	}
}

// restart kills HAProxy: its supervisor starts it again, and the routes are back.
func restart(t *testing.T, h Harness) {
	e := h.Start(t, 1000)
	ctx := ctxFor(t, 30*time.Second)
	b := haproxytest.StartBackend(t, "b", false)
	kept := map[string]string{"kept": b.Addr.String()}
	apply(t, ctx, e.Driver, kept, nil)
	if e.Persist != nil {
		if err := e.Persist(kept); err != nil {
			t.Fatal(err)
		}
	}
	pid := e.HAProxy.Supervisor.Pid()
	if pid == 0 {
		t.Fatal("no haproxy pid")
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	e.HAProxy.WaitReady(t)
	if np := e.HAProxy.Supervisor.Pid(); np == pid || np == 0 {
		t.Fatalf("pid after restart %d, before %d", np, pid)
	}
	res, err := haproxytest.Dial(ctx, e.HAProxy.Port, "/", "kept")
	if err != nil || res.Message != "b /" {
		t.Fatalf("after restart: %v %+v", err, res)
	}
	list(t, ctx, e.Driver, kept)
}

// hostile hands the driver session ids and backends that would smuggle commands or are no ids
// at all, as if route validation had been skipped: each Apply is refused as a whole, so the good
// entry beside the bad one is not set (or deleted) either, and HAProxy keeps routing.
func hostile(t *testing.T, h Harness) {
	e := h.Start(t, 1000)
	ctx := ctxFor(t, 30*time.Second)
	b := haproxytest.StartBackend(t, "b", false)
	ok := b.Addr.String()
	good := map[string]string{"good": ok}
	apply(t, ctx, e.Driver, good, nil)
	for _, tt := range []struct{ key, value string }{
		{"s\nshow info", ok}, {"s\rshow info", ok}, {"s x", ok}, {"s;clear map " + e.HAProxy.MapFile, ok}, {"#0", ok}, {"s#", ok},
		{"s", ok + "\nclear map " + e.HAProxy.MapFile}, {"s", ok + " x"}, {"s", ok + ";"}, {"s", ok + "#"}, {"s", "<<"}, {"s<<", ok},
		{"s\x00", ok}, {"s\t", ok}, {"s\\", ok}, {"'s'", ok}, {`"s"`, ok}, {"", ok}, {"s", ""}, {"s\x7f", ok},
	} {
		if err := e.Driver.Apply(ctx, map[string]string{"other": ok, tt.key: tt.value}, nil); err == nil {
			t.Errorf("set %q=%q accepted", tt.key, tt.value)
		}
		if tt.key == "s" {
			continue
		}
		if err := e.Driver.Apply(ctx, nil, []string{"good", tt.key}); err == nil {
			t.Errorf("delete %q accepted", tt.key)
		}
	}
	list(t, ctx, e.Driver, good)
	if res, err := haproxytest.Dial(ctx, e.HAProxy.Port, "/", "good"); err != nil || res.Message != "b /" {
		t.Fatalf("good route after the refusals: %v %+v", err, res)
	}
}

// applyKnown, for a driver that takes the caller's belief: a key believed absent that is there
// is replaced, not duplicated, and a key believed present that is not there is added.
func applyKnown(t *testing.T, h Harness) {
	e := h.Start(t, 1000)
	d, ok := e.Driver.(haproxy.KnownApplier)
	if !ok {
		t.Skip("the driver takes no belief")
	}
	ctx := ctxFor(t, 30*time.Second)
	apply(t, ctx, d, map[string]string{"there": "127.0.0.1:30001", "gone": "127.0.0.1:30002"}, nil)
	belief := map[string]string{"missing": "127.0.0.1:30003", "gone": "127.0.0.1:30002"}
	set := map[string]string{"there": "127.0.0.1:30011", "missing": "127.0.0.1:30013", "fresh": "127.0.0.1:30014"}
	if err := d.ApplyKnown(ctx, set, []string{"gone"}, belief); err != nil {
		t.Fatal(err)
	}
	list(t, ctx, d, set)
	if out := e.HAProxy.ShowMap(t, ctx); strings.Count(out, " there ") != 1 {
		t.Fatalf("key believed absent but present appears %d times:\n%s", strings.Count(out, " there "), out)
	}
}
