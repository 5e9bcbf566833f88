// Command livegate-bench runs livegate's benchmarks (make bench, make bench-quick, make bench-scale). Each prints
// livegate's figures next to a baseline measured in the same run, and the ratio. It exits 1 when a
// measurement failed (no figure), 2 on a usage error, and 0 otherwise, a missed target included
// (its line says MISSED).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/livegate/livegate/e2e/bench/profiling"
	"github.com/livegate/livegate/e2e/bench/report"
	"github.com/livegate/livegate/e2e/bench/scalebench"
	"github.com/livegate/livegate/e2e/bench/suite"
	"github.com/livegate/livegate/e2e/internal/netns"
	"github.com/livegate/livegate/e2e/internal/stack"
)

const prefix = "lgb"

// scaleName is the optional scale benchmark, kept out of the default list (package scalebench).
const scaleName = "scale"

func main() { os.Exit(run()) }

func run() int {
	quick := flag.Bool("quick", false, "the pre-release subset: shorter runs of every benchmark (about two minutes)")
	only := flag.String("only", strings.Join(suite.All, ","), "comma-separated benchmarks to run: "+strings.Join(suite.All, ", ")+
		"; and "+scaleName+" (not run unless named: three edges on a three-node NATS cluster, about three minutes)")
	scaleSessions := flag.Int("scale-sessions", 9500, "sessions per edge in the "+scaleName+" benchmark")
	bin := flag.String("bin", "bin", "directory holding livegate-agent, livegate-edgeproxy and streamapp (make build)")
	natsServer := flag.String("nats-server", "", "nats-server binary (default: from PATH)")
	haproxy := flag.String("haproxy", "/usr/sbin/haproxy", "HAProxy binary for the reload baseline")
	profileDir := flag.String("profile", "", "directory for pprof CPU and heap profiles and execution traces of the edge and the agent; builds profiling variants of both there (go build -overlay) instead of using --bin")
	flag.Parse()

	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "livegate-bench: run as root (it creates network namespaces, and nftables and iptables rules inside them)")
		return 2
	}
	names := strings.Split(*only, ",")
	for _, n := range names {
		if !slices.Contains(suite.All, n) && n != scaleName {
			fmt.Fprintf(os.Stderr, "livegate-bench: unknown benchmark %q (want %s, %s)\n", n, strings.Join(suite.All, ", "), scaleName)
			return 2
		}
	}
	if *scaleSessions < 30 || *scaleSessions > 10000 {
		fmt.Fprintf(os.Stderr, "livegate-bench: --scale-sessions %d: want 30 to 10000 (an edge's --max-routes)\n", *scaleSessions)
		return 2
	}
	if *natsServer == "" {
		p, err := exec.LookPath("nats-server")
		if err != nil {
			fmt.Fprintln(os.Stderr, "livegate-bench: nats-server not found on PATH (make deps installs it); or pass --nats-server")
			return 2
		}
		*natsServer = p
	}
	c := suite.Config{
		Quick: *quick, Agent: filepath.Join(*bin, "livegate-agent"), Edge: filepath.Join(*bin, "livegate-edgeproxy"),
		StreamApp:  filepath.Join(*bin, "streamapp"),
		NATSServer: *natsServer, HAProxy: *haproxy, Prefix: prefix, Out: os.Stdout,
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *profileDir != "" {
		dir, err := filepath.Abs(*profileDir)
		if err != nil {
			fmt.Fprintln(os.Stderr, "livegate-bench:", err)
			return 2
		}
		root, err := stack.RepoRoot()
		if err != nil {
			fmt.Fprintln(os.Stderr, "livegate-bench:", err)
			return 2
		}
		binDir, err := profiling.Build(ctx, root, dir)
		if err != nil {
			fmt.Fprintln(os.Stderr, "livegate-bench: profiling build:", err)
			return 1
		}
		c.ProfileDir, c.Agent, c.Edge = dir, filepath.Join(binDir, "livegate-agent"), filepath.Join(binDir, "livegate-edgeproxy")
	}
	need := []string{c.Agent, c.Edge}
	if slices.Contains(names, suite.Browser) {
		need = append(need, c.StreamApp)
	}
	for _, p := range need {
		if _, err := os.Stat(p); err != nil {
			fmt.Fprintf(os.Stderr, "livegate-bench: %v (make build puts the binaries in bin/)\n", err)
			return 2
		}
	}

	// Namespaces a killed earlier run left behind.
	_, _ = netns.Sweep(ctx, prefix)
	mode := "full"
	if *quick {
		mode = "quick"
	}
	fmt.Printf("livegate-bench (%s): %s\n", mode, report.Machine(ctx))
	scale := slices.Contains(names, scaleName)
	names = slices.DeleteFunc(names, func(n string) bool { return n == scaleName })
	var results []report.Result
	if len(names) > 0 {
		results = suite.Run(ctx, c, names)
	}
	if scale {
		for _, r := range scalebench.Run(ctx, scalebench.Config{Edge: c.Edge, NATSServer: c.NATSServer, Prefix: prefix, PerEdge: *scaleSessions, Out: os.Stdout}) {
			r.Print(os.Stdout)
			results = append(results, r)
		}
	}
	// A missed target is a figure, and exits 0 (the line says MISSED); a measurement that
	// failed gives no figure, and exits 1.
	missed, failed := 0, 0
	for _, r := range results {
		switch r.Verdict {
		case report.Missed:
			missed++
		case report.Skipped:
			failed++
		}
	}
	fmt.Printf("livegate-bench: %d results, %d missed their target, %d failed\n", len(results), missed, failed)
	if failed > 0 || ctx.Err() != nil {
		return 1
	}
	return 0
}
