// Package admin serves the edge's local operations endpoints: GET /healthz, GET /readyz (healthy
// and not draining: what a load balancer asks), GET /metrics (Prometheus), GET /v1/routes (the
// routes this edge has programmed, JSON) and the drain control, GET, POST and DELETE /v1/drain;
// and `livegate-edgeproxy drain`, the client of the latter.
package admin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/livegate/livegate/edgeproxy/internal/placement"
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

// Drainer is the edge's drain state (drainstate.Store).
type Drainer interface {
	Get() placement.Drain
	// Drain starts a drain, or moves its deadline: deadline from now, 0 for none.
	Drain(deadline time.Duration) (placement.Drain, error)
	Cancel() (placement.Drain, error)
}

// Server is the admin HTTP server.
type Server struct {
	e   *echo.Echo
	log zerolog.Logger
}

// New returns a server reporting on src, with metrics gathered from g; drain, when set, is the
// edge's drain control.
func New(src Source, g prometheus.Gatherer, log zerolog.Logger, drain Drainer) *Server {
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
	e.GET("/readyz", func(c echo.Context) error {
		if drain != nil {
			if d := drain.Get(); d.Draining {
				return c.JSON(http.StatusServiceUnavailable, map[string]string{"status": "draining", "reason": d.Reason(time.Now())})
			}
		}
		if err := src.Healthy(); err != nil {
			return c.JSON(http.StatusServiceUnavailable, map[string]string{"status": "unhealthy", "reason": err.Error()})
		}
		return c.JSON(http.StatusOK, map[string]string{"status": "ok"})
	})
	if drain != nil {
		e.GET("/v1/drain", func(c echo.Context) error { return c.JSON(http.StatusOK, drain.Get()) })
		e.POST("/v1/drain", func(c echo.Context) error {
			if fromBrowser(c) {
				return refuseBrowser(c)
			}
			var deadline time.Duration
			if v := c.QueryParam("deadline"); v != "" {
				d, err := time.ParseDuration(v)
				if err != nil || d < 0 {
					return c.JSON(http.StatusBadRequest, map[string]string{"error": fmt.Sprintf("deadline %q: want a duration such as 10m, or 0 for none", v)})
				}
				deadline = d
			}
			d, err := drain.Drain(deadline)
			if err != nil {
				log.Error().Err(err).Msg("drain failed")
				return c.JSON(http.StatusInternalServerError, map[string]string{"error": err.Error()})
			}
			ev := log.Info()
			if !d.Deadline.IsZero() {
				ev = ev.Time("deadline", d.Deadline)
			}
			ev.Msg("draining: no new sessions")
			return c.JSON(http.StatusOK, d)
		})
		e.DELETE("/v1/drain", func(c echo.Context) error {
			if fromBrowser(c) {
				return refuseBrowser(c)
			}
			d, err := drain.Cancel()
			if err != nil {
				log.Error().Err(err).Msg("drain cancel failed")
				return c.JSON(http.StatusInternalServerError, map[string]string{"error": err.Error()})
			}
			log.Info().Msg("drain cancelled: taking new sessions again")
			return c.JSON(http.StatusOK, d)
		})
	}
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

// fromBrowser is a request that names an Origin: browsers send one with every cross-origin POST
// and DELETE, so refusing those keeps a web page open on the host (or a DNS-rebound name) from
// draining the edge through its loopback admin address; the drain command sends none.
func fromBrowser(c echo.Context) bool { return c.Request().Header.Get("Origin") != "" }

func refuseBrowser(c echo.Context) error {
	return c.JSON(http.StatusForbidden, map[string]string{"error": "drain changes are not taken from a browser (the request has an Origin header)"})
}
