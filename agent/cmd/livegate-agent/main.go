// Command livegate-agent is the session sidecar: the session REST API, the app's loopback API and
// the NATS write-back around the session lifecycle. See docs/agent.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/livegate/livegate/agent/internal/appapi"
	"github.com/livegate/livegate/agent/internal/httpserver"
	"github.com/livegate/livegate/agent/internal/lifecycle"
	"github.com/livegate/livegate/agent/internal/metrics"
	"github.com/livegate/livegate/agent/internal/publisher"
	"github.com/livegate/livegate/agent/internal/recycle"
	"github.com/livegate/livegate/agent/internal/restapi"
	"github.com/livegate/livegate/agent/internal/session"
	"github.com/livegate/livegate/agent/internal/settings"
	"github.com/livegate/livegate/pkg/buildinfo"
	"github.com/livegate/livegate/pkg/logging"
	"github.com/livegate/livegate/pkg/natsconn"
	"github.com/livegate/livegate/pkg/sessionid"
	settingsload "github.com/livegate/livegate/pkg/settings"
	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
	"github.com/rs/zerolog"
)

// probeInterval is how often --app-probe dials the app.
const probeInterval = 500 * time.Millisecond

func main() { os.Exit(run(os.Args[1:])) }

func run(args []string) int {
	s, err := settings.Load(args, os.Environ(), os.Stderr)
	if errors.Is(err, settings.ErrHelp) {
		return 0
	}
	if errors.Is(err, settings.ErrVersion) {
		fmt.Println(buildinfo.String("livegate-agent"))
		return 0
	}
	if err != nil {
		settingsload.Report(os.Stderr, "livegate-agent", err)
		return 2
	}
	log, err := logging.New(logging.Options{Level: s.LogLevel, Format: s.LogFormat})
	if err != nil {
		fmt.Fprintln(os.Stderr, "livegate-agent:", err)
		return 2
	}
	if err := serve(s, log); err != nil {
		log.Error().Err(err).Msg("livegate-agent stopped")
		return 1
	}
	return 0
}

