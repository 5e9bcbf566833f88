package session

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// step is one input, an endsession call or a clock advance.
type step struct {
	in       Input
	end      bool
	id       string
	graceful bool
	advance  time.Duration
}

func in(i Input) step                          { return step{in: i} }
func endsession(id string, graceful bool) step { return step{end: true, id: id, graceful: graceful} }
func wait(d time.Duration) step                { return step{advance: d} }

type rig struct {
	m   *Machine
	now time.Time
}

func newRig(cfg Config) *rig {
	r := &rig{now: t0}
	n := 0
	cfg.NewID = func() string { n++; return fmt.Sprintf("id%d", n) }
	r.m = New(cfg, func() time.Time { return r.now })
	return r
}

func (r *rig) run(t *testing.T, s step) (EndStatus, error, []string) {
	t.Helper()
	switch {
	case s.advance > 0:
		r.now = r.now.Add(s.advance)
		return "", nil, nil
	case s.end:
		st, eff, err := r.m.EndSession(s.id, s.graceful)
		return st, err, render(eff)
	default:
		return "", nil, render(r.m.Handle(s.in))
	}
}

// render writes effects compactly; times are relative to t0.
func render(effects []Effect) []string {
	out := []string{}
	for _, e := range effects {
		switch e := e.(type) {
		case Emit:
			ev := e.Event
			s := strings.ToLower(strings.TrimPrefix(ev.Type.String(), "EVENT_TYPE_")) + ":" + ev.SessionId
			switch d := ev.Details.(type) {
			case *livegatev1.Event_SessionEnded:
				s += fmt.Sprintf("(%s,recycle=%v)", d.SessionEnded.Reason, d.SessionEnded.Recycle)
			case *livegatev1.Event_AwaitingResume:
				s += fmt.Sprintf("(%s,deadline=+%s)", d.AwaitingResume.ResumeTimeout.AsDuration(), d.AwaitingResume.Deadline.AsTime().Sub(t0))
			}
			out = append(out, s)
		case KeepRoute:
			out = append(out, "route:"+e.SessionID)
		case DropRoute:
			out = append(out, "drop-route")
		case ArmTimer:
			out = append(out, "arm:+"+e.At.Sub(t0).String())
		case DisarmTimer:
			out = append(out, "disarm")
		case NotifyEnded:
			out = append(out, fmt.Sprintf("notify-ended:%s:%s:%v", e.SessionID, e.Reason, e.Recycle))
		case Recycle:
			out = append(out, "recycle:"+e.SessionID+":"+e.Reason)
		default:
			out = append(out, fmt.Sprintf("%T", e))
		}
	}
	return out
}

var (
	quit     = Config{QuitOnSessionEnded: true, ResumeTimeout: 30 * time.Second}
	quitNoRe = Config{QuitOnSessionEnded: true}
	stay     = Config{ResumeTimeout: 30 * time.Second}
	stayNoRe = Config{}
	waitSR   = Config{QuitOnSessionEnded: true, ResumeTimeout: 30 * time.Second, WaitForSessionReadyEvent: true}
	stayWait = Config{WaitForSessionReadyEvent: true}
	fixedID  = Config{QuitOnSessionEnded: true, ResumeTimeout: 30 * time.Second, SessionID: "s1"}

	ready1    = []step{in(AppReady), in(RtxReady)}
	active1   = []step{in(AppReady), in(RtxReady), in(ClientConnected)}
	awaiting1 = []step{in(AppReady), in(RtxReady), in(ClientConnected), in(ClientDisconnected)}
)

