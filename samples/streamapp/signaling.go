package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
	"github.com/coder/websocket/wsjson"
	"github.com/livegate/livegate/pkg/appclient"
	"github.com/livegate/livegate/pkg/sessionid"
	"github.com/pion/webrtc/v4"
	"github.com/rs/zerolog"
)

// Close codes of the signaling websocket besides the standard ones; browsers show them to the
// page (a refused HTTP upgrade they do not).
const (
	// closeNotCurrent: the session id is not the one the agent says this app serves.
	closeNotCurrent websocket.StatusCode = 4404
	// closeReplaced: a newer client of the same session took over (a reload, a resume).
	closeReplaced websocket.StatusCode = 4409
)

// message is one signaling message, JSON in a websocket text frame; docs/webrtc.md lists them.
type message struct {
	Type      string                   `json:"type"`
	SDP       string                   `json:"sdp,omitempty"`
	Candidate *webrtc.ICECandidateInit `json:"candidate,omitempty"`
	Message   string                   `json:"message,omitempty"`
	// ICEServers, in an offer, are the TURN relays the browser may use: the edge's own, with
	// this session's credential, as an RTCIceServer list.
	ICEServers []iceServer `json:"iceServers,omitempty"`
}

// iceServer is an RTCIceServer.
type iceServer struct {
	URLs       []string `json:"urls"`
	Username   string   `json:"username"`
	Credential string   `json:"credential"`
}

// endpoint is what the app keeps of the agent's endpoint-assigned notification.
type endpoint struct {
	SessionID      string   `json:"sessionId"`
	PublicIP       string   `json:"publicIp"`
	PublicUDPPorts []uint32 `json:"publicUdpPorts"`
	MediaBackends  []string `json:"mediaBackends"`
	// Turn is the edge's TURN relay and this session's credential, when the edge runs one.
	Turn *struct {
		URIs       []string `json:"uris"`
		Username   string   `json:"username"`
		Credential string   `json:"credential"`
	} `json:"turn"`
}

// iceServers are the relays the browser is offered.
func (e endpoint) iceServers() []iceServer {
	if e.Turn == nil || len(e.Turn.URIs) == 0 {
		return nil
	}
	return []iceServer{{URLs: e.Turn.URIs, Username: e.Turn.Username, Credential: e.Turn.Credential}}
}

// candidateFor picks the public port whose media backend is on mediaPort (the ports and backends
// are index-aligned), or the only one. direct picks the media backend itself instead, for a
// browser that reaches the app without the edge (a baseline to measure the edge against).
func (e endpoint) candidateFor(mediaPort int, direct bool) (candidate, error) {
	if direct {
		for _, b := range e.MediaBackends {
			if ap, err := netip.ParseAddrPort(b); err == nil && int(ap.Port()) == mediaPort {
				return candidate{ip: ap.Addr().String(), port: mediaPort}, nil
			}
		}
		return candidate{}, fmt.Errorf("no media backend on port %d in the endpoint", mediaPort)
	}
	if e.PublicIP == "" {
		return candidate{}, errors.New("the edge published no public IP for this session (is its media plane on?)")
	}
	for i, b := range e.MediaBackends {
		if i < len(e.PublicUDPPorts) && strings.HasSuffix(b, fmt.Sprintf(":%d", mediaPort)) {
			return candidate{ip: e.PublicIP, port: int(e.PublicUDPPorts[i])}, nil
		}
	}
	if len(e.PublicUDPPorts) == 1 {
		return candidate{ip: e.PublicIP, port: int(e.PublicUDPPorts[0])}, nil
	}
	return candidate{}, fmt.Errorf("no public UDP port forwards to media port %d", mediaPort)
}

// app serves /sign_in: one client (browser) at a time, for the session the agent assigned.
type app struct {
	media   *mediaServer
	origins []string
	notify  func(event string)
	log     zerolog.Logger

	mu     sync.Mutex
	ep     *endpoint
	active *client
	closed bool
	wg     sync.WaitGroup
}

func newApp(m *mediaServer, origins []string, notify func(string), log zerolog.Logger) *app {
	return &app{media: m, origins: origins, notify: notify, log: log}
}

// agentNotification follows the agent: an endpoint names the current session and its candidate;
// the end of the session ends its client.
func (a *app) agentNotification(n appclient.Notification) {
	switch n.Event {
	case "endpoint-assigned":
		var ep endpoint
		if err := json.Unmarshal(n.Data, &ep); err != nil {
			a.log.Warn().Err(err).Msg("unreadable endpoint from the agent")
			return
		}
		a.mu.Lock()
		a.ep = &ep
		a.mu.Unlock()
		a.log.Info().Str("session_id", ep.SessionID).Str("public_ip", ep.PublicIP).
			Interface("public_udp_ports", ep.PublicUDPPorts).Msg("endpoint assigned")
	case "session-ended":
		var ended struct {
			SessionID string `json:"sessionId"`
			Reason    string `json:"reason"`
		}
		if err := json.Unmarshal(n.Data, &ended); err != nil {
			a.log.Warn().Err(err).Msg("unreadable session end from the agent")
			return
		}
		a.mu.Lock()
		if a.ep != nil && a.ep.SessionID == ended.SessionID {
			a.ep = nil
		}
		c := a.active
		a.mu.Unlock()
		a.log.Info().Str("session_id", ended.SessionID).Str("reason", ended.Reason).Msg("session ended")
		if c != nil && c.sessionID == ended.SessionID {
			c.end(websocket.StatusNormalClosure, "session ended: "+ended.Reason)
		}
	}
}

