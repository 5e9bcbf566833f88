// Package lifecycle runs the session state machine for real: it serialises the inputs from both
// APIs and the timer, carries out the effects (events to the publisher, the route, a real resume
// timer, notifications to the app, the recycle action) and keeps the credentials and the assigned
// endpoint, which the machine never sees.
package lifecycle

import (
	"sync"
	"time"

	"github.com/livegate/livegate/agent/internal/creds"
	"github.com/livegate/livegate/agent/internal/metrics"
	"github.com/livegate/livegate/agent/internal/session"
	"github.com/livegate/livegate/pkg/events"
	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
	"github.com/rs/zerolog"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Publisher takes events and the desired route; both calls must not block.
type Publisher interface {
	// Publish queues ev; it is delivered in order, retried until acknowledged.
	Publish(ev *livegatev1.Event)
	// SetRoute asks for the route to carry sessionID; "" deletes it.
	SetRoute(sessionID string)
}

// Notification kinds on the app's event stream.
const (
	KindSessionEnded     = "session-ended"
	KindStunCredentials  = "stun-credentials"
	KindEndpointAssigned = "endpoint-assigned"
)

// Notification is one message to the app.
type Notification struct {
	Kind string
	Data any
}

// SessionEnded is the data of a session-ended notification.
type SessionEnded struct {
	SessionID string `json:"sessionId"`
	Reason    string `json:"reason"`
	Recycle   bool   `json:"recycle"`
}

// Endpoint is the data of an endpoint-assigned notification and the endpoint in the session view.
type Endpoint struct {
	InstanceID     string    `json:"instanceId"`
	SessionID      string    `json:"sessionId"`
	EdgeID         string    `json:"edgeId"`
	PublicHost     string    `json:"publicHost"`
	PublicIP       string    `json:"publicIp"`
	SignalingPort  uint32    `json:"signalingPort"`
	PublicUDPPorts []uint32  `json:"publicUdpPorts"`
	MediaBackends  []string  `json:"mediaBackends"`
	AssignedAt     time.Time `json:"assignedAt"`
	// Turn is the edge's own TURN relay with this session's credential, when the edge runs one.
	Turn *TurnRelay `json:"turn,omitempty"`
}

// Refusal is an edge's refusal of the current session's route, in the session view.
type Refusal struct {
	EdgeID    string    `json:"edgeId"`
	SessionID string    `json:"sessionId"`
	Reason    string    `json:"reason"`
	RefusedAt time.Time `json:"refusedAt"`
}

// TurnRelay is the edge's TURN relay as the app hands it to the browser (an RTCIceServer:
// urls, username, credential). Credential is left out of everything but the app's loopback API.
type TurnRelay struct {
	URIs       []string  `json:"uris"`
	Username   string    `json:"username"`
	Credential string    `json:"credential,omitempty"`
	ExpiresAt  time.Time `json:"expiresAt"`
}

// String keeps the credential out of any %v that slips into a log.
func (TurnRelay) String() string { return "[turn relay]" }

// GoString does the same for %#v.
func (TurnRelay) GoString() string { return "[turn relay]" }

// Option changes a default of New.
type Option func(*Agent)

// WithClock replaces time.Now.
func WithClock(now func() time.Time) Option { return func(a *Agent) { a.now = now } }

// WithPublisher sends events and the route to p; without it they are only logged.
func WithPublisher(p Publisher) Option { return func(a *Agent) { a.pub = p } }

// WithLogger sets the logger.
func WithLogger(l zerolog.Logger) Option { return func(a *Agent) { a.log = l } }

// WithMetrics records state and counters in m.
func WithMetrics(m *metrics.Metrics) Option { return func(a *Agent) { a.metrics = m } }

// WithRecycle runs f, in its own goroutine, when a session ends and the instance is to be recycled.
func WithRecycle(f func(session.Recycle)) Option { return func(a *Agent) { a.recycle = f } }

// WithIdentity names the instance and its pool in the session view.
func WithIdentity(instanceID, pool string) Option {
	return func(a *Agent) { a.instanceID, a.pool = instanceID, pool }
}

// Agent is the running lifecycle. All methods are safe for concurrent use.
type Agent struct {
	mu         sync.Mutex
	m          *session.Machine
	now        func() time.Time
	pub        Publisher
	log        zerolog.Logger
	metrics    *metrics.Metrics
	recycle    func(session.Recycle)
	instanceID string
	pool       string

	timer    *time.Timer
	creds    *creds.Credentials
	endpoint *livegatev1.Endpoint
	refusal  *Refusal
	subs     map[chan Notification]struct{}
	stopped  bool
}

// New starts the lifecycle at the beginning of the first session.
func New(cfg session.Config, opts ...Option) *Agent {
	a := &Agent{now: time.Now, log: zerolog.Nop(), subs: map[chan Notification]struct{}{}}
	for _, o := range opts {
		o(a)
	}
	a.m = session.New(cfg, a.now)
	a.mu.Lock()
	a.record()
	a.mu.Unlock()
	return a
}

// Signal feeds an app event (or the timer) to the machine.
func (a *Agent) Signal(in session.Input) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.stopped {
		return
	}
	a.log.Debug().Str("input", in.String()).Msg("session input")
	a.apply(a.m.Handle(in))
}