func seq(parts ...[]step) []step {
	var out []step
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func TestTransitions(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		setup   []step
		do      step
		effects []string
		status  EndStatus
		err     error
		ready   string
		phase   Phase
		session string
	}{
		// Initialisation.
		{name: "app-ready first", cfg: quit, do: in(AppReady),
			effects: []string{"app_ready:"}, ready: MsgRtxNotReady},
		{name: "app-ready twice", cfg: quit, setup: []step{in(AppReady)}, do: in(AppReady),
			effects: []string{}, ready: MsgRtxNotReady},
		{name: "rtx-ready before app", cfg: quit, do: in(RtxReady),
			effects: []string{"rtx_ready:"}, ready: MsgAppNotReady},
		{name: "rtx-ready after app: ready for connection, minted id", cfg: quit, setup: []step{in(AppReady)}, do: in(RtxReady),
			effects: []string{"rtx_ready:", "ready_for_connection:id1", "route:id1"}, ready: MsgReady, session: "id1"},
		{name: "app-ready after rtx: ready for connection", cfg: quit, setup: []step{in(RtxReady)}, do: in(AppReady),
			effects: []string{"app_ready:", "ready_for_connection:id1", "route:id1"}, ready: MsgReady, session: "id1"},
		{name: "rtx-ready twice", cfg: quit, setup: ready1, do: in(RtxReady),
			effects: []string{}, ready: MsgReady, session: "id1"},
		{name: "fixed session id", cfg: fixedID, setup: []step{in(AppReady)}, do: in(RtxReady),
			effects: []string{"rtx_ready:s1", "ready_for_connection:s1", "route:s1"}, ready: MsgReady, session: "s1"},
		{name: "session ready event required", cfg: waitSR, setup: []step{in(AppReady)}, do: in(RtxReady),
			effects: []string{"rtx_ready:"}, ready: MsgSessionReadyMissing},
		{name: "session ready event arrives", cfg: waitSR, setup: ready1, do: in(SessionReady),
			effects: []string{"session_ready:", "ready_for_connection:id1", "route:id1"}, ready: MsgReady, session: "id1"},
		{name: "session ready event before app", cfg: waitSR, do: in(SessionReady),
			effects: []string{"session_ready:"}, ready: MsgAppNotReady},
		{name: "session ready event not required", cfg: quit, setup: ready1, do: in(SessionReady),
			effects: []string{"session_ready:id1"}, ready: MsgReady, session: "id1"},
		{name: "session ready twice", cfg: waitSR, setup: seq(ready1, []step{in(SessionReady)}), do: in(SessionReady),
			effects: []string{}, ready: MsgReady, session: "id1"},

		// Clients.
		{name: "client connects when ready", cfg: quit, setup: ready1, do: in(ClientConnected),
			effects: []string{"client_connected:id1"}, ready: MsgActive, phase: PhaseActive, session: "id1"},
		{name: "client connects before app ready: id minted, no route", cfg: quit, do: in(ClientConnected),
			effects: []string{"client_connected:id1"}, ready: MsgAppNotReady, phase: PhaseActive, session: "id1"},
		{name: "app becomes ready under a connected client", cfg: quit, setup: []step{in(ClientConnected), in(AppReady)}, do: in(RtxReady),
			effects: []string{"rtx_ready:id1", "route:id1"}, ready: MsgActive, phase: PhaseActive, session: "id1"},
		{name: "client connects twice", cfg: quit, setup: active1, do: in(ClientConnected),
			effects: []string{}, ready: MsgActive, phase: PhaseActive, session: "id1"},
		{name: "client disconnect without connect", cfg: quit, setup: ready1, do: in(ClientDisconnected),
			effects: []string{}, ready: MsgReady, session: "id1"},
		{name: "client lost: resume window opens", cfg: quit, setup: active1, do: in(ClientDisconnected),
			effects: []string{"client_disconnected:id1", "session_awaiting_resume:id1(30s,deadline=+30s)", "arm:+30s"},
			ready:   MsgAwaitingResume, phase: PhaseAwaitingResume, session: "id1"},
		{name: "client lost without resume, quit", cfg: quitNoRe, setup: active1, do: in(ClientDisconnected),
			effects: []string{"client_disconnected:id1", "session_ended:id1(client_lost,recycle=true)", "notify-ended:id1:client_lost:true", "drop-route", "recycle:id1:client_lost"},
			ready:   MsgEnded, phase: PhaseEnded, session: "id1"},
		{name: "client lost without resume, next session", cfg: stayNoRe, setup: active1, do: in(ClientDisconnected),
			effects: []string{"client_disconnected:id1", "session_ended:id1(client_lost,recycle=false)", "notify-ended:id1:client_lost:false", "ready_for_connection:id2", "route:id2"},
			ready:   MsgReady, phase: PhaseIdle, session: "id2"},
		{name: "window opened by endsession, old client leaves", cfg: quit, setup: seq(active1, []step{endsession("id1", false)}), do: in(ClientDisconnected),
			effects: []string{"client_disconnected:id1"}, ready: MsgAwaitingResume, phase: PhaseAwaitingResume, session: "id1"},
		{name: "window opened by endsession, client reconnects", cfg: quit, setup: seq(active1, []step{endsession("id1", false)}), do: in(ClientConnected),
			effects: []string{"client_connected:id1", "session_resumed:id1", "disarm"}, ready: MsgActive, phase: PhaseActive, session: "id1"},
		{name: "client lost twice", cfg: quit, setup: awaiting1, do: in(ClientDisconnected),
			effects: []string{}, ready: MsgAwaitingResume, phase: PhaseAwaitingResume, session: "id1"},
		{name: "client resumes", cfg: quit, setup: awaiting1, do: in(ClientConnected),
			effects: []string{"client_connected:id1", "session_resumed:id1", "disarm"}, ready: MsgActive, phase: PhaseActive, session: "id1"},

		// The resume timer.
		{name: "tick before deadline", cfg: quit, setup: seq(awaiting1, []step{wait(29 * time.Second)}), do: in(Tick),
			effects: []string{}, ready: MsgAwaitingResume, phase: PhaseAwaitingResume, session: "id1"},
		{name: "tick at deadline, quit", cfg: quit, setup: seq(awaiting1, []step{wait(30 * time.Second)}), do: in(Tick),
			effects: []string{"session_ended:id1(resume_timeout,recycle=true)", "notify-ended:id1:resume_timeout:true", "drop-route", "disarm", "recycle:id1:resume_timeout"},
			ready:   MsgEnded, phase: PhaseEnded, session: "id1"},
		{name: "tick at deadline, next session", cfg: stay, setup: seq(awaiting1, []step{wait(31 * time.Second)}), do: in(Tick),
			effects: []string{"session_ended:id1(resume_timeout,recycle=false)", "notify-ended:id1:resume_timeout:false", "ready_for_connection:id2", "route:id2", "disarm"},
			ready:   MsgReady, phase: PhaseIdle, session: "id2"},
		{name: "stray tick", cfg: quit, setup: active1, do: in(Tick),
			effects: []string{}, ready: MsgActive, phase: PhaseActive, session: "id1"},

		// endsession, in the documented order.
		{name: "graceful, quit", cfg: quit, setup: active1, do: endsession("id1", true), status: StatusComplete,
			effects: []string{"session_ended:id1(graceful,recycle=true)", "notify-ended:id1:graceful:true", "drop-route", "recycle:id1:graceful"},
			ready:   MsgEnded, phase: PhaseEnded, session: "id1"},
		{name: "graceful, client still connected, next session", cfg: stay, setup: active1, do: endsession("id1", true), status: StatusComplete,
			effects: []string{"session_ended:id1(graceful,recycle=false)", "notify-ended:id1:graceful:false", "drop-route"},
			ready:   MsgWaitingForDisconnect, phase: PhaseWaitingForDisconnect},
		{name: "previous client disconnects: next session", cfg: stay, setup: seq(active1, []step{endsession("id1", true)}), do: in(ClientDisconnected),
			effects: []string{"client_disconnected:", "ready_for_connection:id2", "route:id2"}, ready: MsgReady, phase: PhaseIdle, session: "id2"},
		{name: "previous client reconnects while waiting", cfg: stay, setup: seq(active1, []step{endsession("id1", true), in(ClientDisconnected)}), do: in(ClientConnected),
			effects: []string{"client_connected:id2"}, ready: MsgActive, phase: PhaseActive, session: "id2"},
		{name: "graceful, next session needs a fresh session-ready", cfg: stayWait, setup: seq(active1, []step{in(SessionReady)}), do: endsession("id1", true), status: StatusComplete,
			effects: []string{"session_ended:id1(graceful,recycle=false)", "notify-ended:id1:graceful:false", "drop-route"},
			ready:   MsgSessionReadyMissing, phase: PhaseWaitingForDisconnect},
		{name: "fresh session-ready while previous client connected", cfg: stayWait, setup: seq(active1, []step{in(SessionReady), endsession("id1", true)}), do: in(SessionReady),
			effects: []string{"session_ready:"}, ready: MsgWaitingForDisconnect, phase: PhaseWaitingForDisconnect},
		{name: "previous client gone, session-ready still missing", cfg: stayWait, setup: seq(active1, []step{in(SessionReady), endsession("id1", true)}), do: in(ClientDisconnected),
			effects: []string{"client_disconnected:"}, ready: MsgSessionReadyMissing, phase: PhaseIdle},
		{name: "fresh session-ready: next session", cfg: stayWait, setup: seq(active1, []step{in(SessionReady), endsession("id1", true), in(ClientDisconnected)}), do: in(SessionReady),
			effects: []string{"session_ready:", "ready_for_connection:id2", "route:id2"}, ready: MsgReady, phase: PhaseIdle, session: "id2"},
		{name: "not graceful: open the window", cfg: quit, setup: active1, do: endsession("id1", false), status: StatusAwaitingResume,
			effects: []string{"session_awaiting_resume:id1(30s,deadline=+30s)", "arm:+30s"}, ready: MsgAwaitingResume, phase: PhaseAwaitingResume, session: "id1"},
		{name: "not graceful, window open", cfg: quit, setup: seq(awaiting1, []step{wait(10 * time.Second)}), do: endsession("id1", false), status: StatusAwaitingResume,
			effects: []string{}, ready: MsgAwaitingResume, phase: PhaseAwaitingResume, session: "id1"},
		{name: "not graceful, window run out before the timer", cfg: quit, setup: seq(awaiting1, []step{wait(30 * time.Second)}), do: endsession("id1", false), status: StatusComplete,
			effects: []string{"session_ended:id1(resume_timeout,recycle=true)", "notify-ended:id1:resume_timeout:true", "drop-route", "disarm", "recycle:id1:resume_timeout"},
			ready:   MsgEnded, phase: PhaseEnded, session: "id1"},
		{name: "graceful inside the window", cfg: quit, setup: awaiting1, do: endsession("id1", true), status: StatusComplete,
			effects: []string{"session_ended:id1(graceful,recycle=true)", "notify-ended:id1:graceful:true", "drop-route", "disarm", "recycle:id1:graceful"},
			ready:   MsgEnded, phase: PhaseEnded, session: "id1"},
		{name: "not graceful, no resumption", cfg: quitNoRe, setup: active1, do: endsession("id1", false), status: StatusComplete,
			effects: []string{"session_ended:id1(endsession,recycle=true)", "notify-ended:id1:endsession:true", "drop-route", "recycle:id1:endsession"},
			ready:   MsgEnded, phase: PhaseEnded, session: "id1"},
		{name: "not graceful, no resumption, no client yet, next session", cfg: stayNoRe, setup: ready1, do: endsession("id1", false), status: StatusComplete,
			effects: []string{"session_ended:id1(endsession,recycle=false)", "notify-ended:id1:endsession:false", "ready_for_connection:id2", "route:id2"},
			ready:   MsgReady, phase: PhaseIdle, session: "id2"},
		{name: "unknown session id is refused", cfg: quit, setup: active1, do: endsession("other", true), err: ErrUnknownSession,
			effects: []string{}, ready: MsgActive, phase: PhaseActive, session: "id1"},
		{name: "unknown session id with a fixed id", cfg: fixedID, do: endsession("other", true), err: ErrUnknownSession,
			effects: []string{}, ready: MsgAppNotReady, session: "s1"},
		{name: "no id published yet: the caller's is adopted", cfg: quit, setup: []step{in(AppReady)}, do: endsession("nvcf-1", true), status: StatusComplete,
			effects: []string{"session_ended:nvcf-1(graceful,recycle=true)", "notify-ended:nvcf-1:graceful:true", "recycle:nvcf-1:graceful"},
			ready:   MsgRtxNotReady, phase: PhaseEnded, session: "nvcf-1"},
		{name: "repeat after the end, quit", cfg: quit, setup: seq(active1, []step{endsession("id1", true)}), do: endsession("id1", false), status: StatusComplete,
			effects: []string{}, ready: MsgEnded, phase: PhaseEnded, session: "id1"},
		{name: "repeat for the previous session while waiting", cfg: stay, setup: seq(active1, []step{endsession("id1", true)}), do: endsession("id1", true), status: StatusComplete,
			effects: []string{}, ready: MsgWaitingForDisconnect, phase: PhaseWaitingForDisconnect},
		{name: "unknown id while waiting for the previous client", cfg: stay, setup: seq(active1, []step{endsession("id1", true)}), do: endsession("other", true), err: ErrUnknownSession,
			effects: []string{}, ready: MsgWaitingForDisconnect, phase: PhaseWaitingForDisconnect},
		{name: "repeat for the previous session before the next has an id", cfg: stayWait, setup: seq(active1, []step{in(SessionReady), endsession("id1", true), in(ClientDisconnected)}), do: endsession("id1", true), status: StatusComplete,
			effects: []string{}, ready: MsgSessionReadyMissing, phase: PhaseIdle},
		{name: "new id before the next session is ready: adopted", cfg: stayWait, setup: seq(active1, []step{in(SessionReady), endsession("id1", true), in(ClientDisconnected)}), do: endsession("nvcf-2", false), status: StatusComplete,
			effects: []string{"session_ended:nvcf-2(endsession,recycle=false)", "notify-ended:nvcf-2:endsession:false"}, ready: MsgSessionReadyMissing, phase: PhaseIdle},
		{name: "repeat for the previous session during the next", cfg: stayNoRe, setup: seq(ready1, []step{endsession("id1", false)}), do: endsession("id1", true), status: StatusComplete,
			effects: []string{}, ready: MsgReady, phase: PhaseIdle, session: "id2"},

		// After the end.
		{name: "client connects after the end", cfg: quit, setup: seq(ready1, []step{endsession("id1", true)}), do: in(ClientConnected),
			effects: []string{"client_connected:id1"}, ready: MsgEnded, phase: PhaseEnded, session: "id1"},
		{name: "client leaves after the end", cfg: quit, setup: seq(active1, []step{endsession("id1", true)}), do: in(ClientDisconnected),
			effects: []string{"client_disconnected:id1"}, ready: MsgEnded, phase: PhaseEnded, session: "id1"},

		// The agent stops.
		{name: "stop during a session", cfg: quit, setup: active1, do: in(Stop),
			effects: []string{"session_ended:id1(agent_stopped,recycle=true)", "notify-ended:id1:agent_stopped:true", "drop-route"},
			ready:   MsgEnded, phase: PhaseEnded, session: "id1"},
		{name: "stop while awaiting resume", cfg: quit, setup: awaiting1, do: in(Stop),
			effects: []string{"session_ended:id1(agent_stopped,recycle=true)", "notify-ended:id1:agent_stopped:true", "drop-route", "disarm"},
			ready:   MsgEnded, phase: PhaseEnded, session: "id1"},
		{name: "stop before any session", cfg: quit, do: in(Stop),
			effects: []string{}, ready: MsgAppNotReady, phase: PhaseEnded},
		{name: "stop after the end", cfg: quit, setup: seq(active1, []step{endsession("id1", true)}), do: in(Stop),
			effects: []string{}, ready: MsgEnded, phase: PhaseEnded, session: "id1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRig(tt.cfg)
			for i, s := range tt.setup {
				if _, err, _ := r.run(t, s); err != nil {
					t.Fatalf("setup step %d: %v", i, err)
				}
			}
			status, err, effects := r.run(t, tt.do)
			if !errors.Is(err, tt.err) || (tt.err == nil && err != nil) {
				t.Fatalf("err = %v, want %v", err, tt.err)
			}
			if status != tt.status {
				t.Errorf("status = %q, want %q", status, tt.status)
			}
			if !reflect.DeepEqual(effects, tt.effects) {
				t.Errorf("effects:\n got %q\nwant %q", effects, tt.effects)
			}
			st := r.m.State()
			if got := r.m.Ready().Message; got != tt.ready {
				t.Errorf("ready = %q, want %q", got, tt.ready)
			}
			if st.Phase != tt.phase {
				t.Errorf("phase = %s, want %s", st.Phase, tt.phase)
			}
			if st.SessionID != tt.session {
				t.Errorf("session id = %q, want %q", st.SessionID, tt.session)
			}
		})
	}
}

