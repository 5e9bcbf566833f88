// Command streamapp is a sample streaming app for livegate: a real WebRTC peer (pion) standing in
// for a Kit app with its streaming library. It serves the /sign_in signaling websocket the edge
// routes to, sends a looped VP8 test pattern and echoes the input events a browser sends over a
// data channel. It is ICE-lite: its one candidate is the edge's public IP and the session's public
// UDP port, learnt from the agent's endpoint-assigned notification. It reports app-ready,
// rtx-ready, client-connected and client-disconnected to its agent.
//
//	streamapp [flags]               serve
//	streamapp gen-video FILE.ivf    make the test pattern with ffmpeg
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"path"

	"github.com/rs/zerolog"

	"github.com/livegate/livegate/pkg/appclient"
	"github.com/livegate/livegate/pkg/appserve"
	"github.com/livegate/livegate/pkg/commalist"
	"github.com/livegate/livegate/samples/streamapp/webclient"
)

type config struct {
	appserve.Flags
	video   string
	origins []string
}

func parseFlags(args []string, stderr io.Writer) (config, error) {
	var c config
	fs := flag.NewFlagSet("streamapp", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), "usage: streamapp [flags]\n       streamapp gen-video [-seconds N] FILE.ivf\n\nflags:\n")
		fs.PrintDefaults()
	}
	c.Register(fs, appserve.Help{
		Signaling: "TCP address of the /sign_in websocket server (the agent's --signaling-backend); also serves the web client on /",
		Media:     "UDP address of the WebRTC media (the agent's --media-backend); its port is the one every session uses",
		Agent:     "the agent's loopback app API (host:port)",
	})
	fs.StringVar(&c.video, "video", "", "VP8 IVF file to loop (make one with `streamapp gen-video`); required")
	origins := fs.String("allowed-origins", "*", "comma-separated origin host patterns (path.Match) a browser page may open the websocket from; * takes any, the session id being the credential")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	for _, o := range commalist.Split(*origins) {
		if _, err := path.Match(o, ""); err != nil {
			return c, fmt.Errorf("--allowed-origins %q: %w", o, err)
		}
		c.origins = append(c.origins, o)
	}
	switch {
	case fs.NArg() > 0:
		return c, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	case c.video == "":
		return c, errors.New("--video is required (make one with `streamapp gen-video FILE.ivf`)")
	case c.AgentAddr == "":
		return c, errors.New("--agent-app-addr is required: the app learns its session and public candidate from the agent")
	case c.AgentRetry <= 0:
		return c, errors.New("--agent-retry must be positive")
	}
	if _, err := mediaPort(c.MediaAddr); err != nil {
		return c, fmt.Errorf("--media-addr: %w", err)
	}
	return c, nil
}

func main() { appserve.Main(run) }

func run(ctx context.Context, args []string, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "gen-video" {
		return genVideoCommand(ctx, args[1:], stderr)
	}
	return appserve.Run("streamapp", args, stderr, parseFlags, func(cfg config, log zerolog.Logger) error { return serve(ctx, cfg, log) })
}

func serve(ctx context.Context, cfg config, log zerolog.Logger) error {
	video, err := loadVideo(cfg.video)
	if err != nil {
		return err
	}
	rep, stopRep := appserve.StartReporter(ctx, cfg.AgentAddr, cfg.AgentRetry, log)
	defer stopRep()

	media, err := newMedia(cfg.MediaAddr, video, log.With().Str("component", "media").Logger())
	if err != nil {
		return err
	}
	defer media.close()
	go media.play(ctx)

	app := newApp(media, cfg.origins, rep.Notify, log.With().Str("component", "signaling").Logger())
	defer app.closeAll()
	go appclient.Follow(ctx, cfg.AgentAddr, log.With().Str("component", "agent_events").Logger(), app.agentNotification)

	mux := http.NewServeMux()
	mux.Handle("GET /sign_in", app)
	mux.Handle("GET /", webclient.Handler())
	srv, err := appserve.Listen(ctx, cfg.SignalingAddr, mux)
	if err != nil {
		return err
	}
	log.Info().Str("signaling_addr", srv.Addr().String()).Str("media_addr", cfg.MediaAddr).Str("video", cfg.video).
		Int("video_frames", len(video.frames)).Msg("stream app listening")

	// The video is loaded and playing: the app and its "renderer" are ready at once.
	rep.Notify("app-ready")
	rep.Notify("rtx-ready")
	select {
	case err := <-srv.Failed():
		return fmt.Errorf("signaling server: %w", err)
	case <-ctx.Done():
		log.Info().Msg("shutting down")
		app.closeAll()
		return srv.Shutdown(ctx, nil)
	}
}
