package haproxy_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/livegate/livegate/edgeproxy/internal/haproxy"
	"github.com/livegate/livegate/edgeproxy/internal/haproxy/haproxytest"
	"github.com/livegate/livegate/pkg/logbuf"
	"github.com/rs/zerolog"
)

func start(t *testing.T) *haproxytest.Instance {
	t.Helper()
	f := haproxytest.NewFiles(t, haproxytest.Dir(t))
	return haproxytest.Start(t, f.ConfigFor(haproxytest.FreePort(t)), f)
}

func TestRoutingThroughHAProxy(t *testing.T) {
	h := start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	silent := haproxytest.StartBackend(t, "silent", false)
	polite := haproxytest.StartBackend(t, "polite", true)
	if err := h.Driver.Apply(ctx, map[string]string{"sess-a": silent.Addr.String(), "sess-b": polite.Addr.String()}, nil); err != nil {
		t.Fatal(err)
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
			res, err := haproxytest.DialWith(ctx, h.Port, tt.path, tt.protos, tt.header)
			if err != nil {
				t.Fatalf("dial: %v (status %d)", err, res.Status)
			}
			if res.Message != tt.want || res.Subprotocol != tt.wantProt {
				t.Fatalf("got message %q subprotocol %q, want %q %q", res.Message, res.Subprotocol, tt.want, tt.wantProt)
			}
		})
	}
	for _, id := range []string{"unknown", "sess-a;show", "sess-a%0a"} {
		res, err := haproxytest.Dial(ctx, h.Port, "/", id)
		if !errors.Is(err, haproxytest.ErrNotUpgraded) || res.Status != http.StatusNotFound {
			t.Fatalf("session %q: got %v status %d, want 404", id, err, res.Status)
		}
	}
	if err := h.Driver.Apply(ctx, nil, []string{"sess-a"}); err != nil {
		t.Fatal(err)
	}
	if res, err := haproxytest.Dial(ctx, h.Port, "/", "sess-a"); res.Status != http.StatusNotFound {
		t.Fatalf("deleted session: got %v status %d, want 404", err, res.Status)
	}
}

// TestKeepAliveRequestsRouteEach sends requests for two sessions on one client connection: each
// must reach its own backend, never a server connection opened for the other.
func TestKeepAliveRequestsRouteEach(t *testing.T) {
	h := start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a, b := haproxytest.StartBackend(t, "a", false), haproxytest.StartBackend(t, "b", false)
	if err := h.Driver.Apply(ctx, map[string]string{"sa": a.Addr.String(), "sb": b.Addr.String()}, nil); err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, MaxConnsPerHost: 1, MaxIdleConnsPerHost: 1,
	}}
	defer hc.CloseIdleConnections()
	for i, id := range []string{"sa", "sb", "sa", "sb"} {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("https://127.0.0.1:%d/", h.Port), nil)
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

// TestMissesAreRateLimited asks for a session more often than the miss limit allows before its
// route exists, as a client's reconnect loop does: the misses get 404, then 429; once the route
// is live the same address reaches it at once (a known session is never refused), while its
// further misses are still refused.
func TestMissesAreRateLimited(t *testing.T) {
	f := haproxytest.NewFiles(t, haproxytest.Dir(t))
	cfg := f.ConfigFor(haproxytest.FreePort(t))
	cfg.MissLimit = 3
	h := haproxytest.Start(t, cfg, f)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var statuses []int
	for range 6 {
		res, _ := haproxytest.Dial(ctx, h.Port, "/", "soon")
		statuses = append(statuses, res.Status)
	}
	if statuses[0] != http.StatusNotFound || statuses[5] != http.StatusTooManyRequests {
		t.Fatalf("statuses %v: want 404 first and 429 at the end", statuses)
	}
	b := haproxytest.StartBackend(t, "app", false)
	if err := h.Driver.Apply(ctx, map[string]string{"soon": b.Addr.String()}, nil); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if res, err := haproxytest.Dial(ctx, h.Port, "/", "soon"); err != nil || res.Message != "app /" {
			t.Fatalf("request %d for the now known session: %+v %v", i, res, err)
		}
	}
	if res, _ := haproxytest.Dial(ctx, h.Port, "/", "still-unknown"); res.Status != http.StatusTooManyRequests {
		t.Fatalf("a further miss got %d, want 429", res.Status)
	}
}

