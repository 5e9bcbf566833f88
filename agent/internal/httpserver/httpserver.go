// Package httpserver gives the agent's two HTTP servers the same limits: a deadline on every phase
// of a connection, a cap on open connections, net/http's own complaints in the structured log, and
// a stop that does not wait on a slow client.
package httpserver

import (
	"context"
	"errors"
	"fmt"
	stdlog "log"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/net/netutil"
)

// The limits. A request body is at most 64 KiB, so a client that needs more than ReadTimeout to
// send one is trickling on purpose; a long-lived stream lifts its own deadlines (Unbounded).
const (
	ReadHeaderTimeout = 10 * time.Second
	ReadTimeout       = 15 * time.Second
	WriteTimeout      = 15 * time.Second
	IdleTimeout       = 60 * time.Second
	// MaxConns caps the connections one listener holds open; the next ones wait in the kernel's
	// accept queue, so a flood of slow clients cannot take every file descriptor of the agent.
	MaxConns = 64
	// DrainTimeout is how long Stop lets requests in flight finish before closing their connections.
	DrainTimeout = time.Second
)

// Configure sets the timeouts on s and sends its error log to log as JSON lines.
func Configure(s *http.Server, log zerolog.Logger) {
	s.ReadHeaderTimeout = ReadHeaderTimeout
	s.ReadTimeout = ReadTimeout
	s.WriteTimeout = WriteTimeout
	s.IdleTimeout = IdleTimeout
	s.ErrorLog = ErrorLog(log)
}

// ErrorLog is a standard logger whose lines become warnings on log, for net/http's ErrorLog.
func ErrorLog(log zerolog.Logger) *stdlog.Logger {
	return stdlog.New(errorWriter{log.With().Str("component", "http_server").Logger()}, "", 0)
}

type errorWriter struct{ log zerolog.Logger }

func (w errorWriter) Write(p []byte) (int, error) {
	w.log.Warn().Msg(strings.TrimSpace(string(p)))
	return len(p), nil
}

// Limit caps the connections open at once on l at n.
func Limit(l net.Listener, n int) net.Listener { return netutil.LimitListener(l, n) }

// Unbounded lifts the read and write deadlines of the connection w answers on, for a response that
// streams for as long as the client stays. A writer that is not a connection has none to lift.
func Unbounded(w http.ResponseWriter) error {
	rc := http.NewResponseController(w)
	err := errors.Join(rc.SetReadDeadline(time.Time{}), rc.SetWriteDeadline(time.Time{}))
	if errors.Is(err, http.ErrNotSupported) {
		return nil
	}
	return err
}

// Stop lets requests in flight finish for at most DrainTimeout (or until ctx ends), then closes
// every connection still open, so a slow client never holds the agent's exit.
func Stop(ctx context.Context, s *http.Server) error {
	dctx, cancel := context.WithTimeout(ctx, DrainTimeout)
	defer cancel()
	if err := s.Shutdown(dctx); err != nil {
		if cerr := s.Close(); cerr != nil {
			return fmt.Errorf("close connections: %w", cerr)
		}
		return fmt.Errorf("requests still open after %s, their connections closed: %w", DrainTimeout, err)
	}
	return nil
}
