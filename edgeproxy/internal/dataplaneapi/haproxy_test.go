package dataplaneapi_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/livegate/livegate/edgeproxy/internal/dataplaneapi"
	"github.com/livegate/livegate/edgeproxy/internal/dataplaneapi/dpatest"
	"github.com/livegate/livegate/edgeproxy/internal/haproxy"
	"github.com/livegate/livegate/edgeproxy/internal/haproxy/haproxytest"
)

// realEdge is a real HAProxy behind the fake Data Plane API: the API's reload starts HAProxy with
// the configuration the driver's transaction built, and its map entry calls are runtime API
// commands on that HAProxy, as the real Data Plane API's are.
type realEdge struct {
	haproxytest.Files
	Port   int
	Srv    *dpatest.Server
	Driver *dataplaneapi.Driver
	Client *haproxy.Client
	sup    *haproxy.Supervisor
	ready  chan struct{}
}

func startReal(t *testing.T, missLimit int) *realEdge {
	t.Helper()
	e := newRealAPI(t)
	cfg := e.ConfigFor(e.Port)
	cfg.MissLimit = missLimit
	proxy, err := dataplaneapi.LivegateProxy(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.Driver, err = dataplaneapi.New(dataplaneapi.Config{URL: e.Srv.URL, User: user, Password: password, Map: dataplaneapi.MapName(e.MapFile), Proxy: &proxy}, fastOpts()...)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// newRealAPI starts the fake Data Plane API whose first reload starts HAProxy with the operator's
// global and defaults sections plus what the transaction built; the map file exists and is empty.
func newRealAPI(t *testing.T) *realEdge {
	t.Helper()
	bin := haproxytest.Binary(t)
	f := haproxytest.NewFiles(t, haproxytest.Dir(t))
	e := &realEdge{Files: f, Port: haproxytest.FreePort(t), ready: make(chan struct{}, 1)}
	full, err := haproxy.Render(f.ConfigFor(e.Port))
	if err != nil {
		t.Fatal(err)
	}
	// The global and defaults sections are the operator's part of the configuration.
	i := strings.Index(full, "\nfrontend ")
	if i < 0 {
		t.Fatal("rendered configuration has no frontend")
	}
	operator := full[:i+1]
	if err := haproxy.WriteMapFile(f.MapFile, nil); err != nil {
		t.Fatal(err)
	}
	e.Client = haproxy.NewClient(f.Socket, 5*time.Second)
	var once sync.Once
	onReload := func(sections string) error {
		if err := os.WriteFile(f.Config, []byte(operator+"\n"+sections), 0o644); err != nil {
			return err
		}
		started := false
		once.Do(func() {
			started = true
			e.sup = haproxy.NewSupervisor(bin, f.Config, f.PidFile, e.Client, zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel),
				haproxy.StopOnExit(true), haproxy.Backoff(50*time.Millisecond, time.Second),
				haproxy.OnReady(func() {
					select {
					case e.ready <- struct{}{}:
					default:
					}
				}))
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { defer close(done); _ = e.sup.Run(ctx) }()
			t.Cleanup(func() { cancel(); <-done })
		})
		if !started {
			return errors.New("this test expects one reload")
		}
		return e.waitReady()
	}
	e.Srv = dpatest.Start(t, dpatest.Options{User: user, Password: password, Maps: dpatest.RuntimeMaps{Client: e.Client, MapsDir: f.Dir}, OnReload: onReload})
	t.Cleanup(func() { checkContract(t, e.Srv) })
	return e
}

func (e *realEdge) waitReady() error {
	select {
	case <-e.ready:
		return nil
	case <-time.After(20 * time.Second):
		return errors.New("haproxy not ready after 20s")
	}
}

func (e *realEdge) showMap(t *testing.T, ctx context.Context) string {
	t.Helper()
	c, err := haproxy.NewCommand("show", "map", e.MapFile)
	if err != nil {
		t.Fatal(err)
	}
	out, err := e.Client.Exec(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// The routing checks of the runtime driver's TestRoutingThroughHAProxy, with the frontend and
// backend set up and the routes programmed through the Data Plane API.
func TestRoutingThroughHAProxy(t *testing.T) {
	e := startReal(t, 1000)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	silent := haproxytest.StartBackend(t, "silent", false)
	polite := haproxytest.StartBackend(t, "polite", true)
	if err := e.Driver.Apply(ctx, map[string]string{"sess-a": silent.Addr.String(), "sess-b": polite.Addr.String()}, nil); err != nil {
		t.Fatal(err)
	}
	live := e.showMap(t, ctx)
	for _, want := range []string{"sess-a " + silent.Addr.String(), "sess-b " + polite.Addr.String()} {
		if !strings.Contains(live, want) {
			t.Fatalf("show map:\n%s\nlacks %q", live, want)
		}
	}
	file, err := os.ReadFile(e.MapFile)
	if err != nil || !strings.Contains(string(file), "sess-b "+polite.Addr.String()) {
		t.Fatalf("map file after force_sync: %q, %v", file, err)
	}
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
			res, err := haproxytest.DialWith(ctx, e.Port, tt.path, tt.protos, tt.header)
			if err != nil {
				t.Fatalf("dial: %v (status %d)", err, res.Status)
			}
			if res.Message != tt.want || res.Subprotocol != tt.wantProt {
				t.Fatalf("got message %q subprotocol %q, want %q %q", res.Message, res.Subprotocol, tt.want, tt.wantProt)
			}
		})
	}
	for _, id := range []string{"unknown", "sess-a;show", "sess-a%0a"} {
		res, err := haproxytest.Dial(ctx, e.Port, "/", id)
		if !errors.Is(err, haproxytest.ErrNotUpgraded) || res.Status != http.StatusNotFound {
			t.Fatalf("session %q: got %v status %d, want 404", id, err, res.Status)
		}
	}
	// Re-pointing a session is a replace: the next handshake goes to the new backend.
	if err := e.Driver.Apply(ctx, map[string]string{"sess-b": silent.Addr.String()}, []string{"sess-a"}); err != nil {
		t.Fatal(err)
	}
	if res, err := haproxytest.Dial(ctx, e.Port, "/", "sess-a"); res.Status != http.StatusNotFound {
		t.Fatalf("deleted session: got %v status %d, want 404", err, res.Status)
	}
	if res, err := haproxytest.Dial(ctx, e.Port, "/", "sess-b"); err != nil || res.Message != "silent /" {
		t.Fatalf("re-pointed session: %v %+v", err, res)
	}
	got, err := e.Driver.List(ctx)
	if err != nil || len(got) != 1 || got["sess-b"] != silent.Addr.String() {
		t.Fatalf("List = %v, %v", got, err)
	}
	if n := count(e.Srv, "startTransaction"); n != 1 {
		t.Fatalf("%d transactions, want 1", n)
	}
}

