// Package suite runs livegate's benchmarks and turns each into a report.Result: livegate's
// figures, a baseline measured in the same run, their ratio and the target. Quick runs the
// pre-release subset (about two minutes); the full run keeps the durations.
package suite

import (
	"context"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/livegate/livegate/e2e/bench/browserbench"
	"github.com/livegate/livegate/e2e/bench/cpuhog"
	"github.com/livegate/livegate/e2e/bench/edgebench"
	"github.com/livegate/livegate/e2e/bench/haproxyreload"
	"github.com/livegate/livegate/e2e/bench/httpbench"
	"github.com/livegate/livegate/e2e/bench/iptbase"
	"github.com/livegate/livegate/e2e/bench/mediabench"
	"github.com/livegate/livegate/e2e/bench/procstat"
	"github.com/livegate/livegate/e2e/bench/profiling"
	"github.com/livegate/livegate/e2e/bench/report"
	"github.com/livegate/livegate/e2e/bench/restbench"
	"github.com/livegate/livegate/e2e/bench/stats"
	"github.com/livegate/livegate/e2e/bench/udpflow"
	"github.com/livegate/livegate/e2e/bench/wsbench"
	"github.com/livegate/livegate/e2e/internal/netns"
	"github.com/livegate/livegate/e2e/internal/stack"
	"github.com/livegate/livegate/pkg/freeport"
)

// Names of the benchmarks, in the order they run.
const (
	Route     = "route"
	Signaling = "signaling"
	Bulk      = "bulk"
	Media     = "media"
	REST      = "rest"
	DPA       = "dpa"
	Browser   = "browser"
)

// All lists every benchmark.
var All = []string{Route, Signaling, Bulk, Media, REST, DPA, Browser}

// Config says what to run and with which programs.
type Config struct {
	Quick      bool
	Agent      string // livegate-agent
	Edge       string // livegate-edgeproxy
	StreamApp  string // the WebRTC sample app
	NATSServer string
	HAProxy    string
	// Prefix starts every namespace name.
	Prefix string
	Out    io.Writer
	// ProfileDir, when set, receives CPU and heap profiles and execution traces of the edge and
	// the agent (which must then be profiling builds, see package profiling).
	ProfileDir string
}

// edgePprof is where a profiling edge serves pprof, inside its own namespace.
const edgePprof = "127.0.0.1:6060"

func (c Config) edgeEnv() []string {
	if c.ProfileDir == "" {
		return nil
	}
	return []string{profiling.EnvVar + "=" + edgePprof}
}

// edgeLog is where a profiled run keeps the edge's log (at level info, with its per-sync
// figures); "" when not profiling.
func (c Config) edgeLog(name string) string {
	if c.ProfileDir == "" {
		return ""
	}
	return filepath.Join(c.ProfileDir, name)
}

// profile records a pprof endpoint into ProfileDir/file and notes where it went; failures are
// noted too, never fatal.
func (c Config) profile(ctx context.Context, client *http.Client, base, endpoint, file string, notes *[]string, mu *sync.Mutex) {
	out := filepath.Join(c.ProfileDir, file)
	err := profiling.Fetch(ctx, client, base, endpoint, out)
	mu.Lock()
	defer mu.Unlock()
	if err != nil {
		*notes = append(*notes, "profile "+file+": "+err.Error())
		return
	}
	*notes = append(*notes, "profile: "+out)
}

// Run runs the named benchmarks and prints each result as it completes.
func Run(ctx context.Context, c Config, names []string) []report.Result {
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	var all []report.Result
	emit := func(rs ...report.Result) {
		for _, r := range rs {
			r.Print(c.Out)
			all = append(all, r)
		}
	}
	if want[Route] || want[Signaling] {
		emit(c.routeAndSignaling(ctx, want[Route], want[Signaling])...)
	}
	if want[Bulk] {
		emit(c.bulk(ctx)...)
	}
	if want[Media] {
		emit(c.media(ctx)...)
	}
	if want[REST] {
		emit(c.rest(ctx)...)
	}
	if want[DPA] {
		emit(c.dataplaneAPI(ctx)...)
	}
	if want[Browser] {
		emit(c.browser(ctx))
	}
	return all
}

func failed(name string, err error) report.Result {
	return report.Result{Name: name, Livegate: "failed: " + err.Error(), Verdict: report.Skipped}
}

func (c Config) pick(quick, full int) int {
	if c.Quick {
		return quick
	}
	return full
}

func (c Config) pickD(quick, full time.Duration) time.Duration {
	if c.Quick {
		return quick
	}
	return full
}

func (c Config) topology(ctx context.Context) (*netns.Topology, error) {
	return netns.NewTopology(ctx, c.Prefix, 1)
}