// EndSession answers /v1/streaming/endsession.
func (a *Agent) EndSession(sessionID string, graceful bool) (session.EndStatus, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	status, effects, err := a.m.EndSession(sessionID, graceful)
	if err != nil {
		a.log.Warn().Str("session_id", sessionID).Bool("graceful", graceful).Err(err).Msg("endsession refused")
		return "", err
	}
	a.log.Info().Str("session_id", sessionID).Bool("graceful", graceful).Str("session_status", string(status)).Msg("endsession")
	a.apply(effects)
	return status, nil
}

// Ready is the /v1/streaming/ready answer.
func (a *Agent) Ready() session.Ready {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.m.Ready()
}

// Stop ends a live session because the agent is going away and stops the timer. Later inputs are
// ignored.
func (a *Agent) Stop() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.stopped {
		return
	}
	a.apply(a.m.Handle(session.Stop))
	a.stopped = true
	if a.timer != nil {
		a.timer.Stop()
	}
}

// SetCredentials keeps c for the app, tells the app, and publishes that credentials changed.
func (a *Agent) SetCredentials(c creds.Credentials) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.creds = &c
	sum := c.Summary()
	a.log.Info().Bool("has_turn", sum.HasTurn).Str("transport_policy", sum.TransportPolicy).Str("relay_location", sum.RelayLocation).Msg("credentials set")
	if a.metrics != nil {
		a.metrics.CredsUpdates.Inc()
	}
	a.notify(Notification{Kind: KindStunCredentials, Data: c})
	a.emit(&livegatev1.Event{
		Type:      livegatev1.EventType_EVENT_TYPE_CREDENTIALS_CHANGED,
		SessionId: a.m.State().SessionID,
		Time:      timestamppb.New(a.now()),
		Details: &livegatev1.Event_CredentialsChanged{CredentialsChanged: &livegatev1.CredentialsChanged{
			HasTurn: sum.HasTurn, TransportPolicy: sum.TransportPolicy, RelayLocation: sum.RelayLocation,
		}},
	})
}

// Credentials returns the last credentials set.
func (a *Agent) Credentials() (creds.Credentials, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.creds == nil {
		return creds.Credentials{}, false
	}
	return *a.creds, true
}

