// Package appapi is how the app and the agent talk, on a loopback listener: the app posts what
// happens to it (POST /v1/app/events/{name}), reads the full credentials (GET /v1/app/creds) and its
// endpoint with the edge's TURN credential (GET /v1/app/endpoint), and
// follows what the agent dispatches as server-sent events (GET /v1/app/events). Probe marks the
// app ready once a TCP port accepts connections.
package appapi

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/livegate/livegate/agent/internal/httpapi"
	"github.com/livegate/livegate/agent/internal/httpserver"
	"github.com/livegate/livegate/agent/internal/lifecycle"
	"github.com/livegate/livegate/agent/internal/metrics"
	"github.com/livegate/livegate/agent/internal/session"
	"github.com/rs/zerolog"
)

// Events maps the event names the app posts to machine inputs.
var Events = map[string]session.Input{
	"app-ready":           session.AppReady,
	"rtx-ready":           session.RtxReady,
	"session-ready":       session.SessionReady,
	"client-connected":    session.ClientConnected,
	"client-disconnected": session.ClientDisconnected,
}

// KeepAlive is how often an idle event stream gets a comment line, so proxies and the app notice a
// dead connection.
const KeepAlive = 15 * time.Second

// Server is the app API.
type Server struct {
	e     *echo.Echo
	agent *lifecycle.Agent
	log   zerolog.Logger
	// done ends every event stream, which would otherwise hold Shutdown forever.
	done     chan struct{}
	doneOnce sync.Once
}

// New builds the app API around agent.
func New(agent *lifecycle.Agent, m *metrics.Metrics, log zerolog.Logger) *Server {
	s := &Server{e: echo.New(), agent: agent, log: log, done: make(chan struct{})}
	s.e.HideBanner, s.e.HidePort = true, true
	httpserver.Configure(s.e.Server, log)
	s.e.HTTPErrorHandler = httpapi.ErrorHandler(log)
	s.e.Use(httpapi.RequestLog(log), httpapi.Recover(log), httpapi.Count(m, "app"), httpapi.NoOptions, loopbackHost)
	s.e.POST("/v1/app/events/:name", s.event)
	s.e.GET("/v1/app/creds", s.creds)
	s.e.GET("/v1/app/endpoint", s.endpoint)
	s.e.GET("/v1/app/events", s.stream)
	return s
}

// Handler is the HTTP handler, for tests.
func (s *Server) Handler() http.Handler { return s.e }

// Serve answers on l until Shutdown.
func (s *Server) Serve(l net.Listener) error {
	err := s.e.Server.Serve(l)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown ends the event streams, lets the other requests finish (at most httpserver.DrainTimeout)
// and closes every connection.
func (s *Server) Shutdown(ctx context.Context) error {
	s.doneOnce.Do(func() { close(s.done) })
	return httpserver.Stop(ctx, s.e.Server)
}

// loopbackHost refuses a Host header that is not a loopback address or localhost, so a web page
// cannot reach the credentials through DNS rebinding.
func loopbackHost(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		host := c.Request().Host
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
		if host != "localhost" {
			if ip, err := netip.ParseAddr(host); err != nil || !ip.IsLoopback() {
				return httpapi.JSON(c, http.StatusForbidden, httpapi.Detail{Detail: "host: only loopback addresses are served"})
			}
		}
		return next(c)
	}
}

type eventAnswer struct {
	Event         string `json:"event"`
	StatusMessage string `json:"statusMessage"`
}

func (s *Server) event(c echo.Context) error {
	name := c.Param("name")
	in, ok := Events[name]
	if !ok {
		return httpapi.JSON(c, http.StatusNotFound, httpapi.Detail{Detail: fmt.Sprintf(
			"event %q is unknown; want app-ready, rtx-ready, session-ready, client-connected or client-disconnected", name)})
	}
	s.agent.Signal(in)
	return httpapi.JSON(c, http.StatusOK, eventAnswer{Event: name, StatusMessage: s.agent.Ready().Message})
}

func (s *Server) creds(c echo.Context) error {
	cr, ok := s.agent.Credentials()
	if !ok {
		return httpapi.JSON(c, http.StatusNotFound, httpapi.Detail{Detail: "no credentials yet"})
	}
	return httpapi.JSON(c, http.StatusOK, cr)
}

// endpoint is the edge's endpoint of the current session, with the edge's TURN credential.
func (s *Server) endpoint(c echo.Context) error {
	ep, ok := s.agent.Endpoint()
	if !ok {
		return httpapi.JSON(c, http.StatusNotFound, httpapi.Detail{Detail: "no endpoint assigned yet"})
	}
	return httpapi.JSON(c, http.StatusOK, ep)
}

// stream writes notifications as server-sent events: "event: <kind>", "data: <json>".
func (s *Server) stream(c echo.Context) error {
	ch, cancel := s.agent.Subscribe()
	defer cancel()
	w := c.Response()
	if err := httpserver.Unbounded(w); err != nil {
		return fmt.Errorf("event stream: %w", err)
	}
	w.Header().Set(echo.HeaderContentType, "text/event-stream")
	w.Header().Set(echo.HeaderCacheControl, "no-cache")
	w.Header().Set(echo.HeaderConnection, "keep-alive")
	w.WriteHeader(http.StatusOK)
	if _, err := fmt.Fprint(w, ": livegate-agent event stream\n\n"); err != nil {
		return nil
	}
	w.Flush()
	ping := time.NewTicker(KeepAlive)
	defer ping.Stop()
	id := 0
	for {
		select {
		case <-c.Request().Context().Done():
			return nil
		case <-s.done:
			return nil
		case <-ping.C:
			if _, err := fmt.Fprint(w, ": keep-alive\n\n"); err != nil {
				return nil
			}
		case n, ok := <-ch:
			if !ok {
				return nil
			}
			data, err := httpapi.Marshal(n.Data)
			if err != nil {
				s.log.Error().Err(err).Str("kind", n.Kind).Msg("encode app notification")
				continue
			}
			id++
			if _, err := fmt.Fprintf(w, "id: %d\nevent: %s\ndata: %s\n\n", id, n.Kind, data); err != nil {
				return nil
			}
		}
		w.Flush()
	}
}

// ProbeReport is how often Probe tells its caller it is still waiting.
const ProbeReport = 10 * time.Second

// Probe dials addr every interval until a TCP connection succeeds, then returns nil; it returns
// ctx's error if ctx ends first. waiting, when set, hears of the failed dials (the first, then one
// every ProbeReport) with how long Probe has waited, so a log says what the agent waits for.
func Probe(ctx context.Context, addr string, interval time.Duration, waiting func(waited time.Duration, err error)) error {
	d := net.Dialer{Timeout: interval}
	start := time.Now()
	var reported time.Time
	for {
		conn, err := d.DialContext(ctx, "tcp", addr)
		if err == nil {
			_ = conn.Close()
			return nil
		}
		if waiting != nil && ctx.Err() == nil && (reported.IsZero() || time.Since(reported) >= ProbeReport) {
			reported = time.Now()
			waiting(time.Since(start), err)
		}
		t := time.NewTimer(interval)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}