// routeAndSignaling shares one edge between the churn run and the websocket run.
func (c Config) routeAndSignaling(ctx context.Context, route, signaling bool) []report.Result {
	var out []report.Result
	topo, err := c.topology(ctx)
	if err != nil {
		return []report.Result{failed("route-latency", err)}
	}
	defer func() { _ = topo.Close(context.WithoutCancel(ctx)) }()
	// At debug the edge logs each pass's phases, from which the route benchmark tells where the
	// time went.
	env, err := edgebench.NewEnv(ctx, topo, edgebench.Options{Edge: c.Edge, NATSServer: c.NATSServer, Echo: true, Env: c.edgeEnv(),
		LogFile: c.edgeLog("route-edge.log"), LogLevel: "debug"})
	if err != nil {
		return []report.Result{failed("route-latency", err)}
	}
	defer env.Close()
	if err := env.StartEdge(ctx); err != nil {
		return []report.Result{failed("route-latency", err)}
	}
	if err := env.WaitEdgeHealthy(ctx, 30*time.Second); err != nil {
		return []report.Result{failed("route-latency", err)}
	}
	if route {
		out = append(out, c.routeLatency(ctx, env)...)
	}
	if signaling {
		out = append(out, c.signaling(ctx, env))
	}
	return out
}

// Targets of #20 for the route benchmarks.
const (
	routeP50     = time.Millisecond
	routeP99     = 2 * time.Millisecond
	routeHogP99  = 5 * time.Millisecond
	unroutedP99  = 5 * time.Millisecond
	coldStartMax = 500 * time.Millisecond
)

// routeLatency runs the churn on a quiet host, then again with a CPU hog on every core, and
// reports for each the new routes' time to routable and the ended routes' time to unroutable.
func (c Config) routeLatency(ctx context.Context, env *edgebench.Env) []report.Result {
	const name = "route-latency"
	o := edgebench.ChurnOptions{Held: c.pick(200, 500), Rate: 100, Duration: c.pickD(10*time.Second, 30*time.Second), Timeout: 10 * time.Second}
	var profNotes []string
	var profMu sync.Mutex
	var profWG sync.WaitGroup
	if c.ProfileDir != "" {
		client := env.Topo.Edge.HTTPClient(2 * time.Minute)
		secs := int(o.Duration/time.Second) - 3
		profWG.Go(func() {
			time.Sleep(time.Second)
			c.profile(ctx, client, "http://"+edgePprof, fmt.Sprintf("profile?seconds=%d", secs), "route-edge-cpu.pprof", &profNotes, &profMu)
			c.profile(ctx, client, "http://"+edgePprof, "trace?seconds=1", "route-edge.trace", &profNotes, &profMu)
		})
	}
	lg, err := env.Churn(ctx, o)
	profWG.Wait()
	if err != nil {
		return []report.Result{failed(name, err)}
	}
	// The measure's own floor, on the same server and namespaces, right after the churn.
	held := lg.Next
	methodFloor := floorNote(ctx, env, held, c.pick(300, 1000), o.Rate, lg)
	floorText := "not measured"
	if floor, err := iptbase.Floor(ctx, c.Prefix+strconv.FormatInt(int64(os.Getpid()), 36)+"-flr", o.Held); err == nil {
		floorText = fmt.Sprintf("%s fed to a running iptables-restore (as the edge did per route before its DNAT became an nftables map), %s starting one per batch; a batch deleting one rule and appending one, every %s as in the churn: p50 %s, p90 %s (the appended rule's xtables match and target wait for the release of the rules deleted before)",
			stats.FormatDuration(floor.Fed), stats.FormatDuration(floor.Exec), iptbase.ChurnPause, stats.FormatDuration(floor.Churn), stats.FormatDuration(floor.ChurnP90))
	} else {
		floorText += ": " + err.Error()
	}
	base, err := haproxyreload.Run(ctx, haproxyreload.Options{Binary: c.HAProxy, Held: 100, Changes: c.pick(20, 50)})
	if err != nil {
		return []report.Result{failed(name, fmt.Errorf("haproxy reload baseline: %w", err))}
	}
	churnNote := fmt.Sprintf("churn: %d held, %d new and %d ended per second for %s (%d added, %d ended); routable = HAProxy `get map` finds the session AND a UDP probe echoes back through the public port's DNAT",
		o.Held, o.Rate, o.Rate, o.Duration, lg.Added, lg.Ended)
	live := routableResult(name, lg, base, routeP99, routeP50)
	live.Notes = append([]string{
		fmt.Sprintf("the edge's own livegate_edge_programming_seconds over the churn: p50 ≤ %s, p99 ≤ %s (histogram bucket bounds)", seconds(lg.EdgeP50), seconds(lg.EdgeP99)),
		"where the time went, " + lg.Breakdown.String(),
		methodFloor,
		fmt.Sprintf("iptables floor of one pass, the way earlier edges wrote a route, same run: %s (median of 7 two-rule batches each, 50 of the churn batches, into a namespace holding %d rules)", floorText, o.Held),
		churnNote,
		"baseline: one backend per session in haproxy.cfg, rewrite + master-CLI reload, one change at a time (the most favourable case), timed until the new backend answers",
	}, live.Notes...)
	live.Notes = append(live.Notes, profNotes...)
	out := []report.Result{live, unroutableResult("route-unroutable", lg, base)}

	// The same churn with every core also busy: a noisy host is the normal case.
	hogged := o
	hogged.First = held + 2
	hogged.Duration = c.pickD(5*time.Second, 15*time.Second)
	hog, err := cpuhog.Start(hogged.Duration + 2*time.Minute)
	if err != nil {
		return append(out, failed(name+"-cpu-hog", err))
	}
	hlg, err := env.Churn(ctx, hogged)
	if err != nil {
		hog.Stop()
		return append(out, failed(name+"-cpu-hog", err))
	}
	hogFloor := floorNote(ctx, env, held+1, c.pick(200, 500), o.Rate, hlg)
	hbase, err := haproxyreload.Run(ctx, haproxyreload.Options{Binary: c.HAProxy, Held: 100, Changes: c.pick(10, 20)})
	cores := hog.Cores()
	hog.Stop()
	if err != nil {
		return append(out, failed(name+"-cpu-hog", fmt.Errorf("haproxy reload baseline: %w", err)))
	}
	hr := routableResult(name+"-cpu-hog", hlg, hbase, routeHogP99, 0)
	hr.Notes = append([]string{
		"where the time went, " + hlg.Breakdown.String(),
		hogFloor,
		fmt.Sprintf("ended routes unroutable: p50=%s p99=%s (n=%d, failed %d)", stats.FormatDuration(hlg.Unroutable.Percentile(50)), stats.FormatDuration(hlg.Unroutable.Percentile(99)), len(hlg.Unroutable), hlg.UnroutableFailures),
		fmt.Sprintf("a busy shell loop per core (%d) at the default priority for the churn and the baseline; churn: %d held, %d new and %d ended per second for %s (%d added, %d ended)",
			cores, hogged.Held, hogged.Rate, hogged.Rate, hogged.Duration, hlg.Added, hlg.Ended),
		fmt.Sprintf("without the hog in the same run: p99 %s; under it %s that", stats.FormatDuration(lg.Routable.Percentile(99)),
			stats.FormatRatio(stats.Ratio(float64(hlg.Routable.Percentile(99)), float64(lg.Routable.Percentile(99))))),
	}, hr.Notes...)
	return append(out, hr)
}

