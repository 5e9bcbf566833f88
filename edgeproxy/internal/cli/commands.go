package cli

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/livegate/livegate/pkg/buildinfo"
)

// Commands are livegate-edgeproxy's subcommands with h plugged in; stdin feeds `token`. A new
// subcommand is a Command here and a line of summaries.
func Commands(h Hooks, stdin io.Reader) map[string]Command {
	return map[string]Command{
		"run":            RunCommand(h),
		"haproxy-config": HAProxyConfigCommand(h),
		"check-config":   CheckConfigCommand(h),
		"cleanup":        CleanupCommand(h),
		"drain":          DrainCommand(h),
		"probe":          ProbeCommand,
		"status":         StatusCommand(h),
		"token":          TokenCommand(stdin),
	}
}

// Dispatch runs the command args name (run when they start with a flag) with the rest of args,
// and answers help and version itself. It returns the process exit code.
func Dispatch(ctx context.Context, commands map[string]Command, args []string, stdout, stderr io.Writer) int {
	name := "run"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		name, args = args[0], args[1:]
	} else if len(args) > 0 && isHelp(args[0]) {
		name = "help"
	}
	switch name {
	case "help":
		usage(stdout, commands)
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
		usage(stderr, commands)
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
	"cleanup":        "remove the media plane's nftables table, iptables chains and conntrack entries (HAProxy stays)",
	"drain":          "drain the edge running here: no new sessions, the others handed to its pool at a deadline (--cancel ends it)",
	"probe":          "check one session through an edge as a client would",
	"status":         "show edges, routes, endpoints, refusals and port use, read from NATS",
	"token":          "session tokens: make a key (keygen), issue a token (mint), check one (verify)",
}

func usage(w io.Writer, commands map[string]Command) {
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
