// Command demo runs livegate's whole path on one machine (`make demo`): an edge, two apps with
// their agents and a client, each in its own network namespace. It runs until Ctrl-C, SIGTERM or
// DEMO_SECONDS, then removes every namespace, process and rule it created.
package main

import (
	"context"
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
	o := demo.Options{Prefix: "lgd", Out: os.Stdout, Verbose: os.Getenv("DEMO_VERBOSE") != ""}
	if v := os.Getenv("DEMO_SECONDS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			fmt.Fprintf(os.Stderr, "demo: DEMO_SECONDS=%q: want a whole number of seconds >= 1\n", v)
			os.Exit(2)
		}
		o.Duration = time.Duration(n) * time.Second
	}
	if err := demo.Run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "demo failed:", err)
		os.Exit(1)
	}
}
