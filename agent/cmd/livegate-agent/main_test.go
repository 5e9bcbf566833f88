package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/livegate/livegate/pkg/appclient"
	"github.com/livegate/livegate/pkg/appclient/appclienttest"
	"github.com/livegate/livegate/pkg/events"
	"github.com/livegate/livegate/pkg/freeport"
	"github.com/livegate/livegate/pkg/kvstore"
	"github.com/livegate/livegate/pkg/logbuf"
	"github.com/livegate/livegate/pkg/natstest"
	"github.com/livegate/livegate/pkg/poll"
	"github.com/livegate/livegate/pkg/wire"
	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

var agentBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "livegate-agent-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	agentBin = filepath.Join(dir, "livegate-agent")
	build := exec.Command("go", "build", "-o", agentBin, ".")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build livegate-agent:", err)
		os.Exit(1)
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

type agentProc struct {
	t    *testing.T
	cmd  *exec.Cmd
	log  *logbuf.Buffer
	rest string
	app  string
	done chan error
}

func startAgent(t *testing.T, env []string, args ...string) *agentProc {
	t.Helper()
	restPort, appPort := freeport.TCP(t), freeport.TCP(t)
	a := &agentProc{t: t, log: &logbuf.Buffer{}, done: make(chan error, 1),
		rest: fmt.Sprintf("http://127.0.0.1:%d", restPort), app: fmt.Sprintf("http://127.0.0.1:%d", appPort)}
	all := append([]string{"--host=127.0.0.1", fmt.Sprintf("--port=%d", restPort), fmt.Sprintf("--app-addr=127.0.0.1:%d", appPort), "--log-format=json"}, args...)
	a.cmd = exec.Command(agentBin, all...)
	a.cmd.Env = append(os.Environ(), env...)
	a.cmd.Stdout, a.cmd.Stderr = a.log, a.log
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { a.done <- a.cmd.Wait() }()
	t.Cleanup(func() {
		_ = a.cmd.Process.Kill()
		<-a.done
		if t.Failed() {
			t.Logf("agent log:\n%s", a.log.String())
		}
	})
	eventually(t, 10*time.Second, "agent answers startup", func() bool {
		code, _ := a.call("GET", a.rest+"/v1/streaming/startup", "")
		return code == 200
	})
	return a
}

func (a *agentProc) call(method, url, body string) (int, string) {
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		a.t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (a *agentProc) expect(method, path, body string, code int, want string) {
	a.t.Helper()
	gotCode, got := a.call(method, a.rest+path, body)
	if gotCode != code || got != want {
		a.t.Fatalf("%s %s\n got %d %s\nwant %d %s", method, path, gotCode, got, code, want)
	}
}

func (a *agentProc) appEvent(name string) {
	a.t.Helper()
	if code, body := a.call("POST", a.app+"/v1/app/events/"+name, ""); code != 200 {
		a.t.Fatalf("app event %s: %d %s", name, code, body)
	}
}

func (a *agentProc) session() map[string]any {
	a.t.Helper()
	_, body := a.call("GET", a.rest+"/v1/streaming/session", "")
	var v map[string]any
	if err := json.Unmarshal([]byte(body), &v); err != nil {
		a.t.Fatalf("session %q: %v", body, err)
	}
	return v
}

// stream follows the app's event stream.
func (a *agentProc) stream(ctx context.Context) <-chan appclient.Notification {
	a.t.Helper()
	req, _ := http.NewRequestWithContext(ctx, "GET", a.app+"/v1/app/events", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		a.t.Fatal(err)
	}
	a.t.Cleanup(func() { _ = resp.Body.Close() })
	return appclienttest.Events(resp.Body)
}

func next(t *testing.T, ch <-chan appclient.Notification, kind string) string {
	t.Helper()
	select {
	case e, ok := <-ch:
		if !ok {
			t.Fatalf("event stream closed, waiting for %s", kind)
		}
		if e.Event != kind {
			t.Fatalf("app event %s %s, want %s", e.Event, e.Data, kind)
		}
		return string(e.Data)
	case <-time.After(10 * time.Second):
		t.Fatalf("no %s app event", kind)
	}
	return ""
}

func eventually(t *testing.T, within time.Duration, what string, ok func() bool) {
	t.Helper()
	poll.Until(t, within, 25*time.Millisecond, what, ok)
}

type natsRig struct {
	nc *nats.Conn
	js jetstream.JetStream
	b  *kvstore.Buckets
}

func connect(t *testing.T, url string) *natsRig {
	t.Helper()
	nc, js := natstest.Connect(t, url, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := events.EnsureStream(ctx, js); err != nil {
		t.Fatal(err)
	}
	return &natsRig{nc: nc, js: js, b: natstest.Buckets(t, js)}
}

func (n *natsRig) route(t *testing.T, instance string) *livegatev1.Route {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	e, err := n.b.Routes.Get(ctx, instance)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil
	}
	if err != nil {
		t.Logf("get route: %v", err)
		return nil
	}
	r := &livegatev1.Route{}
	if err := wire.Unmarshal(e.Value(), r); err != nil {
		t.Fatal(err)
	}
	return r
}

// received is one event with its headers.
type received struct {
	ev     *livegatev1.Event
	header nats.Header
	data   string
}

// events reads, from the start of the stream, the events of one instance until want have arrived.
func (n *natsRig) events(t *testing.T, pool, instance string, want int) []received {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cons, err := n.js.OrderedConsumer(ctx, events.StreamName, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{events.SubjectPrefix + "." + pool + "." + instance + ".>"},
	})
	if err != nil {
		t.Fatal(err)
	}
	var out []received
	for len(out) < want {
		batch, err := cons.Fetch(want-len(out), jetstream.FetchMaxWait(time.Second))
		if err != nil {
			t.Fatal(err)
		}
		for msg := range batch.Messages() {
			ev, err := events.Decode(msg.Data())
			if err != nil {
				t.Fatal(err)
			}
			if msg.Subject() != events.Subject(pool, instance, ev.Type) {
				t.Errorf("event %s on subject %s", ev.Type, msg.Subject())
			}
			out = append(out, received{ev: ev, header: msg.Headers(), data: string(msg.Data())})
		}
		if ctx.Err() != nil {
			t.Fatalf("%d of %d events arrived: %v", len(out), want, types(out))
		}
	}
	return out
}

