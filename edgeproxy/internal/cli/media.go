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
		p.Close()
		return nil, err
	}
	return p, nil
}

// CleanupCommand is `livegate-edgeproxy cleanup`: it removes the media plane's nftables table,
// every iptables rule and chain it wrote, and the conntrack entries of the ports they forwarded.
// Its log settings are read as run reads them (flag, environment, --config file, default).
func CleanupCommand(h Hooks) Command {
	return func(ctx context.Context, args []string, _, stderr io.Writer) int {
		const name = "livegate-edgeproxy cleanup"
		fs := flag.NewFlagSet(name, flag.ContinueOnError)
		fs.SetOutput(stderr)
		var level, format string
		registerLog(fs, &level, &format)
		registerConfig(fs)
		l := commandLoader(fs, h.settingNames())
		fs.Usage = l.Usage(fs, name+" [flags]", "Removes livegate's media nftables table, its iptables chains and their jumps, and their conntrack entries.")
		src, err := load(fs, l, args)
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		if err != nil {
			return 2
		}
		opts := logging.Options{Level: level, Format: format, Out: stderr}
		if _, err := logging.New(logging.Options{Level: level, Out: io.Discard}); err != nil {
			fmt.Fprintf(stderr, "%s: %v\n", name, src.Errorf("log-level", "%v", err))
			return 2
		}
		log, err := logging.New(opts)
		if err != nil {
			fmt.Fprintf(stderr, "%s: %v\n", name, src.Errorf("log-format", "%v", err))
			return 2
		}
		if err := mediaplane.Cleanup(ctx, mediaplane.WithLogger(log.With().Str("component", "media").Logger())); err != nil {
			log.Error().Err(err).Msg("cleanup failed")
			return 1
		}
		return 0
	}
}
