// Package restapi serves the session REST API that session managers call, byte-for-byte the
// reference extension's contract (compact JSON, no trailing newline, as FastAPI renders it), plus
// the agent's own /v1/streaming/session, /metrics and /v1/openapi.json.
package restapi

import (
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"github.com/labstack/echo/v4"
	"github.com/livegate/livegate/agent/internal/creds"
	"github.com/livegate/livegate/agent/internal/httpserver"
	"github.com/livegate/livegate/agent/internal/jsonbody"
	"github.com/livegate/livegate/agent/internal/lifecycle"
	"github.com/livegate/livegate/agent/internal/metrics"
	"github.com/livegate/livegate/agent/internal/session"
	"github.com/livegate/livegate/pkg/sessionid"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"
)

//go:embed openapi.json
var openAPI []byte

// Option changes a default of New.
type Option func(*api)

// WithNATSStatus adds what status returns under "nats" in /v1/streaming/session.
func WithNATSStatus(status func() any) Option { return func(a *api) { a.natsStatus = status } }

// WithLogger sets the logger.
func WithLogger(l zerolog.Logger) Option { return func(a *api) { a.log = l } }

type api struct {
	agent      *lifecycle.Agent
	metrics    *metrics.Metrics
	natsStatus func() any
	log        zerolog.Logger
	tokenSum   *[32]byte
}

// New returns the REST API's handler.
func New(agent *lifecycle.Agent, m *metrics.Metrics, opts ...Option) *echo.Echo {
	a := &api{agent: agent, metrics: m, log: zerolog.Nop()}
	for _, o := range opts {
		o(a)
	}
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	httpserver.Configure(e.Server, a.log)
	e.HTTPErrorHandler = ErrorHandler(a.log)
	e.Use(RequestLog(a.log), Recover(a.log), Count(m, "session"), NoOptions, a.requireToken)
	e.POST("/v1/streaming/creds", a.creds)
	e.POST("/v1/streaming/endsession", a.endSession)
	e.GET("/v1/streaming/ready", a.ready)
	e.GET("/v1/streaming/startup", a.startup)
	e.GET("/v1/streaming/session", a.session)
	e.GET("/v1/openapi.json", func(c echo.Context) error { return c.Blob(http.StatusOK, echo.MIMEApplicationJSON, openAPI) })
	metricsHandler := promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{})
	e.GET("/metrics", echo.WrapHandler(metricsHandler))
	return e
}

// JSON writes v as FastAPI does: compact, no HTML escaping, no trailing newline.
func JSON(c echo.Context, code int, v any) error {
	b, err := Marshal(v)
	if err != nil {
		return err
	}
	return c.Blob(code, echo.MIMEApplicationJSON, b)
}

// Marshal encodes v compactly without HTML escaping and without a trailing newline.
func Marshal(v any) ([]byte, error) {
	var buf jsonBuffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return buf.b[:len(buf.b)-1], nil
}

type jsonBuffer struct{ b []byte }

func (j *jsonBuffer) Write(p []byte) (int, error) { j.b = append(j.b, p...); return len(p), nil }

// Detail is the error body for everything but creds, as FastAPI's HTTPException renders it.
type Detail struct {
	Detail string `json:"detail"`
}

type credsAnswer struct {
	Success      bool    `json:"success"`
	ErrorMessage *string `json:"errorMessage"`
}

func (a *api) creds(c echo.Context) error {
	fail := func(code int, err error) error {
		msg := err.Error()
		requestLogger(c, a.log).Info().Str("error", msg).Msg("creds refused")
		return JSON(c, code, credsAnswer{Success: false, ErrorMessage: &msg})
	}
	body, err := readBody(c)
	if err != nil {
		return fail(bodyErrorCode(err), err)
	}
	cr, err := creds.Parse(body)
	if err != nil {
		return fail(http.StatusBadRequest, err)
	}
	a.agent.SetCredentials(cr)
	return JSON(c, http.StatusOK, credsAnswer{Success: true})
}

// readBody reads a JSON request body. A body too large is answered on a connection that then
// closes: what the client has not sent yet is never read, so the connection cannot carry another
// request.
func readBody(c echo.Context) ([]byte, error) {
	body, err := jsonbody.Read(c.Request())
	if errors.Is(err, jsonbody.ErrTooLarge) {
		c.Response().Header().Set(echo.HeaderConnection, "close")
	}
	return body, err
}