func TestApplyAndListManyEntries(t *testing.T) {
	h := start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	want := map[string]string{}
	for i := range 9500 {
		want[fmt.Sprintf("s%05d", i)] = fmt.Sprintf("10.%d.%d.%d:%d", i>>16&255, i>>8&255, i&255, 30000+i%2000)
	}
	began := time.Now()
	if err := h.Driver.Apply(ctx, want, nil); err != nil {
		t.Fatal(err)
	}
	t.Logf("9500 entries added in %v", time.Since(began))
	got, err := h.Driver.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) || got["s09499"] != want["s09499"] {
		t.Fatalf("listed %d entries (s09499=%q), want %d", len(got), got["s09499"], len(want))
	}
	// Replace half, delete the rest.
	set := map[string]string{}
	var del []string
	for k := range want {
		if k < "s04750" {
			set[k] = "127.0.0.1:30001"
		} else {
			del = append(del, k)
		}
	}
	began = time.Now()
	if err := h.Driver.Apply(ctx, set, del); err != nil {
		t.Fatal(err)
	}
	t.Logf("4750 replaced and 4750 deleted in %v", time.Since(began))
	got, err = h.Driver.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 4750 || got["s00000"] != "127.0.0.1:30001" {
		t.Fatalf("listed %d entries (s00000=%q), want 4750 replaced", len(got), got["s00000"])
	}
}

