// Command demoapp is a stand-in streaming app for livegate's end-to-end tests and `make demo`: a
// websocket signaling server on /sign_in that accepts the x-nv-sessionid.<id> subprotocol and
// echoes messages, a DTLS-SRTP responder on the media port, and the app events (app-ready,
// rtx-ready, client-connected, client-disconnected) posted to its agent's loopback app API. The
// end-to-end tests use it, and `make build` ships it as bin/livegate-demoapp, the app of the
// one-host quickstart.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/livegate/livegate/pkg/appserve"
	"github.com/livegate/livegate/pkg/dtlssrtp"
	"github.com/livegate/livegate/pkg/sessionid"
	"github.com/rs/zerolog"
)

type config struct {
	appserve.Flags
	sessionID string
	rtxDelay  time.Duration
}

func parseFlags(args []string, stderr io.Writer) (config, error) {
	var c config
	fs := flag.NewFlagSet("demoapp", flag.ContinueOnError)
	fs.SetOutput(stderr)
	c.Register(fs, appserve.Help{
		Signaling: "TCP address of the /sign_in websocket server",
		Media:     "UDP address of the DTLS-SRTP responder",
		Agent:     "the agent's loopback app API (host:port); empty reports nothing",
	})
	fs.StringVar(&c.sessionID, "session-id", "", "accept only this session id (default: any valid one)")
	fs.DurationVar(&c.rtxDelay, "rtx-delay", 0, "delay between app-ready and rtx-ready")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if c.sessionID != "" {
		if err := sessionid.Validate(c.sessionID); err != nil {
			return c, fmt.Errorf("--session-id: %w", err)
		}
	}
	if c.rtxDelay < 0 || c.AgentRetry <= 0 {
		return c, errors.New("--rtx-delay must not be negative and --agent-retry must be positive")
	}
	return c, nil
}

func main() { appserve.Main(run) }

func run(ctx context.Context, args []string, stderr io.Writer) int {
	return appserve.Run("demoapp", args, stderr, parseFlags, func(cfg config, log zerolog.Logger) error { return serve(ctx, cfg, log) })
}

func serve(ctx context.Context, cfg config, log zerolog.Logger) error {
	notify := func(event string) { log.Info().Str("event", event).Msg("app event (no agent configured)") }
	if cfg.AgentAddr != "" {
		rep, stop := appserve.StartReporter(ctx, cfg.AgentAddr, cfg.AgentRetry, log)
		defer stop()
		notify = rep.Notify
	}

	media, err := dtlssrtp.NewResponder(ctx, cfg.MediaAddr,
		dtlssrtp.WithLogger(log.With().Str("component", "media").Logger()))
	if err != nil {
		return err
	}
	defer func() { _ = media.Close() }()

	mux := http.NewServeMux()
	sig := &signaling{sessionID: cfg.sessionID, notify: notify, log: log.With().Str("component", "signaling").Logger()}
	mux.Handle("GET /sign_in", sig)
	srv, err := appserve.Listen(ctx, cfg.SignalingAddr, mux)
	if err != nil {
		return err
	}
	log.Info().Str("signaling_addr", srv.Addr().String()).Str("media_addr", media.Addr().String()).
		Str("media_fingerprint", media.Fingerprint()).Str("session_id", cfg.sessionID).Msg("demo app listening")

	notify("app-ready")
	rtx := time.NewTimer(cfg.rtxDelay)
	defer rtx.Stop()
	for {
		select {
		case <-rtx.C:
			notify("rtx-ready")
		case err := <-srv.Failed():
			return fmt.Errorf("signaling server: %w", err)
		case <-ctx.Done():
			log.Info().Msg("shutting down")
			return srv.Shutdown(ctx, func(ctx context.Context) { waitGroup(ctx, &sig.active) })
		}
	}
}

// waitGroup waits for wg or ctx, whichever comes first.
func waitGroup(ctx context.Context, wg *sync.WaitGroup) {
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
	}
}
