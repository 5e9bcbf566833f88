package httpapi

import (
	"crypto/rand"
	"encoding/hex"
	"net/http"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/rs/zerolog"
)

// RequestIDHeader carries a request's id both ways: a session manager that sends one finds it in
// our log lines; otherwise the agent makes one and returns it.
const RequestIDHeader = "X-Request-Id"

// MaxRequestIDLen bounds a caller's id, which is logged as it is.
const MaxRequestIDLen = 128

// RequestLog gives every request an id, puts a logger carrying it (field request_id) in the
// request's context for the handlers, and logs the request once answered: requests that change
// the session at info, reads (polled by probes every few seconds) at debug.
func RequestLog(base zerolog.Logger) echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			start := time.Now()
			req := c.Request()
			id := req.Header.Get(RequestIDHeader)
			if !validRequestID(id) {
				id = newRequestID()
			}
			c.Response().Header().Set(RequestIDHeader, id)
			l := base.With().Str("request_id", id).Logger()
			c.SetRequest(req.WithContext(l.WithContext(req.Context())))
			if err := next(c); err != nil {
				c.Error(err)
			}
			route := c.Path()
			if route == "" {
				route = "unmatched"
			}
			ev := l.Debug()
			if req.Method != http.MethodGet && req.Method != http.MethodHead {
				ev = l.Info()
			}
			ev.Str("method", req.Method).Str("route", route).Int("status", c.Response().Status).
				Float64("duration_ms", float64(time.Since(start).Microseconds())/1000).Msg("request")
			return nil
		}
	}
}

// RequestLogger is the logger RequestLog put in c's context, or fallback outside it.
func RequestLogger(c echo.Context, fallback zerolog.Logger) *zerolog.Logger {
	if l := zerolog.Ctx(c.Request().Context()); l.GetLevel() != zerolog.Disabled {
		return l
	}
	return &fallback
}

// validRequestID accepts the ids tracing systems and proxies send (UUIDs, hex, base64url) and
// nothing that could forge a log field or line.
func validRequestID(id string) bool {
	if id == "" || len(id) > MaxRequestIDLen {
		return false
	}
	for _, c := range []byte(id) {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_', c == '.', c == ':', c == '/', c == '+', c == '=':
		default:
			return false
		}
	}
	return true
}

func newRequestID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
