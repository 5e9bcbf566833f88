// Command livegate-edgeproxy runs on each ingress host: it watches livegate routes in NATS and
// programs HAProxy (signaling) and the kernel (media). See docs/edgeproxy.md.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"

	"github.com/livegate/livegate/edgeproxy/internal/cli"
	"github.com/livegate/livegate/edgeproxy/internal/dataplaneapi"
	"github.com/livegate/livegate/edgeproxy/internal/haproxy"
	"github.com/livegate/livegate/edgeproxy/internal/probe"
	"github.com/livegate/livegate/edgeproxy/internal/status"
	"github.com/livegate/livegate/pkg/buildinfo"
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

// commands are the subcommands; "run" is the default.
var commands = map[string]cli.Command{
	"run":            cli.RunCommand(hooks),
	"haproxy-config": cli.HAProxyConfigCommand(hooks),
	"check-config":   cli.CheckConfigCommand(hooks),
	"cleanup":        cli.CleanupCommand,
	"probe":          probe.Run,
	"status":         status.Command,
	"token":          cli.TokenCommand(os.Stdin),
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := dispatch(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func dispatch(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	name := "run"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		name, args = args[0], args[1:]
	} else if len(args) > 0 && isHelp(args[0]) {
		name = "help"
	}
	switch name {
	case "help":
		usage(stdout)
		return 0
	case "version":
		fmt.Fprintln(stdout, buildinfo.String("livegate-edgeproxy"))
		return 0
	}
	if len(args) > 0 && (args[0] == "--version" || args[0] == "-version") {
		fmt.Fprintln(stdout, buildinfo.String("livegate-edgeproxy"))
		return 0
	}
	cmd, ok := commands[name]
	if !ok {
		fmt.Fprintf(stderr, "livegate-edgeproxy: unknown command %q\n", name)
		usage(stderr)
		return 2
	}
	return cmd(ctx, args, stdout, stderr)
}

// isHelp is a help flag given in place of a command: the command list, not run's flags.
func isHelp(arg string) bool {
	switch arg {
	case "-h", "-help", "--help":
		return true
	}
	return false
}

// summaries say what each command does, for the command list.
var summaries = map[string]string{
	"run":            "the edge: watch routes in NATS, program HAProxy and the kernel (the default)",
	"check-config":   "check settings, files and the HAProxy configuration without starting",
	"haproxy-config": "print the HAProxy configuration the settings give",
	"cleanup":        "remove the media plane's iptables chains and their conntrack entries (HAProxy stays)",
	"probe":          "check one session through an edge as a client would",
	"status":         "show edges, routes, endpoints, refusals and port use, read from NATS",
	"token":          "session tokens: make a key (keygen), issue a token (mint), check one (verify)",
}

func usage(w io.Writer) {
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	fmt.Fprint(w, "usage: livegate-edgeproxy [command] [flags]\n\ncommands:\n")
	for _, n := range names {
		fmt.Fprintf(w, "  %-15s %s\n", n, summaries[n])
	}
	fmt.Fprintf(w, "  %-15s %s\n\n'livegate-edgeproxy <command> -h' lists a command's flags.\n", "version", "print the build (also --version)")
}
