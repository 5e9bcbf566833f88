// Command livegate-edgeproxy runs on each ingress host: it watches livegate routes in NATS and
// programs HAProxy (signaling) and the kernel (media). See docs/edgeproxy.md.
package main

import (
	"context"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/livegate/livegate/edgeproxy/internal/cli"
	"github.com/livegate/livegate/edgeproxy/internal/dataplaneapi"
	"github.com/livegate/livegate/edgeproxy/internal/haproxy"
	"github.com/rs/zerolog"
)

// dataplaneAPI holds the flags of --driver=dataplaneapi.
var dataplaneAPI dataplaneapi.Flags

// hooks plug the media plane and extra HAProxy drivers into the commands.
var hooks = cli.Hooks{KernelMedia: cli.KernelMedia, Drivers: map[string]cli.DriverFactory{
	"dataplaneapi": {Flags: dataplaneAPI.Register, New: func(_ context.Context, c haproxy.Config, log zerolog.Logger) (haproxy.Driver, error) {
		return dataplaneAPI.Driver(c, log)
	}},
}}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := dispatch(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// dispatch runs the subcommand args name, with this binary's hooks.
func dispatch(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return cli.Dispatch(ctx, cli.Commands(hooks, os.Stdin), args, stdout, stderr)
}
