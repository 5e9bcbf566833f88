// Package session is the agent's lifecycle state machine: app signals, endsession calls and the
// clock go in; the state, the /v1/streaming/ready answer and the effects (events to publish, the
// route to keep, the resume timer, the recycle action) come out. It does no I/O, so every transition
// is tested with a table.
package session

import (
	"errors"
	"time"

	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Phase is where the current session stands.
type Phase int

const (
	// PhaseIdle: no client has connected to the current session yet.
	PhaseIdle Phase = iota
	// PhaseActive: a client is connected.
	PhaseActive
	// PhaseAwaitingResume: the client left and the resume window is open.
	PhaseAwaitingResume
	// PhaseEnded: the session ended and the instance is to be recycled (quitOnSessionEnded).
	PhaseEnded
	// PhaseWaitingForDisconnect: the session ended, the instance serves another one, but the previous
	// client is still connected.
	PhaseWaitingForDisconnect
)

func (p Phase) String() string {
	switch p {
	case PhaseIdle:
		return "idle"
	case PhaseActive:
		return "active"
	case PhaseAwaitingResume:
		return "awaiting_resume"
	case PhaseEnded:
		return "ended"
	case PhaseWaitingForDisconnect:
		return "waiting_for_disconnect"
	}
	return "unknown"
}

// The /v1/streaming/ready status messages, in the order they are tried.
const (
	MsgAppNotReady          = "Status: App not ready"
	MsgRtxNotReady          = "Status: Rtx not ready"
	MsgSessionReadyMissing  = "Status: Session ready event not received"
	MsgWaitingForDisconnect = "Status: Waiting for previous client to disconnect"
	MsgEnded                = "Status: Streaming session ended (recycle instance)"
	MsgAwaitingResume       = "Status: Awaiting session resume (keep alive)"
	MsgActive               = "Status: Streaming session active (keep alive)"
	MsgReady                = "Status: Ready for connection"
)

// Ready is the answer of /v1/streaming/ready.
type Ready struct {
	Message string
	Code    int
}

// EndStatus is the sessionStatus answered by endsession.
type EndStatus string

// The endsession answers.
const (
	StatusComplete       EndStatus = "COMPLETE"
	StatusAwaitingResume EndStatus = "AWAITING_RESUME"
)

// Reasons a session ends, carried by the session_ended event.
const (
	ReasonGraceful      = "graceful"
	ReasonEndSession    = "endsession"
	ReasonResumeTimeout = "resume_timeout"
	ReasonClientLost    = "client_lost"
	ReasonAgentStopped  = "agent_stopped"
)

// ErrUnknownSession answers an endsession for a session that is not the current one.
var ErrUnknownSession = errors.New("not the current session")

// Config fixes the machine's behaviour for its lifetime.
type Config struct {
	QuitOnSessionEnded       bool
	ResumeTimeout            time.Duration
	WaitForSessionReadyEvent bool
	// SessionID is the first session's id; empty means minted with NewID. Later sessions always get
	// a minted id, so two sessions never share a routing token.
	SessionID string
	// NewID mints a session id.
	NewID func() string
}

// State is everything the machine knows. It holds no secrets.
type State struct {
	AppReady        bool
	RtxReady        bool
	SessionReady    bool
	ClientConnected bool
	Phase           Phase
	// SessionID is the current session's id; empty until the instance is first ready for
	// connection, a client connects or an endsession names it.
	SessionID string
	// PrevSessionID is the last ended session, so a repeated endsession for it is answered.
	PrevSessionID string
	// ResumeDeadline is set while the phase is PhaseAwaitingResume.
	ResumeDeadline time.Time
	// EndReason is why the last session ended.
	EndReason string
	// SessionsEnded counts the sessions that ended.
	SessionsEnded int
}

// Effect is something the adapters must do, in the order given.
type Effect interface{ isEffect() }

// Emit publishes an event. Type, SessionId, Time and details are set; the publisher adds the rest.
type Emit struct{ Event *livegatev1.Event }

// KeepRoute asks for the instance's route to carry SessionID and to be kept alive.
type KeepRoute struct{ SessionID string }

// DropRoute asks for the route to be deleted.
type DropRoute struct{}

// ArmTimer asks for a Tick at At (replacing any armed one).
type ArmTimer struct{ At time.Time }

// DisarmTimer cancels the armed timer.
type DisarmTimer struct{}

// NotifyEnded tells the app that the session ended.
type NotifyEnded struct {
	SessionID string
	Reason    string
	Recycle   bool
}

// Recycle asks for the on-session-ended action (quitOnSessionEnded).
type Recycle struct {
	SessionID string
	Reason    string
}

func (Emit) isEffect()        {}
func (KeepRoute) isEffect()   {}
func (DropRoute) isEffect()   {}
func (ArmTimer) isEffect()    {}
func (DisarmTimer) isEffect() {}
func (NotifyEnded) isEffect() {}
func (Recycle) isEffect()     {}

// Input is something that happened.
type Input int

// The inputs besides endsession.
const (
	AppReady Input = iota + 1
	RtxReady
	SessionReady
	ClientConnected
	ClientDisconnected
	// Tick: the armed timer fired.
	Tick
	// Stop: the agent itself is shutting down.
	Stop
)

func (in Input) String() string {
	switch in {
	case AppReady:
		return "app-ready"
	case RtxReady:
		return "rtx-ready"
	case SessionReady:
		return "session-ready"
	case ClientConnected:
		return "client-connected"
	case ClientDisconnected:
		return "client-disconnected"
	case Tick:
		return "tick"
	case Stop:
		return "stop"
	}
	return "unknown"
}

// Machine is the state machine. It is not safe for concurrent use; the caller serialises.
type Machine struct {
	cfg Config
	now func() time.Time
	st  State
	out []Effect
}

// New starts a machine at the beginning of the first session.
func New(cfg Config, now func() time.Time) *Machine {
	return &Machine{cfg: cfg, now: now, st: State{SessionID: cfg.SessionID}}
}

// State returns a copy of the state.
func (m *Machine) State() State { return m.st }

// Config returns the configuration.
func (m *Machine) Config() Config { return m.cfg }

// Ready is the current /v1/streaming/ready answer.
func (m *Machine) Ready() Ready { return ready(m.cfg, m.st) }

func ready(cfg Config, st State) Ready {
	switch {
	case !st.AppReady:
		return Ready{MsgAppNotReady, 503}
	case !st.RtxReady:
		return Ready{MsgRtxNotReady, 503}
	case cfg.WaitForSessionReadyEvent && !st.SessionReady:
		return Ready{MsgSessionReadyMissing, 503}
	case st.Phase == PhaseWaitingForDisconnect:
		return Ready{MsgWaitingForDisconnect, 503}
	case st.Phase == PhaseEnded:
		return Ready{MsgEnded, 503}
	case st.Phase == PhaseAwaitingResume:
		return Ready{MsgAwaitingResume, 200}
	case st.Phase == PhaseActive:
		return Ready{MsgActive, 200}
	}
	return Ready{MsgReady, 200}
}

// Handle applies one input and returns the effects.
func (m *Machine) Handle(in Input) []Effect {
	return m.step(func() { m.apply(in) })
}

// EndSession applies an endsession call, in the order docs/agent.md (POST /v1/streaming/endsession) gives.
func (m *Machine) EndSession(sessionID string, graceful bool) (EndStatus, []Effect, error) {
	var status EndStatus
	var err error
	effects := m.step(func() { status, err = m.endSession(sessionID, graceful) })
	return status, effects, err
}

func (m *Machine) endSession(id string, graceful bool) (EndStatus, error) {
	st := &m.st
	if st.SessionID == "" && st.Phase != PhaseWaitingForDisconnect && id != st.PrevSessionID {
		// Nobody could have learnt a session id the agent has not published yet, so the caller's
		// is the session's: refusing would leave an instance that can never be recycled.
		st.SessionID = id
	}
	if id != st.SessionID {
		if id == st.PrevSessionID {
			return StatusComplete, nil
		}
		return "", ErrUnknownSession
	}
	switch {
	case st.Phase == PhaseEnded || st.Phase == PhaseWaitingForDisconnect:
		return StatusComplete, nil
	case graceful:
		m.end(ReasonGraceful)
		return StatusComplete, nil
	case st.Phase == PhaseAwaitingResume:
		if !m.now().Before(st.ResumeDeadline) {
			m.end(ReasonResumeTimeout)
			return StatusComplete, nil
		}
		return StatusAwaitingResume, nil
	case m.cfg.ResumeTimeout > 0:
		m.openResumeWindow()
		return StatusAwaitingResume, nil
	}
	m.end(ReasonEndSession)
	return StatusComplete, nil
}

// step runs change and derives the effects that follow from comparing the state before and after:
// ready for connection, the route, the timer; the recycle action always comes last.
func (m *Machine) step(change func()) []Effect {
	before := m.st
	readyBefore := ready(m.cfg, before)
	m.out = nil
	change()
	recycle := -1
	for i, e := range m.out {
		if _, ok := e.(Recycle); ok {
			recycle = i
		}
	}
	var last Effect
	if recycle >= 0 {
		last = m.out[recycle]
		m.out = append(m.out[:recycle], m.out[recycle+1:]...)
	}
	readyAfter := ready(m.cfg, m.st)
	if readyAfter.Message == MsgReady && (readyBefore.Message != MsgReady || m.st.SessionID != before.SessionID) {
		m.ensureSessionID()
		m.emit(livegatev1.EventType_EVENT_TYPE_READY_FOR_CONNECTION, nil)
	}
	wantBefore := readyBefore.Code == 200 && before.SessionID != ""
	wantAfter := readyAfter.Code == 200 && m.st.SessionID != ""
	switch {
	case wantAfter && (!wantBefore || before.SessionID != m.st.SessionID):
		m.out = append(m.out, KeepRoute{SessionID: m.st.SessionID})
	case !wantAfter && wantBefore:
		m.out = append(m.out, DropRoute{})
	}
	armedBefore := before.Phase == PhaseAwaitingResume
	armedAfter := m.st.Phase == PhaseAwaitingResume
	switch {
	case armedAfter && (!armedBefore || !before.ResumeDeadline.Equal(m.st.ResumeDeadline)):
		m.out = append(m.out, ArmTimer{At: m.st.ResumeDeadline})
	case !armedAfter && armedBefore:
		m.out = append(m.out, DisarmTimer{})
	}
	if last != nil {
		m.out = append(m.out, last)
	}
	out := m.out
	m.out = nil
	return out
}

func (m *Machine) apply(in Input) {
	st := &m.st
	switch in {
	case AppReady:
		if !st.AppReady {
			st.AppReady = true
			m.emit(livegatev1.EventType_EVENT_TYPE_APP_READY, nil)
		}
	case RtxReady:
		if !st.RtxReady {
			st.RtxReady = true
			m.emit(livegatev1.EventType_EVENT_TYPE_RTX_READY, nil)
		}
	case SessionReady:
		if !st.SessionReady {
			st.SessionReady = true
			m.emit(livegatev1.EventType_EVENT_TYPE_SESSION_READY, nil)
		}
	case ClientConnected:
		m.clientConnected()
	case ClientDisconnected:
		m.clientDisconnected()
	case Tick:
		if st.Phase == PhaseAwaitingResume && !m.now().Before(st.ResumeDeadline) {
			m.end(ReasonResumeTimeout)
		}
	case Stop:
		if st.Phase != PhaseEnded && st.Phase != PhaseWaitingForDisconnect && st.SessionID != "" {
			m.finish(ReasonAgentStopped, true)
		}
		st.Phase = PhaseEnded
	}
}

func (m *Machine) clientConnected() {
	st := &m.st
	// endsession may open the window while the app still reports the old client, so inside the
	// window any connect resumes.
	if st.Phase == PhaseAwaitingResume {
		st.ClientConnected = true
		st.Phase = PhaseActive
		st.ResumeDeadline = time.Time{}
		m.emit(livegatev1.EventType_EVENT_TYPE_CLIENT_CONNECTED, nil)
		m.emit(livegatev1.EventType_EVENT_TYPE_SESSION_RESUMED, nil)
		return
	}
	if st.ClientConnected {
		return
	}
	st.ClientConnected = true
	switch st.Phase {
	case PhaseIdle:
		st.Phase = PhaseActive
		m.ensureSessionID()
		m.emit(livegatev1.EventType_EVENT_TYPE_CLIENT_CONNECTED, nil)
	default:
		m.emit(livegatev1.EventType_EVENT_TYPE_CLIENT_CONNECTED, nil)
	}
}

func (m *Machine) clientDisconnected() {
	st := &m.st
	if !st.ClientConnected {
		return
	}
	st.ClientConnected = false
	m.emit(livegatev1.EventType_EVENT_TYPE_CLIENT_DISCONNECTED, nil)
	switch st.Phase {
	case PhaseActive:
		if m.cfg.ResumeTimeout > 0 {
			m.openResumeWindow()
		} else {
			m.end(ReasonClientLost)
		}
	case PhaseWaitingForDisconnect:
		st.Phase = PhaseIdle
	}
}

func (m *Machine) openResumeWindow() {
	st := &m.st
	st.Phase = PhaseAwaitingResume
	st.ResumeDeadline = m.now().Add(m.cfg.ResumeTimeout)
	m.emit(livegatev1.EventType_EVENT_TYPE_SESSION_AWAITING_RESUME, &livegatev1.Event{
		Details: &livegatev1.Event_AwaitingResume{AwaitingResume: &livegatev1.AwaitingResume{
			ResumeTimeout: durationpb.New(m.cfg.ResumeTimeout),
			Deadline:      timestamppb.New(st.ResumeDeadline),
		}},
	})
}

// end ends the current session: recycle the instance, or get ready for the next session.
func (m *Machine) end(reason string) {
	st := &m.st
	m.finish(reason, m.cfg.QuitOnSessionEnded)
	if m.cfg.QuitOnSessionEnded {
		st.Phase = PhaseEnded
		m.out = append(m.out, Recycle{SessionID: st.SessionID, Reason: reason})
		return
	}
	st.PrevSessionID = st.SessionID
	st.SessionID = ""
	if m.cfg.WaitForSessionReadyEvent {
		st.SessionReady = false
	}
	if st.ClientConnected {
		st.Phase = PhaseWaitingForDisconnect
	} else {
		st.Phase = PhaseIdle
	}
}

func (m *Machine) finish(reason string, recycle bool) {
	st := &m.st
	st.EndReason = reason
	st.ResumeDeadline = time.Time{}
	st.SessionsEnded++
	m.emit(livegatev1.EventType_EVENT_TYPE_SESSION_ENDED, &livegatev1.Event{
		Details: &livegatev1.Event_SessionEnded{SessionEnded: &livegatev1.SessionEnded{Reason: reason, Recycle: recycle}},
	})
	m.out = append(m.out, NotifyEnded{SessionID: st.SessionID, Reason: reason, Recycle: recycle})
}

func (m *Machine) ensureSessionID() {
	if m.st.SessionID == "" {
		m.st.SessionID = m.cfg.NewID()
	}
}

// emit queues an event of type t; details, when given, carries the oneof to copy.
func (m *Machine) emit(t livegatev1.EventType, details *livegatev1.Event) {
	ev := &livegatev1.Event{Type: t, SessionId: m.st.SessionID, Time: timestamppb.New(m.now())}
	if details != nil {
		ev.Details = details.Details
	}
	m.out = append(m.out, Emit{Event: ev})
}
