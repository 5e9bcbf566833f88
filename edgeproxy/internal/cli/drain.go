package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"time"

	"github.com/livegate/livegate/edgeproxy/internal/admin"
)

// DrainCommand is `livegate-edgeproxy drain`: it asks the edge running here, through its admin
// endpoint (--admin-addr, read as run reads it: flag, environment, --config file, default), to
// drain (POST /v1/drain), to stop draining (--cancel: DELETE), or says how it stands (--show:
// GET), and prints the drain state. Exit status 0 when the edge answered as asked, 1 when it
// could not be reached or refused, 2 on bad usage.
func DrainCommand(h Hooks) Command {
	return func(ctx context.Context, args []string, stdout, stderr io.Writer) int {
		const name = "livegate-edgeproxy drain"
		fs := flag.NewFlagSet(name, flag.ContinueOnError)
		fs.SetOutput(stderr)
		var addr string
		registerAdminAddr(fs, &addr)
		registerConfig(fs)
		deadline := fs.Duration("deadline", time.Hour, "after this long, hand the pool sessions still served to the pool's other edges (0: keep them until they end)")
		cancel := fs.Bool("cancel", false, "stop draining: take new sessions again")
		show := fs.Bool("show", false, "only print the drain state")
		l := commandLoader(fs, h.settingNames(), "deadline", "cancel", "show")
		fs.Usage = l.Usage(fs, name+" [--deadline D] [--cancel] [--show] [--admin-addr ADDR] [--config FILE]", `
Drains the edge running on this host: it takes no new session in its pool (its /readyz answers
503, its heartbeat says draining), keeps serving the sessions it holds until they end, and at the
deadline hands the pool sessions still there to the pool's other edges (their clients come back
through the resume window). The drain survives a restart of the edge; --cancel ends it.
--admin-addr is read as run reads it, so the edge's own settings file and environment find it.`)
		src, err := load(fs, l, args)
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		if err != nil {
			return 2
		}
		deadlineSet := false
		fs.Visit(func(f *flag.Flag) { deadlineSet = deadlineSet || f.Name == "deadline" })
		if (*cancel && *show) || *deadline < 0 || (deadlineSet && (*cancel || *show)) {
			fmt.Fprintf(stderr, "%s: want at most one of --cancel and --show, --deadline (0 or more) only when draining\n(`%s -h` lists the flags)\n", name, name)
			return 2
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			fmt.Fprintf(stderr, "%s: %v\n", name, src.Errorf("admin-addr", "value %q: want host:port, such as %s", addr, DefaultAdminAddr))
			return 2
		}
		op := admin.DrainStart
		switch {
		case *cancel:
			op = admin.DrainCancel
		case *show:
			op = admin.DrainShow
		}
		d, err := admin.RequestDrain(ctx, addr, op, *deadline)
		if err != nil {
			hint := ""
			var ue *url.Error
			if errors.As(err, &ue) {
				// Nothing answered: the address may come from the environment or the file,
				// and a stale one is the likely cause.
				hint = fmt.Sprintf(" (is the edge running, with the admin address of %s?)", src.Source("admin-addr"))
			}
			fmt.Fprintf(stderr, "%s: %v%s\n", name, err, hint)
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
}
