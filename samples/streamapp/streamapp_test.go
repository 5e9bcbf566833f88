package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/coder/websocket/wsjson"
	"github.com/livegate/livegate/pkg/appclient/appclienttest"
	"github.com/livegate/livegate/pkg/freeport"
	"github.com/livegate/livegate/pkg/logbuf"
	"github.com/livegate/livegate/pkg/poll"
	"github.com/pion/webrtc/v4"
	"github.com/rs/zerolog"
)

// testVideo makes a one-second test pattern with ffmpeg.
func testVideo(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("ffmpeg"); err != nil {
		t.Skip("ffmpeg not installed (make deps installs it)")
	}
	path := filepath.Join(t.TempDir(), "testsrc.ivf")
	if err := genVideo(t.Context(), path, 1); err != nil {
		t.Fatal(err)
	}
	return path
}

type runningApp struct {
	agent     *appclienttest.Agent
	signaling string
	mediaPort int
	stderr    *logbuf.Buffer
}

// startApp runs the app against a stand-in agent on loopback; the candidate is the media port
// itself, as if the edge forwarded it unchanged.
func startApp(t *testing.T) *runningApp {
	t.Helper()
	video := testVideo(t)
	a := &runningApp{agent: &appclienttest.Agent{}, mediaPort: int(netip.MustParseAddrPort(freeport.UDP(t)).Port()), stderr: &logbuf.Buffer{}}
	a.signaling = fmt.Sprintf("127.0.0.1:%d", freeport.TCP(t))
	agentSrv := httptest.NewServer(a.agent)
	ctx, cancel := context.WithCancel(context.Background())
	exited := make(chan int, 1)
	go func() {
		exited <- run(ctx, []string{"--signaling-addr", a.signaling, "--media-addr", fmt.Sprintf("127.0.0.1:%d", a.mediaPort),
			"--agent-app-addr", strings.TrimPrefix(agentSrv.URL, "http://"), "--video", video, "--log-format", "json", "--log-level", "debug"}, a.stderr)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case code := <-exited:
			if code != 0 {
				t.Errorf("run exited %d", code)
			}
		case <-time.After(15 * time.Second):
			t.Error("app did not stop")
		}
		agentSrv.Close()
		if t.Failed() {
			t.Logf("app log:\n%s", a.stderr.String())
		}
	})
	a.agent.WaitFor(t, "app-ready", "rtx-ready")
	return a
}

func (a *runningApp) assign(session string) {
	a.agent.Send("endpoint-assigned", fmt.Sprintf(
		`{"instanceId":"i1","sessionId":%q,"edgeId":"e1","publicHost":"localhost","publicIp":"127.0.0.1","signalingPort":48322,"publicUdpPorts":[%d],"mediaBackends":["127.0.0.1:%d"]}`,
		session, a.mediaPort, a.mediaPort))
}

// dial opens the signaling websocket of session, waiting for the app to know the session.
func (a *runningApp) dial(t *testing.T, session string) *websocket.Conn {
	t.Helper()
	c, _, err := websocket.Dial(t.Context(), "ws://"+a.signaling+"/sign_in?peer_id=t&version=2",
		&websocket.DialOptions{Subprotocols: []string{"x-nv-sessionid." + session}})
	if err != nil {
		t.Fatalf("dial signaling: %v", err)
	}
	if c.Subprotocol() != "x-nv-sessionid."+session {
		t.Errorf("subprotocol %q not echoed", c.Subprotocol())
	}
	return c
}

func readMessage(t *testing.T, c *websocket.Conn) (message, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	var m message
	err := wsjson.Read(ctx, c, &m)
	return m, err
}

// browser is a pion peer doing what the web client does.
type browser struct {
	pc      *webrtc.PeerConnection
	packets atomic.Int64
	echoes  chan string
	dc      chan *webrtc.DataChannel
}

func newBrowser(t *testing.T) *browser {
	t.Helper()
	var se webrtc.SettingEngine
	se.SetIncludeLoopbackCandidate(true)
	se.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeUDP4})
	pc, err := webrtc.NewAPI(webrtc.WithSettingEngine(se)).NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pc.Close() })
	b := &browser{pc: pc, echoes: make(chan string, 10), dc: make(chan *webrtc.DataChannel, 1)}
	pc.OnTrack(func(tr *webrtc.TrackRemote, _ *webrtc.RTPReceiver) {
		for {
			if _, _, err := tr.ReadRTP(); err != nil {
				return
			}
			b.packets.Add(1)
		}
	})
	pc.OnDataChannel(func(dc *webrtc.DataChannel) {
		dc.OnOpen(func() { b.dc <- dc })
		dc.OnMessage(func(m webrtc.DataChannelMessage) { b.echoes <- string(m.Data) })
	})
	return b
}