// floorNote measures the floor of the route measure (see edgebench.Env.Floor) after a churn
// and says how much of the churn's median is above it; held is an unused route index.
func floorNote(ctx context.Context, env *edgebench.Env, held, n, rate int, lg edgebench.ChurnResult) string {
	f, err := env.Floor(ctx, held, n, rate)
	if err != nil {
		return "floor of the measure: not measured: " + err.Error()
	}
	p50 := lg.Routable.Percentile(50)
	return fmt.Sprintf("floor of the measure, same run (the bench's route write, a stand-in edge that does nothing but write the endpoint when its watch delivers the key, the bench's watch of that endpoint, and the probe through a port already forwarded; no edge work): %s; livegate's routable p50 is %s above it (%s the floor)",
		f, stats.FormatDuration(p50-f.Total.Percentile(50)), stats.FormatRatio(stats.Ratio(float64(p50), float64(f.Total.Percentile(50)))))
}

// routableResult reports new routes' time to routable against the reload baseline; p50Target
// zero leaves the median without a target.
func routableResult(name string, lg edgebench.ChurnResult, base haproxyreload.Result, p99Target, p50Target time.Duration) report.Result {
	p50, p99 := lg.Routable.Percentile(50), lg.Routable.Percentile(99)
	target := "p99 ≤ " + stats.FormatDuration(p99Target)
	met := len(lg.Routable) > 0 && lg.Failures == 0 && p99 <= p99Target
	if p50Target > 0 {
		target += ", p50 ≤ " + stats.FormatDuration(p50Target)
		met = met && p50 <= p50Target
	}
	r := report.Result{
		Name: name,
		Livegate: fmt.Sprintf("p50=%s p99=%s (n=%d, failed %d; endpoint published p50=%s p99=%s)",
			stats.FormatDuration(p50), stats.FormatDuration(p99), len(lg.Routable), lg.Failures,
			stats.FormatDuration(lg.Endpoint.Percentile(50)), stats.FormatDuration(lg.Endpoint.Percentile(99))),
		Baseline: fmt.Sprintf("haproxy-reload p50=%s p99=%s (n=%d, failed %d)",
			stats.FormatDuration(base.Latencies.Percentile(50)), stats.FormatDuration(base.Latencies.Percentile(99)), len(base.Latencies), base.Failures),
		Ratio:   "ratio p99 = " + stats.FormatRatio(stats.Ratio(float64(p99), float64(base.Latencies.Percentile(99)))),
		Target:  target,
		Verdict: report.Verdictf(met),
	}
	if lg.FirstErr != nil {
		r.Notes = append(r.Notes, "first failure: "+lg.FirstErr.Error())
	}
	return r
}

