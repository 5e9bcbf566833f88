package main

import (
	"context"
	"net/http"
	"sync"

	"github.com/coder/websocket"
	"github.com/livegate/livegate/pkg/sessionid"
	"github.com/rs/zerolog"
)

// signaling is the app's /sign_in websocket endpoint. It stands in for a streaming app's
// signaling server: it accepts the session the edge routed here, tells the agent when a client
// comes and goes, and echoes messages so a test can see the path carries data both ways.
type signaling struct {
	// sessionID, when set, is the only session accepted.
	sessionID string
	notify    func(event string)
	log       zerolog.Logger
	// active counts open websockets, so a shutdown can let their disconnects be reported.
	active sync.WaitGroup
}

func (s *signaling) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	log := s.log.With().Str("remote_addr", r.RemoteAddr).Logger()
	id, token := sessionid.FromRequest(r)
	switch {
	case id == "" && s.sessionID != "":
		log.Warn().Msg("refused websocket without a session id")
		http.Error(w, "session id required", http.StatusForbidden)
		return
	case id != "" && sessionid.Validate(id) != nil:
		log.Warn().Msg("refused websocket with an invalid session id")
		http.Error(w, "invalid session id", http.StatusBadRequest)
		return
	case s.sessionID != "" && id != s.sessionID:
		log.Warn().Str("session_id", id).Msg("refused websocket for another session")
		http.Error(w, "unknown session", http.StatusForbidden)
		return
	}
	opts := &websocket.AcceptOptions{}
	if token != "" {
		opts.Subprotocols = []string{token}
	}
	s.active.Add(1)
	defer s.active.Done()
	c, err := websocket.Accept(w, r, opts)
	if err != nil {
		log.Warn().Err(err).Msg("websocket handshake failed")
		return
	}
	log = log.With().Str("session_id", id).Str("peer_id", r.URL.Query().Get("peer_id")).Logger()
	log.Info().Str("subprotocol", c.Subprotocol()).Msg("client connected")
	s.notify("client-connected")
	err = echo(r.Context(), c)
	status := websocket.CloseStatus(err)
	log.Info().Int("close_status", int(status)).Msg("client disconnected")
	s.notify("client-disconnected")
	if status == -1 {
		_ = c.CloseNow()
		return
	}
	_ = c.Close(websocket.StatusNormalClosure, "")
}

// echo sends every message back until the peer closes or ctx ends; it returns why it stopped.
func echo(ctx context.Context, c *websocket.Conn) error {
	for {
		typ, msg, err := c.Read(ctx)
		if err != nil {
			return err
		}
		if err := c.Write(ctx, typ, msg); err != nil {
			return err
		}
	}
}
