// Package appserve is the start-up a livegate sample app shares: the command's exit codes and
// logger, the agent event reporter's lifetime, and the signaling HTTP server whose websocket
// handlers end on shutdown.
package appserve

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
	"syscall"
	"time"

	"github.com/livegate/livegate/pkg/appclient"
	"github.com/livegate/livegate/pkg/logging"
	"github.com/rs/zerolog"
)

// shutdownGrace bounds how long a stopping server waits for its requests.
const shutdownGrace = 5 * time.Second

// Flags are the flags every sample app takes.
type Flags struct {
	SignalingAddr string
	MediaAddr     string
	AgentAddr     string
	AgentRetry    time.Duration
	LogLevel      string
	LogFormat     string
}

// Help is what an app's --help says of its addresses.
type Help struct{ Signaling, Media, Agent string }

// Register adds the flags to fs, their defaults those the agent's --signaling-backend,
// --media-backend and app API default to.
func (f *Flags) Register(fs *flag.FlagSet, h Help) {
	fs.StringVar(&f.SignalingAddr, "signaling-addr", ":49100", h.Signaling)
	fs.StringVar(&f.MediaAddr, "media-addr", ":47998", h.Media)
	fs.StringVar(&f.AgentAddr, "agent-app-addr", "127.0.0.1:8012", h.Agent)
	fs.DurationVar(&f.AgentRetry, "agent-retry", 10*time.Second, "how long to retry each event while the agent is unreachable")
	fs.StringVar(&f.LogLevel, "log-level", "info", "trace, debug, info, warn or error")
	fs.StringVar(&f.LogFormat, "log-format", "auto", "auto, json or console")
}

// Main runs a command until SIGINT or SIGTERM cancels its context, and exits with its code.
func Main(run func(ctx context.Context, args []string, stderr io.Writer) int) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stderr)
	stop()
	os.Exit(code)
}

// Config is an app's configuration: its own flags and, embedded, the Flags every app takes.
type Config interface{ AppFlags() Flags }

// AppFlags makes a configuration that embeds Flags a Config.
func (f Flags) AppFlags() Flags { return f }

// Run parses args, makes the logger the flags ask for and serves: it returns 0 for --help, 2 for
// bad flags, 1 when serve fails and 0 when it ends cleanly. Errors are prefixed with name.
func Run[C Config](name string, args []string, stderr io.Writer, parse func([]string, io.Writer) (C, error), serve func(C, zerolog.Logger) error) int {
	cfg, err := parse(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return 2
	}
	flags := cfg.AppFlags()
	log, err := logging.New(logging.Options{Level: flags.LogLevel, Format: flags.LogFormat, Out: stderr})
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return 2
	}
	if err := serve(cfg, log); err != nil {
		log.Error().Err(err).Msg(name + " failed")
		return 1
	}
	return 0
}

// StartReporter runs a reporter of app events to the agent at agentAddr. Its loop outlives ctx's
// cancellation so that the events of a shutdown still leave; stop ends it and waits for it.
func StartReporter(ctx context.Context, agentAddr string, retry time.Duration, log zerolog.Logger) (rep *appclient.Reporter, stop func()) {
	rep = appclient.NewReporter(agentAddr, retry, log.With().Str("component", "agent_events").Logger())
	repCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	go rep.Run(repCtx)
	return rep, func() {
		cancel()
		<-rep.Done()
	}
}

// Server is the app's signaling HTTP server.
type Server struct {
	ln         net.Listener
	srv        *http.Server
	served     chan error
	cancelBase context.CancelFunc
}

// Listen serves mux on the TCP address addr, adding GET /healthz.
func Listen(ctx context.Context, addr string, mux *http.ServeMux) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on tcp %s: %w", addr, err)
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	// Handlers live as long as their websocket; cancelling their base context on shutdown ends
	// them, which Shutdown alone would not do for hijacked connections.
	baseCtx, cancelBase := context.WithCancel(context.WithoutCancel(ctx))
	s := &Server{
		ln: ln,
		srv: &http.Server{
			Handler:           mux,
			ReadHeaderTimeout: 10 * time.Second,
			BaseContext:       func(net.Listener) context.Context { return baseCtx },
		},
		served:     make(chan error, 1),
		cancelBase: cancelBase,
	}
	go func() { s.served <- s.srv.Serve(ln) }()
	return s, nil
}

// Addr is the address the server listens on.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Failed delivers the error that stopped the server before Shutdown.
func (s *Server) Failed() <-chan error { return s.served }

// Shutdown ends the handlers, stops the server and waits up to five seconds for its requests and
// then for drained (which may be nil), the app's own record of handlers still running.
func (s *Server) Shutdown(ctx context.Context, drained func(context.Context)) error {
	s.cancelBase()
	shutdown, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownGrace)
	defer cancel()
	err := s.srv.Shutdown(shutdown)
	if drained != nil {
		drained(shutdown)
	}
	return err
}
