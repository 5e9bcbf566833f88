package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/livegate/livegate/edgeproxy/internal/status"
	"github.com/livegate/livegate/pkg/natsconn"
	"github.com/mattn/go-isatty"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

type statusOptions struct {
	nats     natsconn.Config
	urls     string
	output   string
	watch    bool
	interval time.Duration
	stale    time.Duration
	timeout  time.Duration
}

func parseStatus(args []string, stderr io.Writer) (*statusOptions, error) {
	o := &statusOptions{}
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, `usage: livegate-edgeproxy status [flags]

Reads NATS directly and shows the edges (health, heartbeat, routes, public UDP ports in use), every
route with the endpoint an edge assigned it, and for a route no edge serves, the latest refusal and
its reason. Needs read access to livegate_edges, livegate_routes, livegate_endpoints and the
LIVEGATE_EVENTS stream. Exits 0 when the report was read, 1 when NATS could not be read, 2 on bad
usage.

`)
		fs.PrintDefaults()
	}
	fs.StringVar(&o.urls, "nats-url", envOr("LIVEGATE_EDGEPROXY_NATS_URL", nats.DefaultURL), "comma-separated NATS server URLs [env LIVEGATE_EDGEPROXY_NATS_URL]")
	fs.StringVar(&o.nats.CredsFile, "nats-creds", "", "NATS .creds file")
	fs.StringVar(&o.nats.NKeyFile, "nats-nkey", "", "NATS nkey seed file")
	fs.StringVar(&o.nats.TLSCAFile, "nats-tls-ca", "", "CA file verifying the NATS servers")
	fs.StringVar(&o.nats.TLSCertFile, "nats-tls-cert", "", "client certificate for NATS")
	fs.StringVar(&o.nats.TLSKeyFile, "nats-tls-key", "", "client key for NATS")
	fs.StringVar(&o.output, "o", "text", "output: text (tables) or json")
	fs.BoolVar(&o.watch, "watch", false, "show the report again every --interval until interrupted")
	fs.DurationVar(&o.interval, "interval", 2*time.Second, "period of --watch")
	fs.DurationVar(&o.stale, "stale-after", 15*time.Second, "an edge whose heartbeat is older is shown stale (the edges' --edge-ttl)")
	fs.DurationVar(&o.timeout, "timeout", 10*time.Second, "limit for connecting to NATS and for each read")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	switch {
	case fs.NArg() > 0:
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	case o.output != "text" && o.output != "json":
		return nil, fmt.Errorf("-o %q: want text or json", o.output)
	case o.interval <= 0 || o.stale <= 0 || o.timeout <= 0:
		return nil, errors.New("--interval, --stale-after and --timeout must be positive")
	}
	o.nats.URLs = strings.Split(o.urls, ",")
	o.nats.Name = "livegate-edgeproxy-status"
	if err := o.nats.Validate(); err != nil {
		return nil, err
	}
	return o, nil
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// StatusCommand is `livegate-edgeproxy status`: the report of package status, read from NATS.
func StatusCommand(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	o, err := parseStatus(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "livegate-edgeproxy status: %v\n", err)
		return 2
	}
	cctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	nc, err := natsconn.Connect(cctx, o.nats, zerolog.Nop(), nats.RetryOnFailedConnect(false), nats.MaxReconnects(0), nats.Timeout(o.timeout))
	if err != nil {
		fmt.Fprintf(stderr, "livegate-edgeproxy status: %v (is NATS up? --nats-url)\n", err)
		return 1
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		fmt.Fprintf(stderr, "livegate-edgeproxy status: %v\n", err)
		return 1
	}
	redraw := o.watch && o.output == "text" && isTerminal(stdout)
	for {
		rctx, rcancel := context.WithTimeout(ctx, o.timeout)
		snap, err := status.Read(rctx, js, time.Now())
		rcancel()
		if err != nil && !o.watch {
			fmt.Fprintf(stderr, "livegate-edgeproxy status: %v\n", err)
			return 1
		}
		if err != nil {
			fmt.Fprintf(stderr, "livegate-edgeproxy status: %v\n", err)
		} else if err := writeStatus(stdout, o, status.Build(snap, o.stale), redraw); err != nil {
			return 1
		}
		if !o.watch {
			return 0
		}
		select {
		case <-ctx.Done():
			return 0
		case <-time.After(o.interval):
		}
	}
}

// writeStatus prints one report; under --watch on a terminal it replaces the previous one, elsewhere
// reports follow each other (one JSON document per line with -o json).
func writeStatus(w io.Writer, o *statusOptions, r status.Report, redraw bool) error {
	if o.output == "json" {
		b, err := json.Marshal(r)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(w, "%s\n", b)
		return err
	}
	if redraw {
		fmt.Fprint(w, "\033[H\033[2J")
	} else if o.watch {
		fmt.Fprintf(w, "--- %s\n", r.At.Format(time.RFC3339))
	}
	return status.WriteText(w, r)
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && isatty.IsTerminal(f.Fd())
}