// unroutableResult reports ended routes' time to unroutable; the baseline is the same run's
// reload, which is how a backend leaves HAProxy without livegate.
func unroutableResult(name string, lg edgebench.ChurnResult, base haproxyreload.Result) report.Result {
	p99 := lg.Unroutable.Percentile(99)
	r := report.Result{
		Name: name,
		Livegate: fmt.Sprintf("ended routes unroutable p50=%s p99=%s (n=%d, failed %d)",
			stats.FormatDuration(lg.Unroutable.Percentile(50)), stats.FormatDuration(p99), len(lg.Unroutable), lg.UnroutableFailures),
		Baseline: fmt.Sprintf("haproxy-reload p99=%s", stats.FormatDuration(base.Latencies.Percentile(99))),
		Ratio:    "ratio p99 = " + stats.FormatRatio(stats.Ratio(float64(p99), float64(base.Latencies.Percentile(99)))),
		Target:   "p99 ≤ " + stats.FormatDuration(unroutedP99),
		Verdict:  report.Verdictf(len(lg.Unroutable) > 0 && lg.UnroutableFailures == 0 && p99 <= unroutedP99),
		Notes: []string{
			"from the KV delete of a route the bench had probed until HAProxy's map no longer finds its session AND the probed flow (same source port) goes unanswered: its datagrams are echoed while the port's DNAT map element or the flow's conntrack entry is left, so unanswered means both are gone (the time is that of the first of " +
				"3 unanswered probes in a row, each given 20 ms); the held routes seeded before the churn were never probed and are not counted",
		},
	}
	if lg.FirstUnroutableErr != nil {
		r.Notes = append(r.Notes, "first failure: "+lg.FirstUnroutableErr.Error())
	}
	return r
}

func (c Config) signaling(ctx context.Context, env *edgebench.Env) report.Result {
	const name = "signaling"
	// A route whose signaling backend is a websocket server in node 1.
	const idx = 9000
	backend := edgebench.SignalingBackend(idx)
	var ln net.Listener
	if err := env.Topo.Nodes[0].Do(func() (err error) {
		ln, err = net.Listen("tcp", backend.String())
		return err
	}); err != nil {
		return failed(name, err)
	}
	defer ln.Close()
	go wsbench.Serve(ln)
	if err := env.PutRoute(ctx, idx, 5*time.Minute); err != nil {
		return failed(name, err)
	}
	n, conc, d := c.pick(100, 300), 8, c.pickD(3*time.Second, 10*time.Second)
	via := wsbench.Target{Dial: env.Topo.Client.Dial, Addr: netip.AddrPortFrom(netns.EdgePublic, edgebench.SignalingPort).String(), TLS: true, SessionID: edgebench.SessionID(idx)}
	deadline := time.Now().Add(10 * time.Second)
	for wsbench.Handshake(ctx, via) != nil {
		if time.Now().After(deadline) {
			return failed(name, fmt.Errorf("no websocket through HAProxy within 10s: %w", wsbench.Handshake(ctx, via)))
		}
		time.Sleep(50 * time.Millisecond)
	}
	direct := wsbench.Target{Dial: env.Topo.Client.Dial, Addr: backend.String(), SessionID: edgebench.SessionID(idx)}
	lg := wsbench.Measure(ctx, via, n, conc, d)
	base := wsbench.Measure(ctx, direct, n, conc, d)
	r := report.Result{
		Name: name,
		Livegate: fmt.Sprintf("via HAProxy :48322 (TLS) handshake p50=%s p99=%s, %s conn/s (%d errors)",
			stats.FormatDuration(lg.Latency.Percentile(50)), stats.FormatDuration(lg.Latency.Percentile(99)), stats.FormatRate(lg.ConnRate), lg.Errors),
		Baseline: fmt.Sprintf("direct to backend (plain ws) p50=%s p99=%s, %s conn/s (%d errors)",
			stats.FormatDuration(base.Latency.Percentile(50)), stats.FormatDuration(base.Latency.Percentile(99)), stats.FormatRate(base.ConnRate), base.Errors),
		Ratio: fmt.Sprintf("ratio p50 = %s, conn/s = %s", stats.FormatRatio(stats.Ratio(float64(lg.Latency.Percentile(50)), float64(base.Latency.Percentile(50)))),
			stats.FormatRatio(stats.Ratio(lg.ConnRate, base.ConnRate))),
		Verdict: report.Info,
		Notes:   []string{fmt.Sprintf("%d sequential handshakes for latency, then %d concurrent clients for %s, from the client namespace; every TLS handshake is a full one (no resumption), which the direct path does not pay", n, conc, d)},
	}
	if lg.FirstErr != nil {
		r.Notes = append(r.Notes, "first error via HAProxy: "+lg.FirstErr.Error())
	}
	return r
}