// TestReadyLines checks every /ready line and its code, and that the first matching line wins.
func TestReadyLines(t *testing.T) {
	tests := []struct {
		cfg  Config
		st   State
		msg  string
		code int
	}{
		{quit, State{}, MsgAppNotReady, 503},
		{quit, State{RtxReady: true, SessionReady: true, Phase: PhaseActive}, MsgAppNotReady, 503},
		{quit, State{AppReady: true}, MsgRtxNotReady, 503},
		{quit, State{AppReady: true, Phase: PhaseEnded}, MsgRtxNotReady, 503},
		{waitSR, State{AppReady: true, RtxReady: true}, MsgSessionReadyMissing, 503},
		{waitSR, State{AppReady: true, RtxReady: true, Phase: PhaseWaitingForDisconnect}, MsgSessionReadyMissing, 503},
		{quit, State{AppReady: true, RtxReady: true, Phase: PhaseWaitingForDisconnect}, MsgWaitingForDisconnect, 503},
		{waitSR, State{AppReady: true, RtxReady: true, SessionReady: true, Phase: PhaseWaitingForDisconnect}, MsgWaitingForDisconnect, 503},
		{quit, State{AppReady: true, RtxReady: true, Phase: PhaseEnded}, MsgEnded, 503},
		{quit, State{AppReady: true, RtxReady: true, Phase: PhaseAwaitingResume}, MsgAwaitingResume, 200},
		{quit, State{AppReady: true, RtxReady: true, Phase: PhaseActive}, MsgActive, 200},
		{quit, State{AppReady: true, RtxReady: true}, MsgReady, 200},
		{waitSR, State{AppReady: true, RtxReady: true, SessionReady: true}, MsgReady, 200},
	}
	for _, tt := range tests {
		got := ready(tt.cfg, tt.st)
		if got.Message != tt.msg || got.Code != tt.code {
			t.Errorf("ready(%+v) = %+v, want %s %d", tt.st, got, tt.msg, tt.code)
		}
	}
}

