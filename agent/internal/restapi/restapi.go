// Package restapi serves the session REST API that session managers call, byte-for-byte the
// reference extension's contract (compact JSON, no trailing newline, as FastAPI renders it), plus
// the agent's own /v1/streaming/session, /metrics and /v1/openapi.json.
package restapi

import (
	_ "embed"
	"errors"
	"fmt"
	"net/http"

	"github.com/labstack/echo/v4"
	"github.com/livegate/livegate/agent/internal/creds"
	"github.com/livegate/livegate/agent/internal/httpapi"
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
	e.HTTPErrorHandler = httpapi.ErrorHandler(a.log)
	e.Use(httpapi.RequestLog(a.log), httpapi.Recover(a.log), httpapi.Count(m, "session"), httpapi.NoOptions, a.requireToken)
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

type credsAnswer struct {
	Success      bool    `json:"success"`
	ErrorMessage *string `json:"errorMessage"`
}

func (a *api) creds(c echo.Context) error {
	fail := func(code int, err error) error {
		msg := err.Error()
		httpapi.RequestLogger(c, a.log).Info().Str("error", msg).Msg("creds refused")
		return httpapi.JSON(c, code, credsAnswer{Success: false, ErrorMessage: &msg})
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
	return httpapi.JSON(c, http.StatusOK, credsAnswer{Success: true})
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
		return httpapi.JSON(c, bodyErrorCode(err), httpapi.Detail{Detail: err.Error()})
	}
	var req endSessionBody
	if err := jsonbody.Decode(body, &req); err != nil {
		return httpapi.JSON(c, http.StatusBadRequest, httpapi.Detail{Detail: err.Error()})
	}
	if req.SessionID == nil {
		return httpapi.JSON(c, http.StatusBadRequest, httpapi.Detail{Detail: "sessionId: field required"})
	}
	if err := sessionid.Validate(*req.SessionID); err != nil {
		return httpapi.JSON(c, http.StatusBadRequest, httpapi.Detail{Detail: "sessionId: " + err.Error()})
	}
	graceful := req.GracefulShutdown != nil && *req.GracefulShutdown
	status, err := a.agent.EndSession(*req.SessionID, graceful)
	if errors.Is(err, session.ErrUnknownSession) {
		return httpapi.JSON(c, http.StatusConflict, httpapi.Detail{Detail: fmt.Sprintf("sessionId: %q is not the current session", *req.SessionID)})
	}
	if err != nil {
		return err
	}
	return httpapi.JSON(c, http.StatusOK, endSessionAnswer{SessionStatus: status})
}

type statusAnswer struct {
	StatusMessage string `json:"statusMessage"`
}

func (a *api) ready(c echo.Context) error {
	r := a.agent.Ready()
	return httpapi.JSON(c, r.Code, statusAnswer{r.Message})
}

func (a *api) startup(c echo.Context) error {
	return httpapi.JSON(c, http.StatusOK, statusAnswer{"Status: Startup endpoint OK"})
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
	return httpapi.JSON(c, http.StatusOK, ans)
}
