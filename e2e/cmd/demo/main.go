// Command demo runs livegate's whole path on one machine (`make demo`): an edge, two WebRTC apps
// with their agents and a headless Chromium per session, each in its own network namespace. It
// runs until Ctrl-C, SIGTERM or DEMO_SECONDS, then removes every namespace, process and rule it
// created.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/livegate/livegate/e2e/internal/demo"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	// Output piped into a reader that went away (`make demo | head`) must not kill the demo
	// before it cleans up: with SIGPIPE caught, such writes just fail.
	signal.Notify(make(chan os.Signal, 1), syscall.SIGPIPE)
	o := demo.Options{Prefix: "lged", Out: os.Stdout, Verbose: os.Getenv("DEMO_VERBOSE") != ""}
	flag.StringVar(&o.BinDir, "bin", "", "directory with livegate-agent, livegate-edgeproxy and streamapp already built (default: build them)")
	flag.StringVar(&o.ShotDir, "screenshots", "", "directory for the screenshots of the playing pages (default: the -bin directory, else the temporary directory)")
	flag.Parse()
	if v := os.Getenv("DEMO_SECONDS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			fmt.Fprintf(os.Stderr, "demo: DEMO_SECONDS=%q: want a whole number of seconds >= 1\n", v)
			os.Exit(2)
		}
		o.Duration = time.Duration(n) * time.Second
	}
	if err := demo.Run(ctx, o); err != nil {
		if ctx.Err() != nil {
			fmt.Fprintln(os.Stderr, "demo interrupted before it finished:", err)
		} else {
			fmt.Fprintln(os.Stderr, "demo failed:", err)
		}
		os.Exit(1)
	}
}