func TestSupervisorRestartsHAProxy(t *testing.T) {
	h := start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b := haproxytest.StartBackend(t, "b", false)
	entries := map[string]string{"kept": b.Addr.String()}
	if err := h.Driver.Apply(ctx, entries, nil); err != nil {
		t.Fatal(err)
	}
	if err := haproxy.WriteMapFile(h.MapFile, entries); err != nil {
		t.Fatal(err)
	}
	pid := h.Supervisor.Pid()
	if pid == 0 {
		t.Fatal("no haproxy pid")
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	h.WaitReady(t)
	if np := h.Supervisor.Pid(); np == pid || np == 0 {
		t.Fatalf("pid after restart %d, before %d", np, pid)
	}
	res, err := haproxytest.Dial(ctx, h.Port, "/", "kept")
	if err != nil || res.Message != "b /" {
		t.Fatalf("after restart: %v %+v", err, res)
	}
}

func TestCommandsRefuseInjection(t *testing.T) {
	for _, w := range []string{"", "a b", "a;show info", "a\nshow info", "a#b", "a<<", `a\b`, "a'b"} {
		if _, err := haproxy.NewCommand("set", "map", "/m", w, "1.2.3.4:5"); err == nil {
			t.Errorf("NewCommand accepted %q", w)
		}
	}
	c, err := haproxy.NewCommand("add", "map", "/m")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.WithPayload([][]string{{"ok", "1.2.3.4:5"}, {"bad\nkey", "x"}}); err == nil {
		t.Error("WithPayload accepted a newline")
	}
}

func TestRenderedConfigIsValid(t *testing.T) {
	bin := haproxytest.Binary(t)
	f := haproxytest.NewFiles(t, haproxytest.Dir(t))
	if err := haproxy.WriteMapFile(f.MapFile, map[string]string{"a": "10.0.0.1:30000"}); err != nil {
		t.Fatal(err)
	}
	for _, render := range []func(haproxy.Config) (string, error){haproxy.Render, haproxy.RenderSections} {
		text, err := render(f.ConfigFor(48322))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(text, "global") {
			text = "global\n    stats socket " + f.Socket + " mode 600 level admin\n" + text
		}
		if err := os.WriteFile(f.Config, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(bin, "-c", "-f", f.Config).CombinedOutput()
		if err != nil {
			t.Fatalf("haproxy -c: %v\n%s\n%s", err, out, text)
		}
	}
	bad := f.ConfigFor(48322)
	bad.MapFile = "/tmp/x y"
	if _, err := haproxy.Render(bad); err == nil {
		t.Fatal("Render accepted a map path with a space")
	}
}

// TestApplyKnownTrustsNoBelief: a key believed absent that is there is replaced, not duplicated,
// and a key believed present that is not there is added.
func TestApplyKnownTrustsNoBelief(t *testing.T) {
	h := start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var d haproxy.KnownApplier = h.Driver
	if err := d.Apply(ctx, map[string]string{"there": "127.0.0.1:30001", "gone": "127.0.0.1:30002"}, nil); err != nil {
		t.Fatal(err)
	}
	belief := map[string]string{"missing": "127.0.0.1:30003", "gone": "127.0.0.1:30002"}
	set := map[string]string{"there": "127.0.0.1:30011", "missing": "127.0.0.1:30013", "fresh": "127.0.0.1:30014"}
	if err := d.ApplyKnown(ctx, set, []string{"gone"}, belief); err != nil {
		t.Fatal(err)
	}
	got, err := d.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != fmt.Sprint(set) {
		t.Fatalf("map = %v, want %v", got, set)
	}
	out, err := haproxy.NewClient(h.Socket, 5*time.Second).Exec(ctx, mustCommand(t, "show", "map", h.MapFile))
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(out, " there "); n != 1 {
		t.Fatalf("key believed absent but present appears %d times:\n%s", n, out)
	}
}

func mustCommand(t *testing.T, words ...string) haproxy.Command {
	t.Helper()
	c, err := haproxy.NewCommand(words...)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestSupervisorStoppedWhileStartingLeavesHAProxy stops the supervisor while the HAProxy it has
// just started is not yet answering (its client reaches no socket, so it never does): without
// StopOnExit HAProxy keeps running for the next edge process, as a ready one does.
func TestSupervisorStoppedWhileStartingLeavesHAProxy(t *testing.T) {
	bin := haproxytest.Binary(t)
	f := configured(t)
	sup := haproxy.NewSupervisor(bin, f.Config, f.PidFile, haproxy.NewClient(f.Socket+".absent", time.Second),
		zerolog.New(zerolog.NewTestWriter(t)), haproxy.StopOnExit(false))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sup.Run(ctx) }()
	deadline := time.Now().Add(20 * time.Second)
	for sup.Pid() == 0 {
		if time.Now().After(deadline) {
			cancel()
			t.Fatal("haproxy not started after 20s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	pid := sup.Pid()
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if err := syscall.Kill(pid, 0); err != nil || sup.Pid() != pid {
		t.Fatalf("haproxy %d stopped with its supervisor (pid file names %d): %v", pid, sup.Pid(), err)
	}
}

// TestSupervisorOutputLogOneComponent checks that HAProxy's own lines carry the component key
// once, whatever the supervisor's logger already carries.
func TestSupervisorOutputLogOneComponent(t *testing.T) {
	bin := haproxytest.Binary(t)
	f := configured(t)
	var out logbuf.Buffer
	base := zerolog.New(&out)
	ready := make(chan struct{}, 1)
	sup := haproxy.NewSupervisor(bin, f.Config, f.PidFile, haproxy.NewClient(f.Socket, time.Second),
		base.With().Str("component", "supervisor").Logger(), haproxy.StopOnExit(true),
		haproxy.OutputLog(base.With().Str("component", "haproxy").Logger()),
		haproxy.OnReady(func() { ready <- struct{}{} }))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sup.Run(ctx) }()
	select {
	case <-ready:
	case <-time.After(20 * time.Second):
		t.Fatal("haproxy not ready after 20s")
	}
	cancel()
	<-done
	var lines int
	for _, line := range strings.Split(out.String(), "\n") {
		if !strings.Contains(line, `"component":"haproxy"`) {
			continue
		}
		lines++
		if strings.Count(line, `"component"`) != 1 {
			t.Errorf("line carries component more than once: %s", line)
		}
	}
	if lines == 0 {
		t.Fatalf("no haproxy output logged:\n%s", out.String())
	}
}

// configured lays out the files of an HAProxy the test supervises itself: configuration and map.
func configured(t *testing.T) haproxytest.Files {
	t.Helper()
	f := haproxytest.NewFiles(t, haproxytest.Dir(t))
	text, err := haproxy.Render(f.ConfigFor(haproxytest.FreePort(t)))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f.Config, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := haproxy.WriteMapFile(f.MapFile, nil); err != nil {
		t.Fatal(err)
	}
	return f
}