// TestWholeLifecycle walks two sessions of an instance that is not recycled, checking every event
// carries the right session id and that the route follows the session.
func TestWholeLifecycle(t *testing.T) {
	r := newRig(stay)
	var all []string
	for _, s := range []step{
		in(AppReady), in(RtxReady), in(ClientConnected), endsession("id1", false), wait(5 * time.Second),
		in(ClientConnected), in(ClientDisconnected), wait(30 * time.Second), in(Tick), in(ClientConnected),
		endsession("id2", true), in(ClientDisconnected),
	} {
		_, err, eff := r.run(t, s)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, eff...)
	}
	want := []string{
		"app_ready:", "rtx_ready:", "ready_for_connection:id1", "route:id1", "client_connected:id1",
		"session_awaiting_resume:id1(30s,deadline=+30s)", "arm:+30s",
		"client_connected:id1", "session_resumed:id1", "disarm",
		"client_disconnected:id1", "session_awaiting_resume:id1(30s,deadline=+35s)", "arm:+35s",
		"session_ended:id1(resume_timeout,recycle=false)", "notify-ended:id1:resume_timeout:false", "ready_for_connection:id2", "route:id2", "disarm",
		"client_connected:id2",
		"session_ended:id2(graceful,recycle=false)", "notify-ended:id2:graceful:false", "drop-route",
		"client_disconnected:", "ready_for_connection:id3", "route:id3",
	}
	if !reflect.DeepEqual(all, want) {
		t.Errorf("effects:\n got %q\nwant %q", all, want)
	}
	if got := r.m.State().SessionsEnded; got != 2 {
		t.Errorf("sessions ended = %d, want 2", got)
	}
}
