package admin

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"time"

	"github.com/livegate/livegate/edgeproxy/internal/placement"
)

// DrainCommand is `livegate-edgeproxy drain`: it asks the running edge, through its admin
// endpoint, to drain (POST /v1/drain), to stop draining (--cancel: DELETE), or says how it stands
// (--show: GET), and prints the drain state. Exit status 0 when the edge answered as asked, 1 when
// it could not be reached or refused, 2 on bad usage.
func DrainCommand(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("livegate-edgeproxy drain", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := os.Getenv("LIVEGATE_EDGEPROXY_ADMIN_ADDR")
	if addr == "" {
		addr = "127.0.0.1:9470"
	}
	fs.StringVar(&addr, "admin-addr", addr, "admin address of the running edge [env LIVEGATE_EDGEPROXY_ADMIN_ADDR]")
	deadline := fs.Duration("deadline", time.Hour, "after this long, hand the pool sessions still served to the pool's other edges (0: keep them until they end)")
	cancel := fs.Bool("cancel", false, "stop draining: take new sessions again")
	show := fs.Bool("show", false, "only print the drain state")
	fs.Usage = func() {
		fmt.Fprint(stderr, `usage: livegate-edgeproxy drain [--deadline D] [--cancel] [--show] [--admin-addr ADDR]

Drains the edge running on this host: it takes no new session in its pool (its /readyz answers
503, its heartbeat says draining), keeps serving the sessions it holds until they end, and at the
deadline hands the pool sessions still there to the pool's other edges (their clients come back
through the resume window). The drain survives a restart of the edge; --cancel ends it.

`)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	deadlineSet := false
	fs.Visit(func(f *flag.Flag) { deadlineSet = deadlineSet || f.Name == "deadline" })
	if fs.NArg() > 0 || (*cancel && *show) || *deadline < 0 || (deadlineSet && (*cancel || *show)) {
		fmt.Fprintln(stderr, "livegate-edgeproxy drain: want at most one of --cancel and --show, --deadline (0 or more) only when draining, and no argument")
		return 2
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		fmt.Fprintf(stderr, "livegate-edgeproxy drain: --admin-addr %q: want host:port, such as 127.0.0.1:9470\n", addr)
		return 2
	}
	method, u := http.MethodPost, url.URL{Scheme: "http", Host: addr, Path: "/v1/drain"}
	switch {
	case *cancel:
		method = http.MethodDelete
	case *show:
		method = http.MethodGet
	default:
		u.RawQuery = url.Values{"deadline": {deadline.String()}}.Encode()
	}
	d, err := call(ctx, method, u.String())
	if err != nil {
		fmt.Fprintf(stderr, "livegate-edgeproxy drain: %v\n", err)
		return 1
	}
	switch {
	case !d.Draining:
		fmt.Fprintln(stdout, "not draining: the edge takes new sessions")
	case d.Deadline.IsZero():
		fmt.Fprintf(stdout, "draining since %s: no new sessions; sessions served until they end\n", d.Since.UTC().Format(time.RFC3339))
	default:
		fmt.Fprintf(stdout, "draining since %s: no new sessions; pool sessions still served at %s go to the pool's other edges\n",
			d.Since.UTC().Format(time.RFC3339), d.Deadline.UTC().Format(time.RFC3339))
	}
	return 0
}

func call(ctx context.Context, method, u string) (placement.Drain, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var d placement.Drain
	req, err := http.NewRequestWithContext(ctx, method, u, nil)
	if err != nil {
		return d, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return d, fmt.Errorf("%s %s: %w (is the edge running, with this --admin-addr?)", method, u, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	if err != nil {
		return d, fmt.Errorf("%s %s: %w", method, u, err)
	}
	if resp.StatusCode != http.StatusOK {
		return d, fmt.Errorf("%s %s: HTTP %d: %s", method, u, resp.StatusCode, body)
	}
	if err := json.Unmarshal(body, &d); err != nil {
		return d, fmt.Errorf("%s %s: %w", method, u, err)
	}
	return d, nil
}
