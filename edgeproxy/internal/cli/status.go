package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
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
	output   string
	watch    bool
	interval time.Duration
	stale    time.Duration
	timeout  time.Duration
}

// parseStatus reads status's flags: the NATS settings as run reads them (flag, environment,
// --config file, default), and the command's own switches from the command line.
func parseStatus(h Hooks, args []string, stderr io.Writer) (*statusOptions, error) {
	o := &statusOptions{}
	const name = "livegate-edgeproxy status"
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var nf natsconn.Flags
	nf.Register(fs, nats.DefaultURL, "")
	registerConfig(fs)
	fs.StringVar(&o.output, "o", "text", "output: text (tables) or json")
	fs.BoolVar(&o.watch, "watch", false, "show the report again every --interval until interrupted")
	fs.DurationVar(&o.interval, "interval", 2*time.Second, "period of --watch")
	fs.DurationVar(&o.stale, "stale-after", 15*time.Second, "an edge whose heartbeat is older is shown stale (the edges' --edge-ttl)")
	fs.DurationVar(&o.timeout, "timeout", 10*time.Second, "limit for connecting to NATS and for each read")
	l := commandLoader(fs, h.settingNames(), "o", "watch", "interval", "stale-after", "timeout")
	fs.Usage = l.Usage(fs, name+" [flags]", `
Reads NATS directly and shows the edges (health, heartbeat, routes, public UDP ports in use), every
route with the endpoint an edge assigned it, and for a route no edge serves, the latest refusal and
its reason. Needs read access to livegate_edges, livegate_routes, livegate_endpoints and the
LIVEGATE_EVENTS stream. Exits 0 when the report was read, 1 when NATS could not be read, 2 on bad
usage.`)
	src, err := load(fs, l, args)
	if err != nil {
		return nil, err
	}
	var errs []error
	switch {
	case o.output != "text" && o.output != "json":
		errs = append(errs, src.Errorf("o", "value %q: want text or json", o.output))
	case o.interval <= 0 || o.stale <= 0 || o.timeout <= 0:
		errs = append(errs, errors.New("--interval, --stale-after and --timeout must be positive"))
	}
	for _, r := range nf.Check(false) {
		errs = append(errs, src.Errorf(r.Flag, "%v", r.Err))
	}
	if err := errors.Join(errs...); err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return nil, err
	}
	o.nats = nf.Config("livegate-edgeproxy-status")
	return o, nil
}

// StatusCommand is `livegate-edgeproxy status`: the report of package status, read from NATS.
func StatusCommand(h Hooks) Command {
	return func(ctx context.Context, args []string, stdout, stderr io.Writer) int {
		return runStatus(ctx, h, args, stdout, stderr)
	}
}

func runStatus(ctx context.Context, h Hooks, args []string, stdout, stderr io.Writer) int {
	o, err := parseStatus(h, args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
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