// answer takes the offer and sends the answer over c.
func (b *browser) answer(t *testing.T, c *websocket.Conn, offer message) {
	t.Helper()
	if offer.Type != "offer" {
		t.Fatalf("first message %+v, want an offer", offer)
	}
	if !strings.Contains(offer.SDP, "a=ice-lite") {
		t.Error("offer is not ICE-lite")
	}
	if err := b.pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeOffer, SDP: offer.SDP}); err != nil {
		t.Fatal(err)
	}
	ans, err := b.pc.CreateAnswer(nil)
	if err != nil {
		t.Fatal(err)
	}
	gathered := webrtc.GatheringCompletePromise(b.pc)
	if err := b.pc.SetLocalDescription(ans); err != nil {
		t.Fatal(err)
	}
	<-gathered
	if err := wsjson.Write(t.Context(), c, message{Type: "answer", SDP: b.pc.LocalDescription().SDP}); err != nil {
		t.Fatal(err)
	}
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	poll.Until(t, 15*time.Second, 20*time.Millisecond, what, cond)
}

func TestStreamsVideoAndEchoesInput(t *testing.T) {
	a := startApp(t)
	a.assign("sess-1")
	var c *websocket.Conn
	var offer message
	// The notification may reach the app after the dial: a refusal then is expected.
	eventually(t, "the app to take session sess-1", func() bool {
		c = a.dial(t, "sess-1")
		var err error
		if offer, err = readMessage(t, c); err != nil {
			return false
		}
		return true
	})
	// pion repeats the candidate in every media section and for the RTCP component; one address
	// is what counts.
	candidates := map[string]bool{}
	for _, l := range strings.Split(offer.SDP, "\n") {
		if f := strings.Fields(l); len(f) >= 8 && strings.HasPrefix(f[0], "a=candidate:") {
			candidates[f[4]+":"+f[5]+" "+f[7]] = true
		}
	}
	if want := fmt.Sprintf("127.0.0.1:%d host", a.mediaPort); !candidates[want] {
		t.Errorf("candidates %v in the offer, want %s", candidates, want)
	}
	if len(candidates) != 1 {
		t.Errorf("candidates %v in the offer, want one", candidates)
	}
	b := newBrowser(t)
	b.answer(t, c, offer)
	eventually(t, "video packets", func() bool { return b.packets.Load() >= 30 })
	a.agent.WaitFor(t, "app-ready", "rtx-ready", "client-connected")

	dc := <-b.dc
	if err := dc.SendText(`{"kind":"keydown","key":"a","seq":1}`); err != nil {
		t.Fatal(err)
	}
	select {
	case e := <-b.echoes:
		if e != `{"type":"echo","session":"sess-1","input":{"kind":"keydown","key":"a","seq":1}}` {
			t.Errorf("echo %s", e)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no echo")
	}

	a.agent.Send("session-ended", `{"sessionId":"sess-1","reason":"graceful","recycle":false}`)
	_, err := readMessage(t, c)
	var ce websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != websocket.StatusNormalClosure || ce.Reason != "session ended: graceful" {
		t.Errorf("websocket ended with %v, want 1000 session ended: graceful", err)
	}
	a.agent.WaitFor(t, "app-ready", "rtx-ready", "client-connected", "client-disconnected")
}

func TestRefusesOtherSessionsAndBadMessages(t *testing.T) {
	a := startApp(t)
	a.assign("sess-1")
	var c *websocket.Conn
	eventually(t, "the app to take session sess-1", func() bool {
		c = a.dial(t, "sess-1")
		_, err := readMessage(t, c)
		return err == nil
	})

	other := a.dial(t, "sess-2")
	_, err := readMessage(t, other)
	var ce websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != closeNotCurrent || !strings.Contains(ce.Reason, "sess-2 is not this app's current session") {
		t.Errorf("other session: %v, want close %d with a reason", err, closeNotCurrent)
	}

	for _, tc := range []struct{ send, want string }{
		{`{"type":"answer","sdp":"v=0 garbage"}`, "answer: "},
		{`{"type":"answer"}`, "answer: empty sdp"},
		{`not json`, "malformed message"},
		{`{"type":"bogus"}`, `unknown message type "bogus"`},
		{`{"type":"candidate"}`, "candidate: missing candidate"},
	} {
		if err := c.Write(t.Context(), websocket.MessageText, []byte(tc.send)); err != nil {
			t.Fatal(err)
		}
		m, err := readMessage(t, c)
		if err != nil || m.Type != "error" || !strings.Contains(m.Message, tc.want) {
			t.Errorf("after %s: %+v %v, want an error with %q", tc.send, m, err, tc.want)
		}
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{{}, {"--video", "x.ivf", "--media-addr", "nope"}, {"--video", "x.ivf", "stray"},
		{"--video", "x.ivf", "--agent-app-addr", ""}, {"--video", "x.ivf", "--allowed-origins", "a["}, {"gen-video"}, {"gen-video", "-seconds", "0", "x.ivf"}} {
		var stderr bytes.Buffer
		if code := run(t.Context(), args, &stderr); code != 2 {
			t.Errorf("run %v = %d, want 2 (stderr %q)", args, code, stderr.String())
		}
	}
	var stderr bytes.Buffer
	if code := run(t.Context(), []string{"--video", filepath.Join(t.TempDir(), "missing.ivf"), "--agent-app-addr", "127.0.0.1:1"}, &stderr); code != 1 ||
		!strings.Contains(stderr.String(), "missing.ivf") {
		t.Errorf("missing video: %d %q", code, stderr.String())
	}
}

func TestParseIVFRefusesBadFiles(t *testing.T) {
	for name, raw := range map[string][]byte{
		"empty":     nil,
		"not ivf":   []byte("hello world, this is not an ivf file at all"),
		"no frames": append([]byte("DKIF\x00\x00\x20\x00VP80\x80\x02\x68\x01\x1e\x00\x00\x00\x01\x00\x00\x00"), make([]byte, 4)...),
	} {
		if _, err := parseIVF(raw); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestAllowedOrigins(t *testing.T) {
	a := newApp(nil, []string{"portal.example"}, func(string) {}, zerolog.Nop())
	srv := httptest.NewServer(a)
	defer srv.Close()
	dial := func(origin string) (*websocket.Conn, *http.Response, error) {
		return websocket.Dial(t.Context(), "ws"+strings.TrimPrefix(srv.URL, "http")+"/sign_in",
			&websocket.DialOptions{Subprotocols: []string{"x-nv-sessionid.s1"}, HTTPHeader: http.Header{"Origin": {origin}}})
	}
	if _, resp, err := dial("https://evil.example"); err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
		t.Errorf("other origin: %v, want HTTP 403", err)
	}
	c, _, err := dial("https://portal.example")
	if err != nil {
		t.Fatalf("allowed origin: %v", err)
	}
	// Accepted, then refused: the app has no session yet.
	_, err = readMessage(t, c)
	if websocket.CloseStatus(err) != closeNotCurrent {
		t.Errorf("no current session: %v, want close %d", err, closeNotCurrent)
	}
}

func TestCandidateFor(t *testing.T) {
	ep := endpoint{SessionID: "s", PublicIP: "203.0.113.7", PublicUDPPorts: []uint32{10500, 10501},
		MediaBackends: []string{"10.0.0.2:31001", "10.0.0.2:31002"}}
	tests := []struct {
		name   string
		ep     endpoint
		port   int
		direct bool
		want   candidate
		ok     bool
	}{
		{"port of the backend", ep, 31002, false, candidate{"203.0.113.7", 10501}, true},
		{"direct", ep, 31001, true, candidate{"10.0.0.2", 31001}, true},
		{"no backend on the port", ep, 31009, false, candidate{}, false},
		{"direct, no backend on the port", ep, 31009, true, candidate{}, false},
		{"the only port", endpoint{PublicIP: "203.0.113.7", PublicUDPPorts: []uint32{10500}}, 31001, false, candidate{"203.0.113.7", 10500}, true},
		{"no public ip", endpoint{PublicUDPPorts: []uint32{10500}}, 31001, false, candidate{}, false},
	}
	for _, tt := range tests {
		got, err := tt.ep.candidateFor(tt.port, tt.direct)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("%s: %+v, %v; want %+v (ok %t)", tt.name, got, err, tt.want, tt.ok)
		}
	}
}
