package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/livegate/livegate/edgeproxy/internal/haproxy/haproxytest"
	"github.com/livegate/livegate/edgeproxy/internal/tlscert"
	"github.com/livegate/livegate/pkg/freeport"
	"github.com/livegate/livegate/pkg/kvstore"
	"github.com/livegate/livegate/pkg/logbuf"
	"github.com/livegate/livegate/pkg/natstest"
	"github.com/livegate/livegate/pkg/poll"
	"github.com/livegate/livegate/pkg/wire"
	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
)

// childEnv makes the test binary run the edge (`run` with the arguments after "--") instead of
// the tests, so a test can SIGKILL a real edge process.
const childEnv = "LIVEGATE_EDGE_TEST_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "1" {
		args := os.Args[1:]
		for i, a := range args {
			if a == "--" {
				args = args[i+1:]
				break
			}
		}
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		code := RunCommand(Hooks{})(ctx, args, os.Stdout, os.Stderr)
		stop()
		os.Exit(code)
	}
	os.Exit(m.Run())
}

type edgeProc struct {
	t    *testing.T
	args []string
	cmd  *exec.Cmd
	out  *bytes.Buffer
}

func startEdgeProc(t *testing.T, args []string) *edgeProc {
	t.Helper()
	p := &edgeProc{t: t, args: args}
	p.start()
	return p
}

func (p *edgeProc) start() {
	p.t.Helper()
	p.out = &bytes.Buffer{}
	p.cmd = exec.Command(os.Args[0], append([]string{"-test.run=^$", "--"}, p.args...)...)
	p.cmd.Env = append(os.Environ(), childEnv+"=1")
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
	cmd := p.cmd
	p.t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			_ = cmd.Wait()
		}
	})
}

func (p *edgeProc) kill() {
	p.t.Helper()
	if err := p.cmd.Process.Kill(); err != nil {
		p.t.Fatal(err)
	}
	_ = p.cmd.Wait()
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	poll.Until(t, 30*time.Second, 25*time.Millisecond, what, cond)
}

func get(url string) (int, string) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func dial(t *testing.T, port int, id string) (haproxytest.Result, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return haproxytest.Dial(ctx, port, "/sign_in", id)
}

func haproxyPid(t *testing.T, dir string) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "haproxy.pid"))
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

