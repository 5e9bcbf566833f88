// Package httpapi holds what the agent's two HTTP APIs (the session REST API and the app API)
// share: JSON answers rendered as FastAPI renders them, the error handler, and the middleware that
// logs, recovers, counts and refuses OPTIONS.
package httpapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"github.com/labstack/echo/v4"
	"github.com/livegate/livegate/agent/internal/metrics"
	"github.com/rs/zerolog"
)

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
			RequestLogger(c, log).Error().Err(err).Str("path", c.Path()).Msg("request failed")
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
					RequestLogger(c, log).Error().Str("panic", fmt.Sprint(r)).Str("path", c.Path()).Msg("handler panicked")
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