func TestMissesAreRateLimited(t *testing.T) {
	e := startReal(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := e.Driver.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	var statuses []int
	for range 6 {
		res, _ := haproxytest.Dial(ctx, e.Port, "/", "nope")
		statuses = append(statuses, res.Status)
	}
	if statuses[0] != http.StatusNotFound || statuses[5] != http.StatusTooManyRequests {
		t.Fatalf("statuses %v: want 404 first and 429 at the end", statuses)
	}
}

// TestApplyAndListManyEntries is the runtime driver's test of the same name, scaled down: a
// replace or a delete takes one HTTP call per entry. Adding them all to the empty map takes one
// payload call, which the API makes a new version of the map (prepare, add @ver, commit); adding
// more to a map that holds entries goes entry by entry and keeps what is there.
func TestApplyAndListManyEntries(t *testing.T) {
	e := startReal(t, 1000)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const n = 600
	want := map[string]string{}
	for i := range n {
		want[fmt.Sprintf("s%05d", i)] = fmt.Sprintf("10.%d.%d.%d:%d", i>>16&255, i>>8&255, i&255, 30000+i%2000)
	}
	if err := e.Driver.Apply(ctx, want, nil); err != nil {
		t.Fatal(err)
	}
	got, err := e.Driver.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != n || got["s00599"] != want["s00599"] {
		t.Fatalf("listed %d entries (s00599=%q), want %d", len(got), got["s00599"], n)
	}
	if c := count(e.Srv, "addPayloadRuntimeMap"); c != 1 || count(e.Srv, "addMapEntry") != 0 {
		t.Fatalf("%d payload adds and %d single adds, want 1 and 0", c, count(e.Srv, "addMapEntry"))
	}
	more := routes("t", 400)
	if err := e.Driver.Apply(ctx, more, nil); err != nil {
		t.Fatal(err)
	}
	if got, err = e.Driver.List(ctx); err != nil || len(got) != n+len(more) {
		t.Fatalf("listed %d entries after adding %d, want %d: %v", len(got), len(more), n+len(more), err)
	}
	set := map[string]string{}
	var del []string
	for k := range want {
		if k < "s00300" {
			set[k] = "127.0.0.1:30001"
		} else {
			del = append(del, k)
		}
	}
	if err := e.Driver.Apply(ctx, set, del); err != nil {
		t.Fatal(err)
	}
	got, err = e.Driver.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 700 || got["s00000"] != "127.0.0.1:30001" {
		t.Fatalf("listed %d entries (s00000=%q), want 300 replaced and 400 kept", len(got), got["s00000"])
	}
	if lines := strings.Count(e.showMap(t, ctx), "\n") + 1; lines != 700 {
		t.Fatalf("show map has %d lines, want 700 (no duplicates)", lines)
	}
}

// The runtime driver's TestSupervisorRestartsHAProxy: routes set through the API survive a crash
// of HAProxy because force_sync wrote them to the map file it loads at start.
func TestRoutesSurviveARestart(t *testing.T) {
	e := startReal(t, 1000)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b := haproxytest.StartBackend(t, "b", false)
	if err := e.Driver.Apply(ctx, map[string]string{"kept": b.Addr.String()}, nil); err != nil {
		t.Fatal(err)
	}
	pid := e.sup.Pid()
	if pid == 0 {
		t.Fatal("no haproxy pid")
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := e.waitReady(); err != nil {
		t.Fatal(err)
	}
	if np := e.sup.Pid(); np == pid || np == 0 {
		t.Fatalf("pid after restart %d, before %d", np, pid)
	}
	res, err := haproxytest.Dial(ctx, e.Port, "/", "kept")
	if err != nil || res.Message != "b /" {
		t.Fatalf("after restart: %v %+v", err, res)
	}
}