func (c Config) bulk(ctx context.Context) []report.Result {
	const name = "bulk-cold-start"
	const routes = 9500
	topo, err := c.topology(ctx)
	if err != nil {
		return []report.Result{failed(name, err)}
	}
	defer func() { _ = topo.Close(context.WithoutCancel(ctx)) }()
	env, err := edgebench.NewEnv(ctx, topo, edgebench.Options{Edge: c.Edge, NATSServer: c.NATSServer, Echo: true, Env: c.edgeEnv(), LogFile: c.edgeLog("bulk-edge.log")})
	if err != nil {
		return []report.Result{failed(name, err)}
	}
	defer env.Close()
	// The full run measures the CPU at rest over one whole --resync period (30 s by default), so
	// the periodic full pass is in the figure in its due proportion.
	lg, err := env.Bulk(ctx, routes, 60*time.Second, c.pickD(6*time.Second, 30*time.Second))
	if err != nil {
		return []report.Result{failed(name, err)}
	}
	ipt, err := iptbase.Run(ctx, c.Prefix+strconv.FormatInt(int64(os.Getpid()), 36)+"-ipt", iptbase.Options{Rules: c.pick(300, 1000), Budget: c.pickD(10*time.Second, 30*time.Second)})
	if err != nil {
		return []report.Result{failed(name, fmt.Errorf("iptables baseline: %w", err))}
	}
	projected := iptbase.Extrapolate(ipt.PerRule, routes)
	flat := ipt.Total / time.Duration(max(len(ipt.PerRule), 1)) * routes
	verdict := report.Unsure
	switch {
	case lg.CheckedHi <= coldStartMax:
		verdict = report.Met
	case lg.CheckedLo > coldStartMax:
		verdict = report.Missed
	}
	bulk := report.Result{
		Name: name,
		Livegate: fmt.Sprintf("%d routes routable after %s–%s (HAProxy map complete and UDP probes answered through the DNAT; every port seen in the DNAT map at %s; endpoints all published at %s)",
			routes, stats.FormatDuration(lg.CheckedLo), stats.FormatDuration(lg.CheckedHi), stats.FormatDuration(lg.DNATCounted), stats.FormatDuration(lg.Endpoints)),
		Baseline: fmt.Sprintf("one iptables process per rule: %d rules in %s (%s/rule), extrapolated to %d: %s at a flat cost per rule, %s with the fitted growth of +%s per rule already in the chain",
			len(ipt.PerRule), stats.FormatDuration(ipt.Total), stats.FormatDuration(ipt.Total/time.Duration(max(len(ipt.PerRule), 1))), routes, stats.FormatDuration(flat), stats.FormatDuration(projected), iptbase.Slope(ipt.PerRule)),
		Ratio:   "ratio = " + stats.FormatRatio(stats.Ratio(float64(lg.CheckedHi), float64(flat))) + " (against the flat projection)",
		Target:  "≤ 500 ms",
		Verdict: verdict,
		Notes: []string{
			fmt.Sprintf("livegate's time runs from starting the edge process (which starts HAProxy itself) against a bucket already holding every route; it is bracketed by polling `show map` and by rounds of UDP probes to %d public ports spread over the range (the edge writes the DNAT map's elements over netlink)", 64),
			fmt.Sprintf("the baseline only adds DNAT rules (no HAProxy, no conntrack, no KV); for reference one iptables-restore of the same %d rules took %s", len(ipt.PerRule), stats.FormatDuration(ipt.Restore)),
		},
	}
	mem := report.Result{
		Name: "edge-resources",
		Livegate: fmt.Sprintf("%d routes held: edge RSS=%.1fMiB (anonymous %.1fMiB, file-backed %.1fMiB; peak %.1fMiB), CPU at rest %.1f%% of a core (+%.1f%% in its child processes, HAProxy included); supervised HAProxy RSS=%.1fMiB; %d helper process(es) RSS=%.1fMiB",
			routes, stats.MiB(lg.EdgeMem.RSS), stats.MiB(lg.EdgeMem.Anon), stats.MiB(lg.EdgeMem.FileMap), stats.MiB(lg.EdgeMem.HWM), lg.CPUAtRest*100, lg.ChildCPUAtRest*100, stats.MiB(lg.HAProxyRSS), lg.HelperPids, stats.MiB(lg.HelperRSS)),
		Target:  "RSS ≤ 64 MiB, ~0 CPU at rest (< 2% of a core, its processes included)",
		Verdict: report.Verdictf(lg.EdgeMem.RSS <= 64<<20 && lg.CPUAtRest+lg.ChildCPUAtRest < 0.02),
		Notes: []string{fmt.Sprintf("Go runtime (edge /metrics): heap in use %.1fMiB, heap idle %.1fMiB of which released to the OS %.1fMiB, runtime total from the OS %.1fMiB, %d goroutines",
			lg.HeapInuse/(1<<20), lg.HeapIdle/(1<<20), lg.HeapReleased/(1<<20), lg.GoSys/(1<<20), int(lg.Goroutines)),
			fmt.Sprintf("CPU at rest over %s, from 3 s after every route was routable; the edge's periodic full pass (read-back of HAProxy's map, of the DNAT map and of the iptables rules) runs every 30 s (--resync); child CPU counts the running children (HAProxy, the long-lived iptables-restore while it lasts) as it is spent, and those waited for", c.pickD(6*time.Second, 30*time.Second)),
			"memory is read 3 s after every route was routable; the helper is the long-lived iptables-restore the edge wrote its static SNAT and forward rules with at start, stopped after 10 s without a batch"},
	}
	if c.ProfileDir != "" {
		var mu sync.Mutex
		client := env.Topo.Edge.HTTPClient(2 * time.Minute)
		c.profile(ctx, client, "http://"+edgePprof, fmt.Sprintf("profile?seconds=%d", int(c.pickD(6*time.Second, 15*time.Second)/time.Second)), "rest-edge-cpu.pprof", &mem.Notes, &mu)
		c.profile(ctx, client, "http://"+edgePprof, "heap?gc=1", "rest-edge-heap.pprof", &mem.Notes, &mu)
	}
	return []report.Result{bulk, mem}
}