// AssignEndpoint takes the edge's endpoint for this instance (nil: none). An endpoint for another
// session is stale and ignored; a repeat of the current one changes nothing.
func (a *Agent) AssignEndpoint(ep *livegatev1.Endpoint) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if ep == nil {
		a.endpoint = nil
		return
	}
	current := a.m.State().SessionID
	if ep.SessionId != current {
		a.log.Debug().Str("endpoint_session_id", ep.SessionId).Str("session_id", current).Msg("endpoint for another session ignored")
		return
	}
	if a.endpoint != nil && proto.Equal(a.endpoint, ep) {
		return
	}
	a.endpoint = proto.Clone(ep).(*livegatev1.Endpoint)
	a.setRefusal(nil)
	a.log.Info().Str("session_id", ep.SessionId).Str("edge_id", ep.EdgeId).Str("public_host", ep.PublicHost).
		Uint32("signaling_port", ep.SignalingPort).Msg("endpoint assigned")
	a.notify(Notification{Kind: KindEndpointAssigned, Data: endpointView(a.endpoint, true)})
	published := proto.Clone(ep).(*livegatev1.Endpoint)
	if published.Turn != nil {
		// The event stream is read beyond this instance: the credential stays with the app.
		published.Turn.Credential = ""
	}
	a.emit(&livegatev1.Event{
		Type:      livegatev1.EventType_EVENT_TYPE_ENDPOINT_ASSIGNED,
		SessionId: current,
		Time:      timestamppb.New(a.now()),
		Details:   &livegatev1.Event_EndpointAssigned{EndpointAssigned: published},
	})
}

// RouteRefused takes an edge's refusal of this instance's route. One about another session is
// stale and ignored; the same edge and reason again changes nothing. It stands until an endpoint
// is assigned or the route changes.
func (a *Agent) RouteRefused(edgeID, sessionID, reason string, at time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	current := a.m.State().SessionID
	if sessionID != current || a.endpoint != nil {
		a.log.Debug().Str("refused_session_id", sessionID).Str("session_id", current).Msg("route refusal for another session or a served route ignored")
		return
	}
	if a.refusal != nil && a.refusal.EdgeID == edgeID && a.refusal.Reason == reason {
		return
	}
	a.log.Warn().Str("session_id", sessionID).Str("edge_id", edgeID).Str("reason", reason).
		Msg("route refused by the edge: the session cannot be reached until the route is fixed")
	if a.metrics != nil {
		a.metrics.RouteRefusals.Inc()
	}
	a.setRefusal(&Refusal{EdgeID: edgeID, SessionID: sessionID, Reason: reason, RefusedAt: at.UTC()})
}

// setRefusal keeps r and its gauge; the caller holds the lock.
func (a *Agent) setRefusal(r *Refusal) {
	a.refusal = r
	if a.metrics != nil {
		v := 0.0
		if r != nil {
			v = 1
		}
		a.metrics.RouteRefused.Set(v)
	}
}

// Subscribe returns a stream of notifications for the app. It starts with what a late subscriber
// must know: the credentials, the endpoint, and the end of the current session if it has ended.
// The channel closes when cancel is called or when the subscriber falls too far behind.
func (a *Agent) Subscribe() (<-chan Notification, func()) {
	a.mu.Lock()
	defer a.mu.Unlock()
	ch := make(chan Notification, 64)
	if a.creds != nil {
		ch <- Notification{Kind: KindStunCredentials, Data: *a.creds}
	}
	if a.endpoint != nil {
		ch <- Notification{Kind: KindEndpointAssigned, Data: endpointView(a.endpoint, true)}
	}
	st := a.m.State()
	if st.Phase == session.PhaseEnded || st.Phase == session.PhaseWaitingForDisconnect {
		id := st.SessionID
		if st.Phase == session.PhaseWaitingForDisconnect {
			id = st.PrevSessionID
		}
		ch <- Notification{Kind: KindSessionEnded, Data: SessionEnded{SessionID: id, Reason: st.EndReason, Recycle: st.Phase == session.PhaseEnded}}
	}
	a.subs[ch] = struct{}{}
	return ch, func() {
		a.mu.Lock()
		defer a.mu.Unlock()
		if _, ok := a.subs[ch]; ok {
			delete(a.subs, ch)
			close(ch)
		}
	}
}