// TestEdgeProcessSurvivesKills runs the real edge binary with a supervised HAProxy and real NATS:
// a route becomes routable, and killing the edge or HAProxy (SIGKILL, separately) loses nothing
// and does not cut an established websocket when the edge dies.
func TestEdgeProcessSurvivesKills(t *testing.T) {
	bin := haproxytest.Binary(t)
	url := natstest.Embedded(t)
	dir := haproxytest.Dir(t)
	sigPort, adminPort := freeport.TCP(t), freeport.TCP(t)
	t.Cleanup(func() {
		if pid := haproxyPid(t, dir); pid > 0 {
			_ = syscall.Kill(pid, syscall.SIGTERM)
			waitFor(t, "haproxy to stop", func() bool { return syscall.Kill(pid, 0) != nil })
		}
	})
	args := []string{
		"--nats-url", url, "--state-dir", dir, "--haproxy-binary", bin, "--tls-self-signed",
		"--public-host", "127.0.0.1", "--signaling-bind", "127.0.0.1", "--signaling-port", strconv.Itoa(sigPort),
		"--admin-addr", fmt.Sprintf("127.0.0.1:%d", adminPort), "--media=off", "--edge-id", "edge-t", "--pool", "p",
		"--backend-cidrs", "127.0.0.0/8", "--backend-ports", "1024-65535", "--heartbeat", "200ms", "--edge-ttl", "2s",
		"--log-format", "json",
	}
	edge := startEdgeProc(t, args)
	admin := fmt.Sprintf("http://127.0.0.1:%d", adminPort)
	waitFor(t, "healthz", func() bool { code, _ := get(admin + "/healthz"); return code == http.StatusOK })

	_, js := natstest.Connect(t, url)
	kv := natstest.Buckets(t, js)
	ctx := context.Background()
	put := func(key, session string, b haproxytest.Backend) {
		data, err := wire.Marshal(&livegatev1.Route{SessionId: session, SignalingBackend: b.Addr.String(), EdgeId: "edge-t"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := kv.Routes.Put(ctx, key, data); err != nil {
			t.Fatal(err)
		}
	}
	routable := func(session, want string) func() bool {
		return func() bool { res, err := dial(t, sigPort, session); return err == nil && res.Message == want }
	}
	b1 := haproxytest.StartBackend(t, "one", false)
	put("i1", "s1", b1)
	waitFor(t, "s1 routable", routable("s1", "one /sign_in"))
	res, err := dial(t, sigPort, "s1")
	if err != nil || res.Subprotocol != "x-nv-sessionid.s1" {
		t.Fatalf("subprotocol not echoed: %+v %v", res, err)
	}
	// The map entry is live before the pass that programmed it records its status.
	waitFor(t, "/v1/routes lists s1", func() bool {
		code, body := get(admin + "/v1/routes")
		return code == http.StatusOK && strings.Contains(body, `"session_id":"s1"`)
	})
	if code, body := get(admin + "/metrics"); code != http.StatusOK || !strings.Contains(body, "livegate_edge_routes_programmed 1") ||
		!strings.Contains(body, "livegate_edge_programming_seconds_bucket") || !strings.Contains(body, "livegate_edge_nats_connected 1") ||
		!strings.Contains(body, "livegate_edge_nats_reconnects_total 0") || !strings.Contains(body, `livegate_build_info{binary="livegate-edgeproxy"`) {
		t.Fatalf("/metrics: %d, lacks the edge metrics", code)
	}

	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	conn, _, err := haproxytest.Open(wctx, sigPort, "/", []string{"x-nv-sessionid.s1"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.CloseNow()
	echo := func(msg string) {
		t.Helper()
		if err := conn.Write(wctx, websocket.MessageText, []byte(msg)); err != nil {
			t.Fatalf("write %q: %v", msg, err)
		}
		if _, got, err := conn.Read(wctx); err != nil || string(got) != msg {
			t.Fatalf("echo of %q: %q %v", msg, got, err)
		}
	}

	// The edge dies: HAProxy keeps serving, the new edge process adopts it.
	hpid := haproxyPid(t, dir)
	edge.kill()
	echo("after edge kill")
	if !routable("s1", "one /sign_in")() {
		t.Fatal("route lost while the edge was down")
	}
	edge.start()
	waitFor(t, "healthz after edge restart", func() bool { code, _ := get(admin + "/healthz"); return code == http.StatusOK })
	if got := haproxyPid(t, dir); got != hpid {
		t.Fatalf("restarted edge started a new haproxy (%d, was %d) instead of adopting it", got, hpid)
	}
	b2 := haproxytest.StartBackend(t, "two", false)
	put("i2", "s2", b2)
	waitFor(t, "s2 routable", routable("s2", "two /sign_in"))
	echo("after edge restart")

	// HAProxy dies: the edge starts it again, and the map comes back whole.
	if err := syscall.Kill(hpid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "new haproxy", func() bool { p := haproxyPid(t, dir); return p != 0 && p != hpid })
	waitFor(t, "s1 routable after haproxy restart", routable("s1", "one /sign_in"))
	waitFor(t, "s2 routable after haproxy restart", routable("s2", "two /sign_in"))

	if err := kv.Routes.Delete(ctx, "i1"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "s1 gone", func() bool {
		res, err := dial(t, sigPort, "s1")
		return errors.Is(err, haproxytest.ErrNotUpgraded) && res.Status == http.StatusNotFound
	})

	// SIGTERM: the edge exits 0 and leaves the data plane serving, so a restart is invisible.
	// (The first websocket went down with the HAProxy killed above.)
	conn2, _, err := haproxytest.Open(wctx, sigPort, "/", []string{"x-nv-sessionid.s2"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn2.CloseNow()
	conn = conn2
	echo("before edge SIGTERM")
	hpid = haproxyPid(t, dir)
	if err := edge.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := edge.cmd.Wait(); err != nil {
		t.Fatalf("edge exit after SIGTERM: %v\n%s", err, edge.out.String())
	}
	if !strings.Contains(edge.out.String(), "stay programmed") {
		t.Errorf("edge did not log that it leaves the data plane programmed:\n%s", edge.out.String())
	}
	if err := syscall.Kill(hpid, 0); err != nil {
		t.Fatalf("haproxy (pid %d, pid file now %d) stopped with the edge: %v\n%s", hpid, haproxyPid(t, dir), err, edge.out.String())
	}
	if !routable("s2", "two /sign_in")() {
		t.Fatal("s2 not routable after the edge stopped")
	}
	echo("after edge SIGTERM")
	if t.Failed() {
		t.Log(edge.out.String())
	}
}

func TestHAProxyConfigCommand(t *testing.T) {
	var out, errOut bytes.Buffer
	code := HAProxyConfigCommand(Hooks{})(context.Background(), []string{"--haproxy-socket", "/run/haproxy/admin.sock", "--haproxy-map", "/etc/haproxy/livegate.map", "--tls-cert", "/etc/haproxy/edge.pem"}, &out, &errOut)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	for _, want := range []string{"frontend livegate_signaling", "backend livegate_sessions", "map(/etc/haproxy/livegate.map)", "crt /etc/haproxy/edge.pem", "stats socket /run/haproxy/admin.sock"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if strings.Contains(out.String(), "\nglobal") {
		t.Error("sections-only output has a global section")
	}
}

func TestCheckConfigCommand(t *testing.T) {
	bin := haproxytest.Binary(t)
	base := []string{"--state-dir", t.TempDir(), "--haproxy-binary", bin, "--tls-self-signed", "--media=off", "--public-host", "edge.example.test"}
	tests := []struct {
		name string
		args []string
		code int
		msg  string
	}{
		{"valid", nil, 0, "configuration OK"},
		{"bad backend cidr", []string{"--backend-cidrs", "10.0.0.0/33"}, 2, "--backend-cidrs"},
		{"bad backend ports", []string{"--backend-ports", "40000-30000"}, 2, "--backend-ports"},
		{"media on without public ip", []string{"--media=on"}, 2, "--public-ip"},
		{"edge id with dot", []string{"--edge-id", "a.b"}, 2, "--edge-id"},
		{"no tls", []string{"--tls-self-signed=false"}, 2, "--tls-cert"},
		{"unknown driver", []string{"--driver", "magic"}, 2, "--driver"},
		{"socket path with space", []string{"--state-dir", "/tmp/a b"}, 2, "socket"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			code := CheckConfigCommand(Hooks{})(context.Background(), append(append([]string{}, base...), tt.args...), &out, &errOut)
			if code != tt.code || !strings.Contains(out.String()+errOut.String(), tt.msg) {
				t.Fatalf("exit %d (want %d), output %q %q, want %q", code, tt.code, out.String(), errOut.String(), tt.msg)
			}
		})
	}
}

func TestFlagHelpers(t *testing.T) {
	for in, want := range map[string]string{"edge-1": "edge-1", "host.example.com": "host-example-com", "a b/c": "a-b-c"} {
		if got := tokenFrom(in); got != want {
			t.Errorf("tokenFrom(%q) = %q, want %q", in, got, want)
		}
	}
	var f embeddedFlag
	for in, want := range map[string]string{"true": DefaultEmbeddedNATS, "127.0.0.1:5222": "127.0.0.1:5222", "false": ""} {
		if err := f.Set(in); err != nil || f.addr != want {
			t.Errorf("Set(%q) = %q, %v; want %q", in, f.addr, err, want)
		}
	}
	if err := f.Set("nonsense"); err == nil {
		t.Error("Set accepted a bad address")
	}
}

// TestEmbeddedNATSInProcess runs the edge in-process with --nats-embedded and
// --haproxy-stop-on-exit: a single host needs no broker, and HAProxy goes when the edge does.
func TestEmbeddedNATSInProcess(t *testing.T) {
	e := startInProcessEdge(t, "solo")
	b := haproxytest.StartBackend(t, "solo", true)
	e.putPoolRoute(t, "i-solo", "solo-1", b)
	waitFor(t, "pool route claimed and routable", func() bool {
		res, err := dial(t, e.sigPort, "solo-1")
		return err == nil && res.Message == "solo /sign_in" && res.Subprotocol == "x-nv-sessionid.solo-1"
	})
	pid := haproxyPid(t, e.dir)
	e.stop()
	if pid == 0 || syscall.Kill(pid, 0) == nil && !exited(pid) {
		t.Fatalf("haproxy %d still running after the edge stopped with --haproxy-stop-on-exit", pid)
	}
}

// exited reports a process gone or a zombie.
func exited(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	i := bytes.LastIndexByte(b, ')')
	return i < 0 || i+2 >= len(b) || b[i+2] == 'Z'
}

// TestAttachedMode runs an operator's HAProxy configured with the haproxy-config output, and the
// edge attached to it through --haproxy-socket.
func TestAttachedMode(t *testing.T) {
	bin := haproxytest.Binary(t)
	dir := haproxytest.Dir(t)
	natsURL := natstest.Embedded(t)
	sigPort, adminPort := freeport.TCP(t), freeport.TCP(t)
	sock, mapFile, cert := filepath.Join(dir, "op.sock"), filepath.Join(dir, "op.map"), filepath.Join(dir, "op.pem")
	if err := tlscert.SelfSigned(cert, []string{"127.0.0.1"}, time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(mapFile, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	common := []string{"--haproxy-socket", sock, "--haproxy-map", mapFile, "--tls-cert", cert,
		"--signaling-bind", "127.0.0.1", "--signaling-port", strconv.Itoa(sigPort)}
	var sections, errOut bytes.Buffer
	if code := HAProxyConfigCommand(Hooks{})(context.Background(), common, &sections, &errOut); code != 0 {
		t.Fatalf("haproxy-config: %d %s", code, errOut.String())
	}
	cfg := filepath.Join(dir, "operator.cfg")
	operator := "global\n    stats socket " + sock + " mode 600 level admin\n\ndefaults\n    mode http\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n\n" + sections.String()
	if err := os.WriteFile(cfg, []byte(operator), 0o644); err != nil {
		t.Fatal(err)
	}
	hap := exec.Command(bin, "-W", "-db", "-f", cfg)
	var hapOut logbuf.Buffer
	hap.Stdout, hap.Stderr = &hapOut, &hapOut
	if err := hap.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = hap.Process.Signal(syscall.SIGTERM); _ = hap.Wait() })

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	var logs logbuf.Buffer
	go func() {
		done <- RunCommand(Hooks{})(ctx, append([]string{
			"--nats-url", natsURL, "--state-dir", dir, "--admin-addr", fmt.Sprintf("127.0.0.1:%d", adminPort),
			"--media=off", "--edge-id", "attached", "--backend-cidrs", "127.0.0.0/8", "--backend-ports", "1024-65535", "--log-format", "json",
		}, common...), io.Discard, &logs)
	}()
	t.Cleanup(func() { cancel(); <-done })
	admin := fmt.Sprintf("http://127.0.0.1:%d", adminPort)
	waitFor(t, "healthz", func() bool { code, _ := get(admin + "/healthz"); return code == http.StatusOK })

	_, js := natstest.Connect(t, natsURL)
	kv, err := js.KeyValue(ctx, kvstore.RoutesBucket)
	if err != nil {
		t.Fatal(err)
	}
	b := haproxytest.StartBackend(t, "op", false)
	data, err := wire.Marshal(&livegatev1.Route{SessionId: "op-1", SignalingBackend: b.Addr.String(), EdgeId: "attached"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "i-op", data); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "route through the operator's haproxy", func() bool {
		res, err := dial(t, sigPort, "op-1")
		return err == nil && res.Message == "op /sign_in" && res.Subprotocol == "x-nv-sessionid.op-1"
	})
	waitFor(t, "map file written", func() bool {
		m, err := os.ReadFile(mapFile)
		return err == nil && strings.Contains(string(m), "op-1 "+b.Addr.String())
	})
	if _, err := os.Stat(filepath.Join(dir, "haproxy.pid")); err == nil {
		t.Fatal("attached edge started its own haproxy")
	}
	if t.Failed() {
		t.Log(logs.String(), hapOut.String())
	}
}

// TestReadableSecretWarned checks that check-config (and run, which shares the check) warns
// about a secret file every user may read, and not about one only its owner reads.
func TestReadableSecretWarned(t *testing.T) {
	bin := haproxytest.Binary(t)
	dir := t.TempDir()
	for mode, warned := range map[os.FileMode]bool{0o644: true, 0o600: false, 0o640: false} {
		seed := filepath.Join(dir, fmt.Sprintf("seed-%o.nk", mode))
		if err := os.WriteFile(seed, []byte("SUAEXAMPLE\n"), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(seed, mode); err != nil {
			t.Fatal(err)
		}
		var out, errOut bytes.Buffer
		args := []string{"--state-dir", t.TempDir(), "--haproxy-binary", bin, "--tls-self-signed", "--media=off", "--public-host", "edge.example.test", "--nats-nkey", seed}
		if code := CheckConfigCommand(Hooks{})(context.Background(), args, &out, &errOut); code != 0 {
			t.Fatalf("mode %o: exit %d: %s", mode, code, errOut.String())
		}
		if got := strings.Contains(errOut.String(), "warning: flag --nats-nkey: "+seed+" is readable by every user"); got != warned {
			t.Errorf("mode %o: warned %v, want %v: %q", mode, got, warned, errOut.String())
		}
	}
}