// media measures the media paths in one run: the edge's DNAT against the direct path and coturn
// (media-forwarding), and the edge's own TURN relay against coturn (turn-relay).
func (c Config) media(ctx context.Context) []report.Result {
	const name, turnName = "media-forwarding", "turn-relay"
	fail := func(err error) []report.Result { return []report.Result{failed(name, err), failed(turnName, err)} }
	topo, err := c.topology(ctx)
	if err != nil {
		return fail(err)
	}
	defer func() { _ = topo.Close(context.WithoutCancel(ctx)) }()
	secretDir, err := os.MkdirTemp("", "lgb-turn-")
	if err != nil {
		return fail(err)
	}
	defer os.RemoveAll(secretDir)
	secret := filepath.Join(secretDir, "secret")
	if err := os.WriteFile(secret, []byte("bench-turn-secret-0123456789\n"), 0o600); err != nil {
		return fail(err)
	}
	env, err := edgebench.NewEnv(ctx, topo, edgebench.Options{Edge: c.Edge, NATSServer: c.NATSServer,
		ExtraArgs: []string{"--turn", "--turn-secret-file", secret, "--turn-port", strconv.Itoa(turnServer.Port), "--turn-tls-port", "0"}})
	if err != nil {
		return fail(err)
	}
	defer env.Close()
	if err := env.StartEdge(ctx); err != nil {
		return fail(err)
	}
	if err := env.WaitEdgeHealthy(ctx, 30*time.Second); err != nil {
		return fail(err)
	}
	// Route i's media backend is 30000+i+1: route 999 forwards to the sink's port.
	const idx = mediabench.BackendPort - 30000 - 1
	eps := env.WatchEndpoints(ctx)
	dnat := func(ctx context.Context, backend netip.AddrPort) (netip.AddrPort, error) {
		if backend != edgebench.MediaBackend(idx) {
			return netip.AddrPort{}, fmt.Errorf("sink %s is not route %d's media backend %s", backend, idx, edgebench.MediaBackend(idx))
		}
		if err := env.PutRoute(ctx, idx, 5*time.Minute); err != nil {
			return netip.AddrPort{}, err
		}
		port, _, err := eps.Wait(ctx, edgebench.RouteKey(idx), 10*time.Second)
		return netip.AddrPortFrom(netns.EdgePublic, port), err
	}
	const maxLoss = 0.01
	o := udpflow.Options{Size: 1200, Start: 20000, Factor: 1.5, Steps: 9, StepTime: 500 * time.Millisecond, MaxLoss: maxLoss}
	if !c.Quick {
		o.Factor, o.Steps, o.StepTime = 1.25, 16, time.Second
	}
	edgeTURN := func(ctx context.Context, _ netip.AddrPort) (*net.UDPAddr, string, string, error) {
		t, err := env.TURNCredential(ctx, idx)
		return turnServer, t.GetUsername(), t.GetCredential(), err
	}
	res, err := mediabench.Run(ctx, topo, dnat, edgeTURN, o)
	if err != nil {
		return fail(err)
	}
	edge, okE := udpflow.Best(res.Edge, maxLoss)
	direct, okD := udpflow.Best(res.Direct, maxLoss)
	r := report.Result{Name: name, Target: "≥ 0.9× direct and ≥ 3× coturn"}
	r.Livegate = fmt.Sprintf("edge DNAT %s pps at loss %.2f%%", stats.FormatRate(edge.Rate()), edge.Loss()*100)
	r.Baseline = fmt.Sprintf("direct %s pps at loss %.2f%%", stats.FormatRate(direct.Rate()), direct.Loss()*100)
	vsDirect := stats.Ratio(edge.Rate(), direct.Rate())
	ratio := "ratio vs direct " + stats.FormatRatio(vsDirect)
	ok := okE && okD && vsDirect >= 0.9
	unsure := false
	if res.RelayErr != nil {
		r.Notes = append(r.Notes, "coturn not measured: "+res.RelayErr.Error())
		ok = false
	} else {
		relay, okR := udpflow.Best(res.Relay, maxLoss)
		if !okR {
			relay = udpflow.Step{Elapsed: time.Second}
		}
		vsRelay := stats.Ratio(edge.Rate(), relay.Rate())
		r.Baseline += fmt.Sprintf(" | coturn %s pps at loss %.2f%%", stats.FormatRate(relay.Rate()), relay.Loss()*100)
		bound := ""
		if saturated(res.Edge, maxLoss) {
			bound = "≥ "
		}
		ratio += ", vs coturn " + bound + stats.FormatRatio(vsRelay)
		switch {
		case vsRelay >= 3:
		case ok && bound != "":
			// The DNAT path never lost packets: the generator ran out first, so the ratio is only
			// a lower bound of what the path carries.
			unsure = true
		default:
			ok = false
		}
	}
	r.Ratio = ratio
	r.Verdict = report.Verdictf(ok)
	if ok && unsure {
		r.Verdict = report.Unsure
	}
	r.Notes = append(r.Notes,
		fmt.Sprintf("each path: the highest delivered rate with loss ≤ %.0f%%, ramping the offered rate ×%.3g from %s pps in %s steps; %d-byte payloads; one sender (sendmmsg) in the client namespace, one sink (recvmmsg) in the node namespace", maxLoss*100, o.Factor, stats.FormatRate(o.Start), o.StepTime, o.Size),
		"coturn (Debian turnserver, --no-auth) in the edge namespace, the same sender framing ChannelData on a bound channel",
		"steps (offered→delivered, loss): "+steps("edge", res.Edge, maxLoss)+"; "+steps("direct", res.Direct, maxLoss)+"; "+steps("coturn", res.Relay, maxLoss),
		"a path that stopped with every sender saturated carried everything the generator could send at that cost per packet (the veth forwarding, NAT included, runs on the sending core): the path itself may carry more")
	return []report.Result{r, c.turnRelay(ctx, env, res, maxLoss)}
}