// notify sends n to every subscriber; one that is 64 notifications behind is dropped, and sees its
// channel close, so a stuck app never blocks the agent.
func (a *Agent) notify(n Notification) {
	for ch := range a.subs {
		select {
		case ch <- n:
		default:
			a.log.Warn().Str("kind", n.Kind).Msg("app event stream subscriber too slow, dropped")
			delete(a.subs, ch)
			close(ch)
		}
	}
}

// apply carries out effects in order; the caller holds the lock.
func (a *Agent) apply(effects []session.Effect) {
	for _, e := range effects {
		switch e := e.(type) {
		case session.Emit:
			a.emit(e.Event)
		case session.KeepRoute:
			a.log.Info().Str("session_id", e.SessionID).Msg("route wanted")
			if a.endpoint != nil && a.endpoint.SessionId != e.SessionID {
				a.endpoint = nil
			}
			if a.refusal != nil && a.refusal.SessionID != e.SessionID {
				a.setRefusal(nil)
			}
			if a.pub != nil {
				a.pub.SetRoute(e.SessionID)
			}
		case session.DropRoute:
			a.log.Info().Msg("route dropped")
			a.endpoint = nil
			a.setRefusal(nil)
			if a.pub != nil {
				a.pub.SetRoute("")
			}
		case session.ArmTimer:
			if a.timer != nil {
				a.timer.Stop()
			}
			a.timer = time.AfterFunc(e.At.Sub(a.now()), func() { a.Signal(session.Tick) })
		case session.DisarmTimer:
			if a.timer != nil {
				a.timer.Stop()
				a.timer = nil
			}
		case session.NotifyEnded:
			a.log.Info().Str("session_id", e.SessionID).Str("reason", e.Reason).Bool("recycle", e.Recycle).Msg("session ended")
			if a.metrics != nil {
				a.metrics.SessionsEnded.WithLabelValues(e.Reason).Inc()
			}
			a.notify(Notification{Kind: KindSessionEnded, Data: SessionEnded{SessionID: e.SessionID, Reason: e.Reason, Recycle: e.Recycle}})
		case session.Recycle:
			if a.recycle != nil {
				go a.recycle(e)
			}
		}
	}
	a.record()
}

func (a *Agent) emit(ev *livegatev1.Event) {
	ev.InstanceId, ev.Pool = a.instanceID, a.pool
	a.log.Info().Str("event", events.TypeToken(ev.Type)).Str("session_id", ev.SessionId).Msg("event")
	if a.metrics != nil {
		a.metrics.Events.WithLabelValues(events.TypeToken(ev.Type)).Inc()
	}
	if a.pub != nil {
		a.pub.Publish(ev)
	}
}

var phases = []session.Phase{session.PhaseIdle, session.PhaseActive, session.PhaseAwaitingResume, session.PhaseEnded, session.PhaseWaitingForDisconnect}

// record brings the state gauges up to date; the caller holds the lock.
func (a *Agent) record() {
	if a.metrics == nil {
		return
	}
	ready := 0.0
	if a.m.Ready().Code == 200 {
		ready = 1
	}
	a.metrics.Ready.Set(ready)
	phase := a.m.State().Phase
	for _, p := range phases {
		v := 0.0
		if p == phase {
			v = 1
		}
		a.metrics.Phase.WithLabelValues(p.String()).Set(v)
	}
}

// Endpoint is the current session's endpoint with its TURN credential, for the app's loopback API.
func (a *Agent) Endpoint() (Endpoint, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.endpoint == nil {
		return Endpoint{}, false
	}
	return endpointView(a.endpoint, true), true
}