func bodyErrorCode(err error) int {
	switch {
	case errors.Is(err, jsonbody.ErrTooLarge):
		return http.StatusRequestEntityTooLarge
	case errors.Is(err, jsonbody.ErrNotJSON):
		return http.StatusUnsupportedMediaType
	}
	return http.StatusBadRequest
}

type endSessionBody struct {
	SessionID        *string `json:"sessionId"`
	GracefulShutdown *bool   `json:"gracefulShutdown"`
}

type endSessionAnswer struct {
	SessionStatus session.EndStatus `json:"sessionStatus"`
}

func (a *api) endSession(c echo.Context) error {
	body, err := readBody(c)
	if err != nil {
		return JSON(c, bodyErrorCode(err), Detail{err.Error()})
	}
	var req endSessionBody
	if err := jsonbody.Decode(body, &req); err != nil {
		return JSON(c, http.StatusBadRequest, Detail{err.Error()})
	}
	if req.SessionID == nil {
		return JSON(c, http.StatusBadRequest, Detail{"sessionId: field required"})
	}
	if err := sessionid.Validate(*req.SessionID); err != nil {
		return JSON(c, http.StatusBadRequest, Detail{"sessionId: " + err.Error()})
	}
	graceful := req.GracefulShutdown != nil && *req.GracefulShutdown
	status, err := a.agent.EndSession(*req.SessionID, graceful)
	if errors.Is(err, session.ErrUnknownSession) {
		return JSON(c, http.StatusConflict, Detail{fmt.Sprintf("sessionId: %q is not the current session", *req.SessionID)})
	}
	if err != nil {
		return err
	}
	return JSON(c, http.StatusOK, endSessionAnswer{SessionStatus: status})
}

type statusAnswer struct {
	StatusMessage string `json:"statusMessage"`
}

func (a *api) ready(c echo.Context) error {
	r := a.agent.Ready()
	return JSON(c, r.Code, statusAnswer{r.Message})
}

func (a *api) startup(c echo.Context) error {
	return JSON(c, http.StatusOK, statusAnswer{"Status: Startup endpoint OK"})
}

type sessionAnswer struct {
	lifecycle.View
	NATS any `json:"nats"`
}

func (a *api) session(c echo.Context) error {
	ans := sessionAnswer{View: a.agent.View()}
	if a.natsStatus != nil {
		ans.NATS = a.natsStatus()
	}
	return JSON(c, http.StatusOK, ans)
}

// ErrorHandler answers routing errors as FastAPI does ({"detail":"Not Found"}) and anything
// unexpected with a bare 500, never the error text.
func ErrorHandler(log zerolog.Logger) echo.HTTPErrorHandler {
	return func(err error, c echo.Context) {
		if c.Response().Committed {
			return
		}
		code := http.StatusInternalServerError
		msg := http.StatusText(code)
		var he *echo.HTTPError
		if errors.As(err, &he) && he.Code != http.StatusInternalServerError {
			code = he.Code
			msg = http.StatusText(code)
		} else {
			requestLogger(c, log).Error().Err(err).Str("path", c.Path()).Msg("request failed")
		}
		_ = JSON(c, code, Detail{msg})
	}
}

// NoOptions answers OPTIONS on a known path 405, as for any other method the path does not serve:
// the API serves no CORS preflight, and a 204 would suggest it does.
func NoOptions(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		if c.Request().Method == http.MethodOptions {
			if _, known := c.Get(echo.ContextKeyHeaderAllow).(string); known {
				return echo.MethodNotAllowedHandler(c)
			}
		}
		return next(c)
	}
}

// Recover turns a panic into a 500 without a stack trace to the client.
func Recover(log zerolog.Logger) echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) (err error) {
			defer func() {
				if r := recover(); r != nil {
					requestLogger(c, log).Error().Str("panic", fmt.Sprint(r)).Str("path", c.Path()).Msg("handler panicked")
					err = echo.NewHTTPError(http.StatusInternalServerError)
				}
			}()
			return next(c)
		}
	}
}

// Count counts answered requests by route template (never the raw path) and code.
func Count(m *metrics.Metrics, apiName string) echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			err := next(c)
			if err != nil {
				c.Error(err)
			}
			route := c.Path()
			if route == "" {
				route = "unmatched"
			}
			m.HTTPRequests.WithLabelValues(apiName, route, strconv.Itoa(c.Response().Status)).Inc()
			return nil
		}
	}
}