// turnServer is the edge's TURN relay in the media benchmark's topology; coturn has 3478 and
// 3479 there.
var turnServer = &net.UDPAddr{IP: netns.EdgePublic.AsSlice(), Port: 3578}

// heldAllocations is how many allocations turnRelay holds to measure their memory.
const heldAllocations = 1000

// turnRelay reports the edge's TURN relay against coturn, from the same ladder, and the edge's
// memory per allocation held.
func (c Config) turnRelay(ctx context.Context, env *edgebench.Env, res mediabench.Paths, maxLoss float64) report.Result {
	r := report.Result{Name: "turn-relay", Target: "≥ 1× coturn at equal loss"}
	if res.EdgeTURNErr != nil {
		return failed(r.Name, res.EdgeTURNErr)
	}
	if res.RelayErr != nil {
		return failed(r.Name, fmt.Errorf("coturn not measured: %w", res.RelayErr))
	}
	edge, okE := udpflow.Best(res.EdgeTURN, maxLoss)
	relay, okR := udpflow.Best(res.Relay, maxLoss)
	r.Livegate = fmt.Sprintf("edge TURN %s pps at loss %.2f%%", stats.FormatRate(edge.Rate()), edge.Loss()*100)
	r.Baseline = fmt.Sprintf("coturn %s pps at loss %.2f%%", stats.FormatRate(relay.Rate()), relay.Loss()*100)
	ratio := stats.Ratio(edge.Rate(), relay.Rate())
	r.Ratio = "ratio vs coturn " + stats.FormatRatio(ratio)
	r.Verdict = report.Verdictf(okE && okR && ratio >= 1)
	r.Notes = append(r.Notes,
		"the same ladder, sender and sink as media-forwarding: ChannelData on a bound channel to the session's media backend; the edge's relay with the session's published credential (TURN REST API), coturn with --no-auth",
		"steps (offered→delivered, loss): "+steps("edge-turn", res.EdgeTURN, maxLoss)+"; "+steps("coturn", res.Relay, maxLoss))
	if per, err := c.turnMemory(ctx, env); err != nil {
		r.Notes = append(r.Notes, "memory per allocation not measured: "+err.Error())
	} else {
		r.Livegate += fmt.Sprintf("; %.1f KiB RSS per allocation held (%d held)", per/1024, heldAllocations)
	}
	return r
}

// turnMemory holds heldAllocations allocations of one session from the client namespace and
// returns the edge's resident memory per allocation.
func (c Config) turnMemory(ctx context.Context, env *edgebench.Env) (float64, error) {
	const idx = mediabench.BackendPort - 30000 - 1
	cred, err := env.TURNCredential(ctx, idx)
	if err != nil {
		return 0, err
	}
	before, err := procstat.ReadMemory(env.EdgeP.Pid())
	if err != nil {
		return 0, err
	}
	conns := make([]*net.UDPConn, 0, heldAllocations)
	defer func() {
		for _, c := range conns {
			_ = c.Close()
		}
	}()
	for range heldAllocations {
		var conn *net.UDPConn
		if err := env.Topo.Client.Do(func() (err error) {
			conn, err = net.ListenUDP("udp4", &net.UDPAddr{IP: netns.ClientAddr.AsSlice()})
			return err
		}); err != nil {
			return 0, err
		}
		conns = append(conns, conn)
		if _, err := udpflow.TURNAllocate(ctx, conn, turnServer, cred.GetUsername(), cred.GetCredential()); err != nil {
			return 0, fmt.Errorf("allocation %d: %w", len(conns), err)
		}
	}
	after, err := procstat.ReadMemory(env.EdgeP.Pid())
	if err != nil {
		return 0, err
	}
	return float64(after.RSS-before.RSS) / heldAllocations, nil
}

func seconds(s float64) string {
	if math.IsNaN(s) {
		return "n/a"
	}
	if math.IsInf(s, 1) {
		return "∞ (above the last bucket)"
	}
	return stats.FormatDuration(time.Duration(s * float64(time.Second)))
}

// saturated reports whether a path left the ladder with its sender saturated rather than by loss.
func saturated(ss []udpflow.Step, maxLoss float64) bool {
	if len(ss) == 0 {
		return false
	}
	last := ss[len(ss)-1]
	return last.Loss() <= maxLoss && last.SentRate() < 0.9*last.Offered
}

func steps(name string, ss []udpflow.Step, maxLoss float64) string {
	s := name
	for _, st := range ss {
		s += fmt.Sprintf(" %s→%s(%.1f%%)", stats.FormatRate(st.Offered), stats.FormatRate(st.Rate()), st.Loss()*100)
	}
	if len(ss) > 0 {
		switch last := ss[len(ss)-1]; {
		case last.Loss() > maxLoss:
			s += " [stopped: loss]"
		case last.SentRate() < 0.9*last.Offered:
			s += " [stopped: every sender saturated]"
		default:
			s += " [stopped: last step]"
		}
	}
	return s
}

