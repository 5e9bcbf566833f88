// Command demoapp is a stand-in streaming app for livegate's end-to-end tests and `make demo`: a
// websocket signaling server on /sign_in that accepts the x-nv-sessionid.<id> subprotocol and
// echoes messages, a DTLS-SRTP responder on the media port, and the app events (app-ready,
// rtx-ready, client-connected, client-disconnected) posted to its agent's loopback app API. It is
// a test fixture, not a product binary.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/livegate/livegate/pkg/appclient"
	"github.com/livegate/livegate/pkg/dtlssrtp"
	"github.com/livegate/livegate/pkg/logging"
	"github.com/livegate/livegate/pkg/sessionid"
	"github.com/rs/zerolog"
)

type config struct {
	signalingAddr string
	mediaAddr     string
	agentAddr     string
	sessionID     string
	rtxDelay      time.Duration
	agentRetry    time.Duration
	logLevel      string
	logFormat     string
}

func parseFlags(args []string, stderr io.Writer) (config, error) {
	var c config
	fs := flag.NewFlagSet("demoapp", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.signalingAddr, "signaling-addr", ":49100", "TCP address of the /sign_in websocket server")
	fs.StringVar(&c.mediaAddr, "media-addr", ":47998", "UDP address of the DTLS-SRTP responder")
	fs.StringVar(&c.agentAddr, "agent-app-addr", "127.0.0.1:8012", "the agent's loopback app API (host:port); empty reports nothing")
	fs.StringVar(&c.sessionID, "session-id", "", "accept only this session id (default: any valid one)")
	fs.DurationVar(&c.rtxDelay, "rtx-delay", 0, "delay between app-ready and rtx-ready")
	fs.DurationVar(&c.agentRetry, "agent-retry", 10*time.Second, "how long to retry each event while the agent is unreachable")
	fs.StringVar(&c.logLevel, "log-level", "info", "trace, debug, info, warn or error")
	fs.StringVar(&c.logFormat, "log-format", "auto", "auto, json or console")
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
	if c.rtxDelay < 0 || c.agentRetry <= 0 {
		return c, errors.New("--rtx-delay must not be negative and --agent-retry must be positive")
	}
	return c, nil
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stderr))
}

func run(ctx context.Context, args []string, stderr io.Writer) int {
	cfg, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "demoapp: %v\n", err)
		return 2
	}
	log, err := logging.New(logging.Options{Level: cfg.logLevel, Format: cfg.logFormat, Out: stderr})
	if err != nil {
		fmt.Fprintf(stderr, "demoapp: %v\n", err)
		return 2
	}
	if err := serve(ctx, cfg, log); err != nil {
		log.Error().Err(err).Msg("demoapp failed")
		return 1
	}
	return 0
}

func serve(ctx context.Context, cfg config, log zerolog.Logger) error {
	notify := func(event string) { log.Info().Str("event", event).Msg("app event (no agent configured)") }
	if cfg.agentAddr != "" {
		rep := appclient.NewReporter(cfg.agentAddr, cfg.agentRetry, log.With().Str("component", "agent_events").Logger())
		notify = rep.Notify
		repCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		go rep.Run(repCtx)
		defer func() {
			cancel()
			<-rep.Done()
		}()
	}

	media, err := dtlssrtp.NewResponder(ctx, cfg.mediaAddr,
		dtlssrtp.WithLogger(log.With().Str("component", "media").Logger()))
	if err != nil {
		return err
	}
	defer func() { _ = media.Close() }()

	ln, err := net.Listen("tcp", cfg.signalingAddr)
	if err != nil {
		return fmt.Errorf("listen on tcp %s: %w", cfg.signalingAddr, err)
	}
	mux := http.NewServeMux()
	sig := &signaling{sessionID: cfg.sessionID, notify: notify, log: log.With().Str("component", "signaling").Logger()}
	mux.Handle("GET /sign_in", sig)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	// Handlers live as long as their websocket; cancelling their base context on shutdown ends
	// them, which Shutdown alone would not do for hijacked connections.
	baseCtx, cancelBase := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelBase()
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return baseCtx },
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	log.Info().Str("signaling_addr", ln.Addr().String()).Str("media_addr", media.Addr().String()).
		Str("media_fingerprint", media.Fingerprint()).Str("session_id", cfg.sessionID).Msg("demo app listening")

	notify("app-ready")
	rtx := time.NewTimer(cfg.rtxDelay)
	defer rtx.Stop()
	for {
		select {
		case <-rtx.C:
			notify("rtx-ready")
		case err := <-served:
			return fmt.Errorf("signaling server: %w", err)
		case <-ctx.Done():
			log.Info().Msg("shutting down")
			cancelBase()
			shutdown, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			err := srv.Shutdown(shutdown)
			waitGroup(shutdown, &sig.active)
			return err
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