// relays are the TURN relays of the current endpoint.
func (a *app) relays() []iceServer {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.ep == nil {
		return nil
	}
	return a.ep.iceServers()
}

// closeAll ends the client and refuses new ones, then waits for the client's disconnect to be
// reported.
func (a *app) closeAll() {
	a.mu.Lock()
	a.closed = true
	c := a.active
	a.mu.Unlock()
	if c != nil {
		c.end(websocket.StatusGoingAway, "app shutting down")
	}
	a.wg.Wait()
}

func (a *app) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	log := a.log.With().Str("remote_addr", r.RemoteAddr).Logger()
	id, token := sessionid.FromRequest(r)
	if id == "" {
		http.Error(w, "session id required (subprotocol "+sessionid.SubprotocolPrefix+"<id>)", http.StatusForbidden)
		return
	}
	if err := sessionid.Validate(id); err != nil {
		http.Error(w, "invalid session id", http.StatusBadRequest)
		return
	}
	// The page that opens the websocket is served from anywhere (a portal, a file, the demo),
	// never from the edge's host, so the origin is checked against --allowed-origins only.
	opts := &websocket.AcceptOptions{OriginPatterns: a.origins, InsecureSkipVerify: slices.Contains(a.origins, "*")}
	if token != "" {
		opts.Subprotocols = []string{token}
	}
	ws, err := websocket.Accept(w, r, opts)
	if err != nil {
		log.Warn().Err(err).Msg("websocket handshake failed")
		return
	}
	log = log.With().Str("session_id", id).Str("peer_id", r.URL.Query().Get("peer_id")).Logger()

	a.mu.Lock()
	ep := a.ep
	a.mu.Unlock()
	var cand candidate
	switch {
	case ep == nil || ep.SessionID != id:
		log.Warn().Msg("refused a client of another session")
		_ = ws.Close(closeNotCurrent, fmt.Sprintf("session %s is not this app's current session", id))
		return
	default:
		if cand, err = ep.candidateFor(a.media.port, r.URL.Query().Get("direct") == "1"); err != nil {
			log.Warn().Err(err).Msg("no public candidate")
			_ = ws.Close(websocket.StatusInternalError, err.Error())
			return
		}
	}

	c := &client{app: a, sessionID: id, ws: ws, log: log}
	a.mu.Lock()
	// Checked with the Add under one lock, so closeAll's Wait never misses a client.
	if a.closed {
		a.mu.Unlock()
		_ = ws.Close(websocket.StatusGoingAway, "app shutting down")
		return
	}
	prev := a.active
	a.active = c
	a.wg.Add(1)
	a.mu.Unlock()
	defer a.wg.Done()
	if prev != nil {
		prev.end(closeReplaced, "another client took the session")
	}
	c.run(r.Context(), cand)
	a.mu.Lock()
	if a.active == c {
		a.active = nil
	}
	a.mu.Unlock()
}

// client is one browser: its websocket and peer connection.
type client struct {
	app       *app
	sessionID string
	ws        *websocket.Conn
	log       zerolog.Logger

	mu          sync.Mutex
	connected   bool
	closeCode   websocket.StatusCode
	closeReason string
}

// end stops the client with a close code and reason for the browser. Closing the websocket, not
// cancelling its read, is what delivers the reason: a cancelled read drops the connection.
func (c *client) end(code websocket.StatusCode, reason string) {
	c.mu.Lock()
	first := c.closeCode == 0
	if first {
		c.closeCode, c.closeReason = code, reason
	}
	c.mu.Unlock()
	if first {
		go func() { _ = c.ws.Close(code, reason) }()
	}
}

// peerState turns the peer connection's state into client-connected / client-disconnected.
func (c *client) peerState(s webrtc.PeerConnectionState) {
	c.mu.Lock()
	var event string
	switch {
	case s == webrtc.PeerConnectionStateConnected && !c.connected:
		c.connected, event = true, "client-connected"
	case (s == webrtc.PeerConnectionStateDisconnected || s == webrtc.PeerConnectionStateFailed ||
		s == webrtc.PeerConnectionStateClosed) && c.connected:
		c.connected, event = false, "client-disconnected"
	}
	c.mu.Unlock()
	c.log.Info().Str("state", s.String()).Msg("peer connection state")
	if event != "" {
		c.app.notify(event)
	}
	if s == webrtc.PeerConnectionStateFailed {
		c.end(websocket.StatusNormalClosure, "media connection failed")
	}
}