func (c Config) rest(ctx context.Context) []report.Result {
	const name = "agent-rest"
	rounds, wrkTime := c.pick(3, 5), c.pickD(3*time.Second, 5*time.Second)
	ro := restbench.Options{Agent: c.Agent, Rounds: rounds, Wrk: httpbench.Options{Threads: 1, Conns: 32, Duration: wrkTime}}
	var profNotes []string
	var profMu sync.Mutex
	if c.ProfileDir != "" {
		port, err := freeport.TCPPort()
		if err != nil {
			return []report.Result{failed(name, err)}
		}
		addr := "127.0.0.1:" + strconv.Itoa(port)
		ro.Env = []string{profiling.EnvVar + "=" + addr}
		client := &http.Client{Timeout: time.Minute}
		ro.DuringLoad = func(ctx context.Context) {
			c.profile(ctx, client, "http://"+addr, fmt.Sprintf("profile?seconds=%d", max(int(wrkTime/time.Second)-1, 1)), "rest-agent-cpu.pprof", &profNotes, &profMu)
		}
	}
	res, err := restbench.Run(ctx, ro)
	if err != nil {
		return []report.Result{failed(name, err)}
	}
	var each []string
	for _, r := range res.Rounds {
		each = append(each, fmt.Sprintf("%s/%s=%s", stats.FormatRate(r.Agent.RPS), stats.FormatRate(r.Bare.RPS), stats.FormatRatio(r.Agent.RPS/r.Bare.RPS)))
	}
	rest := report.Result{
		Name:     name,
		Livegate: fmt.Sprintf("GET /v1/streaming/ready %s req/s p50=%s p99=%s (non-2xx %d, errors %d)", stats.FormatRate(res.Agent.RPS), stats.FormatDuration(res.Agent.P50), stats.FormatDuration(res.Agent.P99), res.Agent.Non2xx, res.Agent.Errors),
		Baseline: fmt.Sprintf("bare net/http, same bytes %s req/s p50=%s p99=%s", stats.FormatRate(res.Bare.RPS), stats.FormatDuration(res.Bare.P50), stats.FormatDuration(res.Bare.P99)),
		Ratio:    "ratio req/s = " + stats.FormatRatio(res.Ratio),
		Target:   "≥ 0.8×",
		Verdict:  report.Verdictf(res.Ratio >= 0.8),
		Notes: []string{fmt.Sprintf("wrk -t1 -c32 for %s, %d rounds of a bare run then an agent run; the round with the median ratio is shown; every round agent/bare: %s", wrkTime, rounds, strings.Join(each, ", ")),
			fmt.Sprintf("answer %d %s; the agent runs without NATS, made ready through its app API (app-ready, rtx-ready)", res.Status, res.Body)},
	}
	rest.Notes = append(rest.Notes, profNotes...)
	mem := report.Result{
		Name:     "agent-memory",
		Livegate: fmt.Sprintf("RSS idle=%.1fMiB, under load peak=%.1fMiB", stats.MiB(res.Idle.RSS), stats.MiB(res.UnderLoad.RSS)),
		Target:   "idle ≤ 20 MiB",
		Verdict:  report.Verdictf(res.Idle.RSS <= 20<<20),
	}
	return []report.Result{rest, mem}
}

// browser: a headless Chromium's time to first frame and input echo round trip through the edge,
// against the same browser and app without the edge's proxy and NAT.
func (c Config) browser(ctx context.Context) report.Result {
	const name = "browser-first-frame"
	bins := stack.Binaries{Agent: c.Agent, Edge: c.Edge, StreamApp: c.StreamApp}
	f, err := browserbench.Run(ctx, bins, c.Prefix, c.pick(2, 5))
	if err != nil {
		return failed(name, err)
	}
	edgeEcho, directEcho := f.Edge.Echo.Percentile(50), f.Direct.Echo.Percentile(50)
	share := "-"
	if edgeEcho > 0 {
		share = fmt.Sprintf("%.0f%%", 100*float64(edgeEcho-directEcho)/float64(edgeEcho))
	}
	return report.Result{
		Name: name,
		Livegate: fmt.Sprintf("first frame p50 %s (max %s), echo RTT p50 %s p99 %s through the edge",
			stats.FormatDuration(f.Edge.FirstFrame.Percentile(50)), stats.FormatDuration(f.Edge.FirstFrame.Max()),
			stats.FormatDuration(edgeEcho), stats.FormatDuration(f.Edge.Echo.Percentile(99))),
		Baseline: fmt.Sprintf("direct: first frame p50 %s (max %s), echo RTT p50 %s p99 %s",
			stats.FormatDuration(f.Direct.FirstFrame.Percentile(50)), stats.FormatDuration(f.Direct.FirstFrame.Max()),
			stats.FormatDuration(directEcho), stats.FormatDuration(f.Direct.Echo.Percentile(99))),
		Ratio:   "edge's share of the echo round trip (p50) = " + share,
		Verdict: report.Info,
		Notes: []string{fmt.Sprintf("%d page loads per path, %d echoes; direct = ws:// to the app and its own address as the candidate, still routed by the edge's namespace",
			len(f.Edge.FirstFrame), len(f.Edge.Echo))},
	}
}
