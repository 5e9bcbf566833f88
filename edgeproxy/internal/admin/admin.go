// Package admin serves the edge's local operations endpoints: GET /healthz, GET /metrics
// (Prometheus) and GET /v1/routes (the routes this edge has programmed, JSON).
package admin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"
)

// Source is what the endpoints report on.
type Source interface {
	// Healthy is nil when the edge is serving its routes.
	Healthy() error
	// Routes are the programmed routes, JSON-encodable.
	Routes() any
}

// Server is the admin HTTP server.
type Server struct {
	e   *echo.Echo
	log zerolog.Logger
}

// New returns a server reporting on src, with metrics gathered from g.
func New(src Source, g prometheus.Gatherer, log zerolog.Logger) *Server {
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	e.HTTPErrorHandler = func(err error, c echo.Context) {
		code := http.StatusInternalServerError
		var he *echo.HTTPError
		if errors.As(err, &he) {
			code = he.Code
		}
		_ = c.JSON(code, map[string]string{"error": http.StatusText(code)})
	}
	e.GET("/healthz", func(c echo.Context) error {
		if err := src.Healthy(); err != nil {
			return c.JSON(http.StatusServiceUnavailable, map[string]string{"status": "unhealthy", "reason": err.Error()})
		}
		return c.JSON(http.StatusOK, map[string]string{"status": "ok"})
	})
	e.GET("/metrics", echo.WrapHandler(promhttp.HandlerFor(g, promhttp.HandlerOpts{})))
	e.GET("/v1/routes", func(c echo.Context) error {
		return c.JSON(http.StatusOK, map[string]any{"routes": src.Routes()})
	})
	return &Server{e: e, log: log}
}

// Handler is the server's HTTP handler.
func (s *Server) Handler() http.Handler { return s.e }

// Run listens on addr until ctx ends.
func (s *Server) Run(ctx context.Context, addr string) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("admin listener %s: %w", addr, err)
	}
	srv := &http.Server{Handler: s.e, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	s.log.Info().Str("addr", l.Addr().String()).Msg("admin endpoints listening")
	if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("admin server: %w", err)
	}
	return nil
}