func serve(s *settings.Settings, log zerolog.Logger) error {
	ctx, stopSignals := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stopSignals()
	log = log.With().Str("instance_id", s.InstanceID).Logger()
	restOpts := []restapi.Option{restapi.WithLogger(log)}
	if s.APITokenFile != "" {
		token, err := restapi.ReadToken(s.APITokenFile)
		if err != nil {
			return err
		}
		if err := restapi.CheckTokenFileMode(s.APITokenFile); err != nil {
			log.Warn().Err(err).Msg("api token file readable by others")
		}
		restOpts = append(restOpts, restapi.WithToken(token))
	}
	if s.AppAddrAllowNonLoopback {
		log.Warn().Str("app_addr", s.AppAddr).Msg("app API may listen beyond loopback: whoever reaches it can read the session's credentials")
	}
	m := metrics.New()

	quit := make(chan struct{})
	var quitOnce sync.Once
	onRecycle := func(r session.Recycle) {
		l := log.With().Str("session_id", r.SessionID).Str("reason", r.Reason).Logger()
		if s.Action.Kind == settings.ActionExit {
			l.Info().Msg("session ended: exiting")
			quitOnce.Do(func() { close(quit) })
			return
		}
		if err := recycle.Run(ctx, s.Action, r.SessionID, r.Reason); err != nil {
			l.Error().Err(err).Msg("on-session-ended failed")
			return
		}
		l.Info().Str("action", s.OnSessionEnded).Msg("on-session-ended done")
	}

	var agent *lifecycle.Agent
	opts := []lifecycle.Option{
		lifecycle.WithLogger(log), lifecycle.WithMetrics(m), lifecycle.WithRecycle(onRecycle),
		lifecycle.WithIdentity(s.InstanceID, s.Pool),
	}
	var pub *publisher.Publisher
	if s.NATS.URL != "" {
		cfg := s.NATS.Config("livegate-agent/" + s.InstanceID)
		// A dead server is left in time for the route to be renewed through another.
		cfg.StaleAfter = s.LeaseTTL / 3
		nc, err := natsconn.Connect(ctx, cfg, log)
		if err != nil {
			return err
		}
		defer nc.Close()
		m.WatchNATS(nc)
		pub, err = publisher.New(nc, publisher.Config{
			InstanceID: s.InstanceID, Pool: s.Pool, EdgeID: s.EdgeID,
			SignalingBackend: s.SignalingBackend, MediaBackends: s.MediaBackends,
			LeaseTTL: s.LeaseTTL, Source: "livegate-agent/" + s.InstanceID, Replicas: s.NATS.Replicas,
		}, log, m, func(ep *livegatev1.Endpoint) { agent.AssignEndpoint(ep) }, func(ev *livegatev1.Event) {
			at := time.Now()
			if ev.Time != nil {
				at = ev.Time.AsTime()
			}
			agent.RouteRefused(ev.GetRouteRefused().GetEdgeId(), ev.SessionId, ev.GetRouteRefused().GetReason(), at)
		})
		if err != nil {
			return err
		}
		opts = append(opts, lifecycle.WithPublisher(pub))
	}
	agent = lifecycle.New(session.Config{
		QuitOnSessionEnded:       s.QuitOnSessionEnded,
		ResumeTimeout:            time.Duration(s.ResumeTimeoutSeconds) * time.Second,
		WaitForSessionReadyEvent: s.WaitForSessionReadyEvent,
		SessionID:                s.SessionID,
		NewID:                    sessionid.New,
	}, opts...)

	if pub != nil {
		restOpts = append(restOpts, restapi.WithNATSStatus(func() any { return pub.Status() }))
	}
	rest := restapi.New(agent, m, restOpts...)
	app := appapi.New(agent, m, log)
	restL, err := net.Listen("tcp", net.JoinHostPort(s.Host, strconv.Itoa(s.Port)))
	if err != nil {
		return fmt.Errorf("session API: %w", err)
	}
	appL, err := net.Listen("tcp", s.AppAddr)
	if err != nil {
		_ = restL.Close()
		return fmt.Errorf("app API: %w", err)
	}
	restL, appL = httpserver.Limit(restL, httpserver.MaxConns), httpserver.Limit(appL, httpserver.MaxConns)

	failed := make(chan error, 2)
	go func() {
		if err := rest.Server.Serve(restL); err != nil && !errors.Is(err, http.ErrServerClosed) {
			failed <- fmt.Errorf("session API: %w", err)
		}
	}()
	go func() {
		if err := app.Serve(appL); err != nil {
			failed <- fmt.Errorf("app API: %w", err)
		}
	}()
	pubCtx, stopPub := context.WithCancel(context.Background())
	pubDone := make(chan struct{})
	go func() {
		defer close(pubDone)
		if pub != nil {
			pub.Run(pubCtx)
		}
	}()
	if s.AppProbe != "" {
		go func() {
			waiting := func(waited time.Duration, err error) {
				log.Info().Str("app_probe", s.AppProbe).Float64("waited_seconds", waited.Round(time.Second).Seconds()).Str("error", err.Error()).
					Msg("waiting for the app to accept connections (--app-probe): /v1/streaming/ready answers 503 until it does")
			}
			if err := appapi.Probe(ctx, s.AppProbe, probeInterval, waiting); err == nil {
				log.Info().Str("app_probe", s.AppProbe).Msg("app accepts connections")
				agent.Signal(session.AppReady)
			}
		}()
	}
	log.Info().Str("session_api", restL.Addr().String()).Str("app_api", appL.Addr().String()).Str("pool", s.Pool).
		Bool("nats", pub != nil).Bool("quit_on_session_ended", s.QuitOnSessionEnded).
		Int("resume_timeout_seconds", s.ResumeTimeoutSeconds).Bool("wait_for_session_ready_event", s.WaitForSessionReadyEvent).
		Msg("livegate-agent started")

	var runErr error
	select {
	case <-ctx.Done():
		log.Info().Msg("signal received: stopping")
	case <-quit:
	case runErr = <-failed:
	}

	// Answer the request in flight (the endsession that ended the session), then say goodbye on
	// NATS: the last events and the route's deletion, bounded by the shutdown timeout.
	agent.Stop()
	sctx, cancel := context.WithTimeout(context.Background(), s.ShutdownTimeout)
	defer cancel()
	if err := httpserver.Stop(sctx, rest.Server); err != nil {
		log.Warn().Err(err).Msg("session API shutdown")
	}
	if err := app.Shutdown(sctx); err != nil {
		log.Warn().Err(err).Msg("app API shutdown")
	}
	if pub != nil {
		if err := pub.Flush(sctx); err != nil {
			log.Warn().Err(err).Msg("events or route not settled before exit")
		}
	}
	stopPub()
	<-pubDone
	if runErr == nil {
		log.Info().Msg("livegate-agent stopped")
	}
	return runErr
}