// endpointView is ep as the app and the session view show it; the TURN credential only withSecret.
func endpointView(ep *livegatev1.Endpoint, withSecret bool) Endpoint {
	v := Endpoint{
		InstanceID: ep.InstanceId, SessionID: ep.SessionId, EdgeID: ep.EdgeId, PublicHost: ep.PublicHost,
		PublicIP: ep.PublicIp, SignalingPort: ep.SignalingPort, PublicUDPPorts: ep.PublicUdpPorts, MediaBackends: ep.MediaBackends,
	}
	if ep.AssignedAt != nil {
		v.AssignedAt = ep.AssignedAt.AsTime()
	}
	if v.PublicUDPPorts == nil {
		v.PublicUDPPorts = []uint32{}
	}
	if v.MediaBackends == nil {
		v.MediaBackends = []string{}
	}
	if t := ep.GetTurn(); t != nil {
		v.Turn = &TurnRelay{URIs: t.GetUris(), Username: t.GetUsername(), ExpiresAt: t.GetExpiresAt().AsTime()}
		if withSecret {
			v.Turn.Credential = t.GetCredential()
		}
	}
	return v
}

// View is the whole state, without secrets, for GET /v1/streaming/session.
type View struct {
	InstanceID        string         `json:"instanceId"`
	Pool              string         `json:"pool"`
	SessionID         string         `json:"sessionId"`
	PreviousSessionID string         `json:"previousSessionId"`
	Phase             string         `json:"phase"`
	StatusMessage     string         `json:"statusMessage"`
	StatusCode        int            `json:"statusCode"`
	AppReady          bool           `json:"appReady"`
	RtxReady          bool           `json:"rtxReady"`
	SessionReady      bool           `json:"sessionReady"`
	ClientConnected   bool           `json:"clientConnected"`
	ResumeDeadline    *time.Time     `json:"resumeDeadline"`
	LastEndReason     string         `json:"lastEndReason"`
	SessionsEnded     int            `json:"sessionsEnded"`
	Settings          ViewSettings   `json:"settings"`
	Credentials       *creds.Summary `json:"credentials"`
	Endpoint          *Endpoint      `json:"endpoint"`
	RouteRefusal      *Refusal       `json:"routeRefusal"`
}

// ViewSettings are the lifecycle settings in the view.
type ViewSettings struct {
	QuitOnSessionEnded       bool `json:"quitOnSessionEnded"`
	ResumeTimeoutSeconds     int  `json:"resumeTimeoutSeconds"`
	WaitForSessionReadyEvent bool `json:"waitForSessionReadyEvent"`
}

// View returns the state for GET /v1/streaming/session.
func (a *Agent) View() View {
	a.mu.Lock()
	defer a.mu.Unlock()
	st := a.m.State()
	cfg := a.m.Config()
	r := a.m.Ready()
	v := View{
		InstanceID: a.instanceID, Pool: a.pool, SessionID: st.SessionID, PreviousSessionID: st.PrevSessionID,
		Phase: st.Phase.String(), StatusMessage: r.Message, StatusCode: r.Code,
		AppReady: st.AppReady, RtxReady: st.RtxReady, SessionReady: st.SessionReady, ClientConnected: st.ClientConnected,
		LastEndReason: st.EndReason, SessionsEnded: st.SessionsEnded,
		Settings: ViewSettings{
			QuitOnSessionEnded:       cfg.QuitOnSessionEnded,
			ResumeTimeoutSeconds:     int(cfg.ResumeTimeout / time.Second),
			WaitForSessionReadyEvent: cfg.WaitForSessionReadyEvent,
		},
	}
	if !st.ResumeDeadline.IsZero() {
		d := st.ResumeDeadline.UTC()
		v.ResumeDeadline = &d
	}
	if a.creds != nil {
		s := a.creds.Summary()
		v.Credentials = &s
	}
	if a.endpoint != nil {
		e := endpointView(a.endpoint, false)
		v.Endpoint = &e
	}
	if a.refusal != nil {
		r := *a.refusal
		v.RouteRefusal = &r
	}
	return v
}