// gatherTimeout bounds the offer's wait for its candidate; an ICE-lite peer on a mux has it at once.
const gatherTimeout = 5 * time.Second

func (c *client) run(ctx context.Context, cand candidate) {
	err := c.negotiate(ctx, cand)
	c.mu.Lock()
	code, reason := c.closeCode, c.closeReason
	c.mu.Unlock()
	switch {
	case code != 0:
	case websocket.CloseStatus(err) != -1:
		code = websocket.StatusNormalClosure
	case err != nil && !errors.Is(err, context.Canceled):
		code, reason = websocket.StatusInternalError, err.Error()
	default:
		code = websocket.StatusNormalClosure
	}
	c.log.Info().Int("close_status", int(code)).Str("close_reason", reason).Msg("client gone")
	_ = c.ws.Close(code, reason)
}

// negotiate offers the video and the input channel, answers the browser's messages, and returns
// when the websocket or ctx ends; the peer connection is closed by then.
func (c *client) negotiate(ctx context.Context, cand candidate) error {
	pc, err := c.app.media.newPeer(cand)
	if err != nil {
		return err
	}
	defer func() {
		_ = pc.Close()
		c.peerState(webrtc.PeerConnectionStateClosed)
	}()
	pc.OnConnectionStateChange(c.peerState)
	dc, err := pc.CreateDataChannel("input", nil)
	if err != nil {
		return fmt.Errorf("data channel: %w", err)
	}
	dc.OnMessage(func(m webrtc.DataChannelMessage) { c.echo(dc, m) })

	offer, err := pc.CreateOffer(nil)
	if err != nil {
		return fmt.Errorf("create offer: %w", err)
	}
	gathered := webrtc.GatheringCompletePromise(pc)
	if err := pc.SetLocalDescription(offer); err != nil {
		return fmt.Errorf("set local description: %w", err)
	}
	select {
	case <-gathered:
	case <-time.After(gatherTimeout):
		return errors.New("no ICE candidate gathered")
	case <-ctx.Done():
		return ctx.Err()
	}
	if err := wsjson.Write(ctx, c.ws, message{Type: "offer", SDP: pc.LocalDescription().SDP, ICEServers: c.app.relays()}); err != nil {
		return err
	}
	c.log.Info().Str("candidate", fmt.Sprintf("%s:%d", cand.ip, cand.port)).Msg("offer sent")
	for {
		_, raw, err := c.ws.Read(ctx)
		if err != nil {
			return err
		}
		var m message
		if err := json.Unmarshal(raw, &m); err != nil {
			c.reply(ctx, "malformed message: "+err.Error())
			continue
		}
		if err := c.handle(pc, m); err != nil {
			c.log.Warn().Err(err).Str("type", m.Type).Msg("signaling message refused")
			c.reply(ctx, err.Error())
		}
	}
}

// handle applies one message from the browser.
func (c *client) handle(pc *webrtc.PeerConnection, m message) error {
	switch m.Type {
	case "answer":
		if strings.TrimSpace(m.SDP) == "" {
			return errors.New("answer: empty sdp")
		}
		if err := pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeAnswer, SDP: m.SDP}); err != nil {
			return fmt.Errorf("answer: %w", err)
		}
		c.log.Info().Msg("answer applied")
	case "candidate":
		// The app is ICE-lite: it learns the browser's address from its connectivity checks.
		// Browsers hide their host address behind an mDNS name this app does not resolve, so a
		// candidate it cannot use is no error.
		if m.Candidate == nil {
			return errors.New("candidate: missing candidate")
		}
		if m.Candidate.Candidate == "" {
			return nil
		}
		if err := pc.AddICECandidate(*m.Candidate); err != nil {
			c.log.Debug().Err(err).Str("candidate", m.Candidate.Candidate).Msg("browser candidate not used")
		}
	default:
		return fmt.Errorf("unknown message type %q (want answer or candidate)", m.Type)
	}
	return nil
}

// reply tells the browser what was wrong with its message; the session carries on.
func (c *client) reply(ctx context.Context, text string) {
	_ = wsjson.Write(ctx, c.ws, message{Type: "error", Message: text})
}

// echo answers an input event with itself and the session it reached, as a Kit app would act on
// it; the browser times the round trip and can tell whose app answered.
func (c *client) echo(dc *webrtc.DataChannel, m webrtc.DataChannelMessage) {
	var reply []byte
	if json.Valid(m.Data) {
		reply = fmt.Appendf(nil, `{"type":"echo","session":%q,"input":%s}`, c.sessionID, m.Data)
	} else {
		reply = []byte(`{"type":"error","message":"input events are JSON"}`)
	}
	if err := dc.SendText(string(reply)); err != nil {
		c.log.Debug().Err(err).Msg("echo input")
	}
}