func types(rs []received) []string {
	var out []string
	for _, r := range rs {
		out = append(out, events.TypeToken(r.ev.Type)+":"+r.ev.SessionId)
	}
	return out
}

const turnCreds = `{"stunIp":"stun.example.com","stunPort":3478,"username":"stun-user-1","password":"stun-pass-1","privateSharedPort":49100,` +
	`"turnDetails":{"username":"turn-user-1","password":"turn-pass-1","uris":["turns:198.18.0.9:443?transport=tcp","turn:198.18.0.9:3478"],` +
	`"relayProtocol":"TCP","transportPolicy":"ALL","relayLocation":"CSP"}}`

var secrets = []string{"stun-pass-1", "turn-user-1", "turn-pass-1", "198.18.0.9"}

// TestWholeLifecycle walks one session through readiness, credentials, an assigned endpoint, a
// resume and a resume timeout that ends it, and checks the REST answers, the app's event stream,
// the events with their headers, the route key, and that the agent exits 0 and deletes its route.
func TestWholeLifecycle(t *testing.T) {
	srv := natstest.External(t)
	n := connect(t, srv.URL())
	instance := fmt.Sprintf("lga-%d-life", os.Getpid())
	a := startAgent(t, nil, "--nats-url="+srv.URL(), "--instance-id="+instance, "--pool=lgapool", "--session-id=s-1",
		"--signaling-backend=127.0.0.1:30001", "--media-backend=127.0.0.1:30002", "--media-backend=127.0.0.1:30003",
		"--edge-id=edge-1", "--lease-ttl=2s", "--/exts/omni.services.livestream.session/resumeTimeoutSeconds=1")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	appEvents := a.stream(ctx)

	a.expect("GET", "/v1/streaming/startup", "", 200, `{"statusMessage":"Status: Startup endpoint OK"}`)
	a.expect("GET", "/v1/streaming/ready", "", 503, `{"statusMessage":"Status: App not ready"}`)
	if r := n.route(t, instance); r != nil {
		t.Fatalf("route before ready: %v", r)
	}
	a.appEvent("app-ready")
	a.expect("GET", "/v1/streaming/ready", "", 503, `{"statusMessage":"Status: Rtx not ready"}`)
	a.appEvent("rtx-ready")
	a.expect("GET", "/v1/streaming/ready", "", 200, `{"statusMessage":"Status: Ready for connection"}`)

	var route *livegatev1.Route
	eventually(t, 10*time.Second, "route key written", func() bool { route = n.route(t, instance); return route != nil })
	if route.SessionId != "s-1" || route.InstanceId != instance || route.SignalingBackend != "127.0.0.1:30001" ||
		strings.Join(route.MediaBackends, ",") != "127.0.0.1:30002,127.0.0.1:30003" || route.Pool != "lgapool" ||
		route.EdgeId != "edge-1" || route.LeaseTtl.AsDuration() != 2*time.Second || route.RenewedAt == nil {
		t.Errorf("route %v", route)
	}
	first := route.RenewedAt.AsTime()
	eventually(t, 5*time.Second, "route renewed", func() bool {
		r := n.route(t, instance)
		return r != nil && r.RenewedAt.AsTime().After(first)
	})

	a.expect("POST", "/v1/streaming/creds", turnCreds, 200, `{"success":true,"errorMessage":null}`)
	if got := next(t, appEvents, "stun-credentials"); got != turnCreds {
		t.Errorf("app got credentials %s", got)
	}
	if code, got := a.call("GET", a.app+"/v1/app/creds", ""); code != 200 || got != turnCreds {
		t.Errorf("app creds: %d %s", code, got)
	}
	a.expect("POST", "/v1/streaming/creds", `{"stunIp":"stun.example.com","stunPort":99999,"username":"u","password":"p"}`, 400,
		`{"success":false,"errorMessage":"stunPort: must be from 1 to 65535"}`)

	ep := &livegatev1.Endpoint{InstanceId: instance, SessionId: "s-1", EdgeId: "edge-1", PublicHost: "edge-1.example.net",
		PublicIp: "198.18.1.1", SignalingPort: 48322, PublicUdpPorts: []uint32{10500, 10501}, MediaBackends: []string{"127.0.0.1:30002", "127.0.0.1:30003"}}
	val, err := wire.Marshal(ep)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.b.Endpoints.Put(context.Background(), instance, val); err != nil {
		t.Fatal(err)
	}
	if got := next(t, appEvents, "endpoint-assigned"); !strings.Contains(got, `"publicHost":"edge-1.example.net"`) || !strings.Contains(got, `"publicUdpPorts":[10500,10501]`) ||
		!strings.Contains(got, `"publicIp":"198.18.1.1"`) {
		t.Errorf("app got endpoint %s", got)
	}
	eventually(t, 5*time.Second, "endpoint in /session", func() bool { return a.session()["endpoint"] != nil })

	a.appEvent("client-connected")
	a.expect("GET", "/v1/streaming/ready", "", 200, `{"statusMessage":"Status: Streaming session active (keep alive)"}`)
	a.expect("POST", "/v1/streaming/endsession", `{"sessionId":"someone-else","gracefulShutdown":true}`, 409, `{"detail":"sessionId: \"someone-else\" is not the current session"}`)
	a.expect("POST", "/v1/streaming/endsession", `{"sessionId":"s-1","gracefulShutdown":false}`, 200, `{"sessionStatus":"AWAITING_RESUME"}`)
	a.expect("GET", "/v1/streaming/ready", "", 200, `{"statusMessage":"Status: Awaiting session resume (keep alive)"}`)
	a.appEvent("client-connected")
	a.expect("GET", "/v1/streaming/ready", "", 200, `{"statusMessage":"Status: Streaming session active (keep alive)"}`)

	sess := a.session()
	body, _ := json.Marshal(sess)
	for _, s := range secrets {
		if strings.Contains(string(body), s) {
			t.Errorf("/session leaks %q", s)
		}
	}
	_, metricsBody := a.call("GET", a.rest+"/metrics", "")
	for _, s := range secrets {
		if strings.Contains(metricsBody, s) {
			t.Errorf("/metrics leaks %q", s)
		}
	}
	for _, want := range []string{"livegate_agent_ready 1", "livegate_agent_nats_reconnects_total 0", `livegate_build_info{binary="livegate-agent"`, `livegate_agent_lease_renewals_total{result="error"} 0`} {
		if !strings.Contains(metricsBody, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if !strings.Contains(metricsBody, "livegate_agent_ready 1") {
		t.Errorf("metrics: livegate_agent_ready is not 1")
	}

	// The client goes; nobody calls endsession: the resume timer alone ends the session.
	a.appEvent("client-disconnected")
	if got := next(t, appEvents, "session-ended"); got != `{"sessionId":"s-1","reason":"resume_timeout","recycle":true}` {
		t.Errorf("app got session end %s", got)
	}
	select {
	case err := <-a.done:
		a.done <- err
		if err != nil {
			t.Fatalf("agent exited with %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("agent did not exit after the session ended")
	}
	if r := n.route(t, instance); r != nil {
		t.Errorf("route left after exit: %v", r)
	}

	got := n.events(t, "lgapool", instance, 12)
	want := []string{"app_ready:s-1", "rtx_ready:s-1", "ready_for_connection:s-1", "credentials_changed:s-1", "endpoint_assigned:s-1",
		"client_connected:s-1", "session_awaiting_resume:s-1", "client_connected:s-1", "session_resumed:s-1",
		"client_disconnected:s-1", "session_awaiting_resume:s-1", "session_ended:s-1"}
	if strings.Join(types(got), " ") != strings.Join(want, " ") {
		t.Fatalf("events\n got %v\nwant %v", types(got), want)
	}
	for _, r := range got {
		h := r.header
		if h.Get("ce-specversion") != "1.0" || h.Get("ce-id") != r.ev.Id || h.Get("Nats-Msg-Id") != r.ev.Id ||
			h.Get("ce-type") != "dev.livegate.v1."+events.TypeToken(r.ev.Type) || h.Get("ce-source") != "livegate-agent/"+instance {
			t.Errorf("%s headers %v", r.ev.Type, h)
		}
		if _, err := time.Parse(time.RFC3339Nano, h.Get("ce-time")); err != nil {
			t.Errorf("%s ce-time %q", r.ev.Type, h.Get("ce-time"))
		}
		if r.ev.InstanceId != instance || r.ev.Pool != "lgapool" {
			t.Errorf("%s identity %s/%s", r.ev.Type, r.ev.Pool, r.ev.InstanceId)
		}
		for _, s := range secrets {
			if strings.Contains(r.data, s) {
				t.Errorf("event %s leaks %q", r.ev.Type, s)
			}
		}
	}
	cc := got[3].ev.GetCredentialsChanged()
	if cc == nil || !cc.HasTurn || cc.TransportPolicy != "ALL" || cc.RelayLocation != "CSP" {
		t.Errorf("credentials_changed %v", got[3].ev)
	}
	if e := got[4].ev.GetEndpointAssigned(); e == nil || e.PublicHost != "edge-1.example.net" {
		t.Errorf("endpoint_assigned %v", got[4].ev)
	}
	if ar := got[10].ev.GetAwaitingResume(); ar == nil || ar.ResumeTimeout.AsDuration() != time.Second {
		t.Errorf("awaiting_resume %v", got[10].ev)
	}
	if se := got[11].ev.GetSessionEnded(); se == nil || se.Reason != "resume_timeout" || !se.Recycle {
		t.Errorf("session_ended %v", got[11].ev)
	}
	for _, s := range append(secrets, "stun-user-1") {
		if strings.Contains(a.log.String(), s) {
			t.Errorf("agent log leaks %q", s)
		}
	}
}

// TestNATSOutageAndLeaseExpiry serves two sessions on one instance while NATS is down for part of
// the first, checks that every event arrives in order once NATS is back, then kills the agent with
// SIGKILL and watches its route lease run out.
func TestNATSOutageAndLeaseExpiry(t *testing.T) {
	srv := natstest.External(t)
	n := connect(t, srv.URL())
	instance := fmt.Sprintf("lga-%d-outage", os.Getpid())
	a := startAgent(t, []string{"LIVEGATE_AGENT_RESUME_TIMEOUT_SECONDS=0", "LIVEGATE_AGENT_POOL=lgapool"},
		"--nats-url="+srv.URL(), "--instance-id="+instance, "--signaling-backend=127.0.0.1:30001",
		"--media-backend=127.0.0.1:30002", "--lease-ttl=2s", "--/exts/omni.services.livestream.session/quitOnSessionEnded=false")

	a.appEvent("app-ready")
	a.appEvent("rtx-ready")
	id1, _ := a.session()["sessionId"].(string)
	if len(id1) != 22 {
		t.Fatalf("minted session id %q", id1)
	}
	eventually(t, 10*time.Second, "route for the first session", func() bool {
		r := n.route(t, instance)
		return r != nil && r.SessionId == id1
	})
	n.events(t, "lgapool", instance, 3)

	srv.Stop()
	a.appEvent("client-connected")
	a.expect("POST", "/v1/streaming/endsession", `{"sessionId":"`+id1+`","gracefulShutdown":true}`, 200, `{"sessionStatus":"COMPLETE"}`)
	a.expect("GET", "/v1/streaming/ready", "", 503, `{"statusMessage":"Status: Waiting for previous client to disconnect"}`)
	a.expect("POST", "/v1/streaming/endsession", `{"sessionId":"`+id1+`","gracefulShutdown":true}`, 200, `{"sessionStatus":"COMPLETE"}`)
	a.appEvent("client-disconnected")
	a.expect("GET", "/v1/streaming/ready", "", 200, `{"statusMessage":"Status: Ready for connection"}`)
	sess := a.session()
	id2, _ := sess["sessionId"].(string)
	if id2 == "" || id2 == id1 || sess["previousSessionId"] != id1 {
		t.Fatalf("second session %q after %q: %v", id2, id1, sess)
	}
	if nats, _ := sess["nats"].(map[string]any); nats == nil || nats["pendingEvents"].(float64) < 1 {
		t.Errorf("no pending events while NATS is down: %v", sess["nats"])
	}
	srv.Start()

	got := n.events(t, "lgapool", instance, 7)
	want := []string{"app_ready:", "rtx_ready:", "ready_for_connection:" + id1, "client_connected:" + id1,
		"session_ended:" + id1, "client_disconnected:", "ready_for_connection:" + id2}
	if strings.Join(types(got), " ") != strings.Join(want, " ") {
		t.Fatalf("events\n got %v\nwant %v", types(got), want)
	}
	if se := got[4].ev.GetSessionEnded(); se == nil || se.Reason != "graceful" || se.Recycle {
		t.Errorf("session_ended %v", got[4].ev)
	}
	eventually(t, 20*time.Second, "route for the second session", func() bool {
		r := n.route(t, instance)
		return r != nil && r.SessionId == id2
	})

	deleted := make(chan time.Time, 1)
	wctx, stopWatch := context.WithCancel(context.Background())
	defer stopWatch()
	synced := make(chan struct{})
	go func() {
		_ = kvstore.Watch(wctx, n.b.Routes, instance, kvstore.Handler{
			Snapshot: func(map[string]kvstore.Entry) { close(synced) },
			Update: func(e kvstore.Entry) {
				if e.Deleted {
					select {
					case deleted <- time.Now():
					default:
					}
				}
			},
		})
	}()
	<-synced
	if err := a.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	select {
	case at := <-deleted:
		t.Logf("route lease ran out %s after SIGKILL (lease 2s)", at.Sub(killed).Round(10*time.Millisecond))
	case <-time.After(15 * time.Second):
		t.Fatal("route key still there 15s after SIGKILL with a 2s lease")
	}
	if r := n.route(t, instance); r != nil {
		t.Errorf("route after expiry: %v", r)
	}
}

// TestBadSettingsStopStartUp runs the binary with bad settings.
func TestBadSettingsStopStartUp(t *testing.T) {
	for _, tt := range []struct {
		args []string
		env  []string
		want string
	}{
		{[]string{"--/exts/omni.services.transport.server.http/port=0"}, nil, "flag --/exts/omni.services.transport.server.http/port: 0 is not a port"},
		{nil, []string{"LIVEGATE_AGENT_QUIT_ON_SESSION_ENDED=perhaps"}, "environment LIVEGATE_AGENT_QUIT_ON_SESSION_ENDED"},
		{[]string{"--/exts/omni.services.livestream.session/resumeTimeout=3"}, nil, "unknown setting (the Kit-style flags are --/exts/omni.services.livestream.session/quitOnSessionEnded,"},
		// A refused command line points at -h, as the edge's does.
		{[]string{"--prot=1"}, nil, "livegate-agent: command line: flag provided but not defined: -prot\n(`livegate-agent -h` lists the flags)\n"},
		{[]string{"--port=x"}, nil, "livegate-agent: flag --port: value \"x\": want an integer\n(`livegate-agent -h` lists the flags)\n"},
	} {
		cmd := exec.Command(agentBin, append([]string{"--instance-id=lga-bad"}, tt.args...)...)
		cmd.Env = append(os.Environ(), tt.env...)
		out, err := cmd.CombinedOutput()
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 2 {
			t.Errorf("%v %v: %v, want exit status 2", tt.args, tt.env, err)
		}
		if !strings.Contains(string(out), tt.want) {
			t.Errorf("%v %v: output %q lacks %q", tt.args, tt.env, out, tt.want)
		}
	}
}

func (a *agentProc) waitExit(within time.Duration) error {
	a.t.Helper()
	select {
	case err := <-a.done:
		a.done <- err
		return err
	case <-time.After(within):
		a.t.Fatalf("agent still running after %s", within)
	}
	return nil
}

// startReadyAgent starts an agent of instance lga-<pid>-<name> and session s-<name> on a NATS
// server of its own, with a 30 s lease, and has its app report ready.
func startReadyAgent(t *testing.T, name string) (*agentProc, *natsRig, string) {
	t.Helper()
	srv := natstest.External(t)
	n := connect(t, srv.URL())
	instance := fmt.Sprintf("lga-%d-%s", os.Getpid(), name)
	a := startAgent(t, nil, "--nats-url="+srv.URL(), "--instance-id="+instance, "--pool=lgapool", "--session-id=s-"+name,
		"--signaling-backend=127.0.0.1:30001", "--media-backend=127.0.0.1:30002", "--lease-ttl=30s")
	a.appEvent("app-ready")
	a.appEvent("rtx-ready")
	return a, n, instance
}

// TestGracefulEndExits: a graceful endsession is answered in full, then the agent publishes the
// end, deletes its route and exits 0.
func TestGracefulEndExits(t *testing.T) {
	a, n, instance := startReadyAgent(t, "exit")
	a.appEvent("client-connected")
	eventually(t, 10*time.Second, "route written", func() bool { return n.route(t, instance) != nil })
	a.expect("POST", "/v1/streaming/endsession", `{"sessionId":"s-exit","gracefulShutdown":true}`, 200, `{"sessionStatus":"COMPLETE"}`)
	if err := a.waitExit(10 * time.Second); err != nil {
		t.Fatalf("agent exited with %v", err)
	}
	// The lease is 30 s: the key is gone because the agent deleted it, not because it expired.
	if r := n.route(t, instance); r != nil {
		t.Errorf("route left after exit: %v", r)
	}
	got := n.events(t, "lgapool", instance, 5)
	if se := got[4].ev.GetSessionEnded(); se == nil || se.Reason != "graceful" || !se.Recycle {
		t.Errorf("last event %v", got[4].ev)
	}
}

// TestSIGTERM: stopping the agent ends the live session, deletes the route and exits 0.
func TestSIGTERM(t *testing.T) {
	a, n, instance := startReadyAgent(t, "term")
	eventually(t, 10*time.Second, "route written", func() bool { return n.route(t, instance) != nil })
	if err := a.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := a.waitExit(10 * time.Second); err != nil {
		t.Fatalf("agent exited with %v", err)
	}
	if r := n.route(t, instance); r != nil {
		t.Errorf("route left after SIGTERM: %v", r)
	}
	got := n.events(t, "lgapool", instance, 4)
	if se := got[3].ev.GetSessionEnded(); se == nil || se.Reason != "agent_stopped" {
		t.Errorf("last event %v", got[3].ev)
	}
}

// TestExecAction: with exec:COMMAND the agent runs the command and stays up, reporting the end.
func TestExecAction(t *testing.T) {
	marker := filepath.Join(t.TempDir(), "ended")
	a := startAgent(t, nil, "--instance-id=lga-exec", "--session-id=s-x", `--on-session-ended=exec:echo "$LIVEGATE_SESSION_ID $LIVEGATE_END_REASON" > `+marker)
	a.appEvent("app-ready")
	a.appEvent("rtx-ready")
	a.expect("POST", "/v1/streaming/endsession", `{"sessionId":"s-x","gracefulShutdown":true}`, 200, `{"sessionStatus":"COMPLETE"}`)
	eventually(t, 10*time.Second, "command ran", func() bool {
		b, err := os.ReadFile(marker)
		return err == nil && strings.TrimSpace(string(b)) == "s-x graceful"
	})
	a.expect("GET", "/v1/streaming/ready", "", 503, `{"statusMessage":"Status: Streaming session ended (recycle instance)"}`)
}
