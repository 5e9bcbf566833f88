package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/rs/zerolog"

	"github.com/livegate/livegate/edgeproxy/internal/media"
	"github.com/livegate/livegate/edgeproxy/internal/mediaplane"
	"github.com/livegate/livegate/pkg/logging"
)

// KernelMedia builds the kernel media plane and recovers the mappings a previous run left, so
// that their ports are not handed to other routes before their own routes claim them back.
func KernelMedia(ctx context.Context, o MediaOptions, log zerolog.Logger) (media.Plane, error) {
	p, err := mediaplane.New(mediaplane.Config{
		PublicIP:     o.PublicIP,
		Ports:        o.Ports,
		Quarantine:   o.Quarantine,
		SNAT:         o.SNAT,
		BackendPorts: o.BackendPorts,
		BackendCIDRs: o.BackendCIDRs,
	}, mediaplane.WithLogger(log))
	if err != nil {
		return nil, err
	}
	if err := p.Recover(ctx); err != nil {
		return nil, err
	}
	return p, nil
}

// CleanupCommand is `livegate-edgeproxy cleanup`: it removes every iptables rule and chain the
// media plane wrote, and the conntrack entries of the ports they forwarded.
func CleanupCommand(ctx context.Context, args []string, _, stderr io.Writer) int {
	fs := flag.NewFlagSet("cleanup", flag.ContinueOnError)
	fs.SetOutput(stderr)
	logLevel := fs.String("log-level", "info", "log level: trace, debug, info, warn or error")
	logFormat := fs.String("log-format", "auto", "log format: auto, json or console")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: livegate-edgeproxy cleanup [flags]\nRemoves livegate's media iptables chains, their jumps and their conntrack entries.")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "livegate-edgeproxy cleanup: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	log, err := logging.New(logging.Options{Level: *logLevel, Format: *logFormat, Out: stderr})
	if err != nil {
		fmt.Fprintf(stderr, "livegate-edgeproxy cleanup: %v\n", err)
		return 2
	}
	if err := mediaplane.Cleanup(ctx, mediaplane.WithLogger(log.With().Str("component", "media").Logger())); err != nil {
		log.Error().Err(err).Msg("cleanup failed")
		return 1
	}
	return 0
}
