// Package scalebench measures livegate at scale: three edges of one pool on a real three-node
// nats-server cluster (JetStream, buckets at three replicas), each holding its share of 3×N
// simulated sessions (routes written to livegate_routes as agents write them; the sessions'
// backends answer from a node namespace). It reports the time to route all of them, the claim
// conflicts, NATS traffic per route change and the route latency while the node leading the routes
// stream is killed and restarted, each against the same run on a single nats-server (and, for
// the node loss, against the churn before it).
package scalebench

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/livegate/livegate/e2e/bench/edgebench"
	"github.com/livegate/livegate/e2e/bench/report"
	"github.com/livegate/livegate/e2e/bench/stats"
)

// Config says what to run.
type Config struct {
	Edge       string // livegate-edgeproxy
	NATSServer string
	// Prefix starts every namespace name.
	Prefix string
	// PerEdge is the number of sessions per edge; the deployment holds three times as many.
	PerEdge int
	// Out receives progress lines.
	Out io.Writer
}

// Bounds of each run, so the whole benchmark stays within a few minutes.
const (
	routeAllTimeout = 100 * time.Second
	churnRate       = 100 // new and ended routes per second
	before, during  = 8 * time.Second, 12 * time.Second
	after           = 8 * time.Second
	// routeTimeout is when a new route counts as failed: two of the agents' default leases.
	routeTimeout = 30 * time.Second
	agentLease   = 15 * time.Second
)

// Run measures the single-server baseline, then the cluster, and returns their results.
func Run(ctx context.Context, c Config) []report.Result {
	progress := func(format string, args ...any) { fmt.Fprintf(c.Out, "  scale: "+format+"\n", args...) }
	n := 3 * c.PerEdge
	began := time.Now()
	single, err := c.phase(ctx, 1, n, progress)
	if err != nil {
		return failedAll(fmt.Errorf("single server: %w", err))
	}
	cluster, err := c.phase(ctx, 3, n, progress)
	if err != nil {
		return failedAll(fmt.Errorf("cluster: %w", err))
	}
	progress("done in %s", time.Since(began).Round(time.Second))
	return results(single, cluster)
}

var names = []string{"scale-route-all", "scale-claims", "scale-nats-traffic", "scale-node-loss"}

func failedAll(err error) []report.Result {
	var out []report.Result
	for _, n := range names {
		out = append(out, report.Result{Name: n, Livegate: "failed: " + err.Error(), Verdict: report.Skipped})
	}
	return out
}

type phaseResult struct {
	servers  int
	routeAll routeAllResult
	churn    churnResult
}

// phase deploys NATS (servers: 1 or 3) and three edges, routes n sessions, then churns (on a
// cluster, killing and restarting the routes stream's leader meanwhile), then tears it all down.
func (c Config) phase(ctx context.Context, servers, n int, progress func(string, ...any)) (res phaseResult, err error) {
	res.servers = servers
	d, err := deploy(ctx, c.Prefix, c.Edge, c.NATSServer, servers)
	if err != nil {
		return res, err
	}
	defer func() {
		if cerr := d.close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("cleanup: %w", cerr))
		}
	}()
	progress("%d NATS server(s), 3 edges up; routing %d sessions", servers, n)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	eps := d.watchEndpoints(wctx)
	ag, err := d.agents(ctx)
	if err != nil {
		return res, err
	}
	defer ag.close()
	// Let the watch take its snapshot (of nothing) before the clock starts.
	time.Sleep(300 * time.Millisecond)
	if res.routeAll, err = d.routeAll(ctx, ag, eps, n); err != nil {
		return res, err
	}
	progress("%d routed in %s; churning", n, res.routeAll.total.Round(time.Millisecond))
	o := churnOptions{rate: churnRate, before: before}
	if servers > 1 {
		o.kill, o.during, o.after = true, during, after
	}
	if res.churn, err = d.churn(ctx, ag, eps, n, o, progress); err != nil {
		return res, err
	}
	return res, nil
}

type edgeFill struct {
	id     string
	routes int
	// last is when the edge's latest new endpoint was seen, from the first write.
	last time.Duration
	won  float64
	lost float64
	// reassigned counts routes the edge stopped serving because another edge took them;
	// lapsed, its heartbeat key expiring; warnings, the edge's log lines at warn or above.
	reassigned float64
	lapsed     int
	warnings   string
	dnat       int
}

type routeAllResult struct {
	n int
	// writes is when every write was acknowledged, endpoints when every endpoint was seen, total
	// when the edges' HAProxy maps also held every session, each from the first write.
	writes, endpoints, total time.Duration
	edges                    []edgeFill
	// twice counts sessions in more than one edge's map; moved, endpoints that changed edge.
	twice, moved   int
	probed, echoed int
	// traffic is the servers' counters over the run less their idle rate; idle is that rate per
	// second.
	traffic, idle varz
}

// routeAll writes n routes (the simulated agents all starting a session at once), then waits
// until every one is routed: its endpoint published, and its session in the serving edge's map.
func (d *deployment) routeAll(ctx context.Context, ag *agents, eps *endpoints, n int) (routeAllResult, error) {
	res := routeAllResult{n: n}
	v0, err := d.traffic()
	if err != nil {
		return res, err
	}
	// As long as the edges' heartbeat period (5 s), so that the idle rate includes them.
	const idleFor = 5 * time.Second
	time.Sleep(idleFor)
	v1, err := d.traffic()
	if err != nil {
		return res, err
	}
	idle := v1.sub(v0)
	res.idle = scale(idle, float64(time.Second)/float64(idleFor))

	start := time.Now()
	err = edgebench.Striped(n, 24, func(i int) error {
		if err := ag.put(ctx, i, start.Add(routeAllTimeout)); err != nil {
			return fmt.Errorf("write route %d: %w", i, err)
		}
		return nil
	})
	res.writes = time.Since(start)
	if err != nil {
		return res, err
	}
	for eps.count() < n {
		if time.Since(start) > routeAllTimeout || ctx.Err() != nil {
			return res, fmt.Errorf("%d of %d endpoints after %s%s", eps.count(), n, routeAllTimeout, d.edgeTrouble())
		}
		time.Sleep(10 * time.Millisecond)
	}
	res.endpoints = time.Since(start)
	per, last, lapsed, moved := eps.snapshot()
	var maps []map[string]string
	for {
		maps = maps[:0]
		ok := true
		for _, g := range d.edges {
			m, err := g.HAProxy().ShowMap(ctx)
			if err != nil || len(m) != per[g.ID] {
				ok = false
				break
			}
			maps = append(maps, m)
		}
		if ok {
			break
		}
		if time.Since(start) > routeAllTimeout || ctx.Err() != nil {
			return res, fmt.Errorf("the edges' maps do not hold their %v endpoints after %s%s", per, routeAllTimeout, d.edgeTrouble())
		}
		time.Sleep(100 * time.Millisecond)
	}
	res.total = time.Since(start)
	v2, err := d.traffic()
	if err != nil {
		return res, err
	}
	res.traffic = v2.sub(v1).sub(scale(res.idle, res.total.Seconds()))
	res.moved = moved
	held := map[string]int{}
	for _, m := range maps {
		for s := range m {
			held[s]++
		}
	}
	for _, c := range held {
		if c > 1 {
			res.twice++
		}
	}
	for _, g := range d.edges {
		f := edgeFill{id: g.ID, routes: per[g.ID], lapsed: lapsed[g.ID], warnings: warnings(g.P.Output())}
		if at, ok := last[g.ID]; ok {
			f.last = at.Sub(start)
		}
		if m, err := g.metrics(ctx); err == nil {
			f.won, f.lost = m[`livegate_edge_claims_total{result="won"}`], m[`livegate_edge_claims_total{result="lost"}`]
			f.reassigned = m[`livegate_edge_routes_removed_total{reason="reassigned"}`]
		}
		f.dnat, _ = g.dnatPorts(ctx)
		res.edges = append(res.edges, f)
	}
	res.probed, res.echoed = d.probeSample(ctx, eps, n)
	return res, nil
}

// probeSample probes a spread of 30 routes through the DNAT of the edge serving each.
func (d *deployment) probeSample(ctx context.Context, eps *endpoints, n int) (probed, echoed int) {
	for j := range 30 {
		i := j * (n / 30)
		e, err := eps.wait(ctx, edgebench.RouteKey(i), time.Now().Add(time.Second))
		g := d.edgeByID(e.edge)
		if err != nil || g == nil {
			continue
		}
		probed++
		if d.probe(ctx, g, e.port, time.Now().Add(time.Second)) == nil {
			echoed++
		}
	}
	return probed, echoed
}

// edgeTrouble is a note on edges that exited, for an error message.
func (d *deployment) edgeTrouble() string {
	var s string
	for _, g := range d.edges {
		if g.P.Exited() {
			out := g.P.Output()
			s += fmt.Sprintf("; %s exited: %.400s", g.ID, out[max(0, len(out)-400):])
		}
	}
	return s
}

func scale(v varz, f float64) varz {
	m := func(x int64) int64 { return int64(float64(x) * f) }
	return varz{m(v.InMsgs), m(v.OutMsgs), m(v.InBytes), m(v.OutBytes), m(v.InClientMsgs), m(v.OutClientMsgs), m(v.InClientBytes), m(v.OutClientBytes)}
}

type churnOptions struct {
	rate                  int
	before, during, after time.Duration
	// kill kills the routes stream's leader after before, and restarts it after during.
	kill bool
}

// window is one stretch of the churn: the new routes whose first write began in it.
type window struct {
	routable stats.Durations
	failures int
	firstErr error
}

type churnResult struct {
	before, during, after window
	added, ended          int
	endFailures           int
	// killed is the server that led the routes stream; leaders says who led what before and
	// after.
	killed  string
	leaders string
	// traffic is the servers' counters over the churn before any kill, changes the route writes
	// and deletes made in it.
	traffic varz
	changes int
}

// churn keeps the held routes while adding and ending rate routes per second, and times each new
// route from its first write until it is routable.
func (d *deployment) churn(ctx context.Context, ag *agents, eps *endpoints, held int, o churnOptions, progress func(string, ...any)) (churnResult, error) {
	var res churnResult
	var mu sync.Mutex
	var wg sync.WaitGroup
	record := func(w *window, took time.Duration, err error) {
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			w.failures++
			if w.firstErr == nil {
				w.firstErr = err
			}
			return
		}
		w.routable = append(w.routable, took)
	}
	v0, err := d.traffic()
	if err != nil {
		return res, err
	}
	start := time.Now()
	killAt := start.Add(o.before)
	restartAt := killAt.Add(o.during)
	end := killAt
	if o.kill {
		end = restartAt.Add(o.after)
	}
	tick := time.NewTicker(time.Second / time.Duration(o.rate))
	defer tick.Stop()
	var killed, restarted bool
	var victim *server
	restartErr := make(chan error, 1)
	next, oldest := held, 0
	for time.Now().Before(end) && ctx.Err() == nil {
		<-tick.C
		now := time.Now()
		if !killed && !now.Before(killAt) {
			killed = true
			if err := d.endOfBaseline(ctx, &res, v0, o.kill); err != nil {
				wg.Wait()
				return res, err
			}
			if o.kill {
				var err error
				if victim, err = d.leader(ctx, "KV_livegate_routes"); err != nil {
					wg.Wait()
					return res, err
				}
				victim.Stop(true)
				res.killed = victim.Name
				progress("killed %s, the leader of KV_livegate_routes (%s)", victim.Name, res.leaders)
			}
		}
		if o.kill && killed && !restarted && !now.Before(restartAt) {
			restarted = true
			go func() { restartErr <- d.restart(ctx, victim) }()
			progress("restarting %s", victim.Name)
		}
		w := &res.before
		switch {
		case o.kill && restarted:
			w = &res.after
		case o.kill && killed:
			w = &res.during
		}
		i := next
		next++
		res.added++
		wg.Go(func() {
			began := time.Now()
			deadline := began.Add(routeTimeout)
			if err := ag.put(ctx, i, deadline); err != nil {
				record(w, 0, fmt.Errorf("write route %d: %w", i, err))
				return
			}
			_, at, err := d.routable(ctx, eps, i, deadline)
			record(w, at.Sub(began), err)
		})
		j := oldest
		oldest++
		res.ended++
		wg.Go(func() {
			if err := ag.del(ctx, j, time.Now().Add(routeTimeout)); err != nil {
				mu.Lock()
				res.endFailures++
				mu.Unlock()
			}
		})
	}
	var baseErr error
	if !killed {
		baseErr = d.endOfBaseline(ctx, &res, v0, false)
	}
	wg.Wait()
	if baseErr != nil {
		return res, baseErr
	}
	if restarted {
		if err := <-restartErr; err != nil {
			return res, fmt.Errorf("restart %s: %w", victim.Name, err)
		}
		res.leaders += "; after: " + d.leaders(ctx)
	}
	return res, ctx.Err()
}

// endOfBaseline closes the churn's first window: its traffic, and with kill who leads what.
func (d *deployment) endOfBaseline(ctx context.Context, res *churnResult, v0 varz, kill bool) error {
	v1, err := d.traffic()
	if err != nil {
		return err
	}
	res.traffic, res.changes = v1.sub(v0), res.added+res.ended
	if kill {
		res.leaders = d.leaders(ctx)
	}
	return nil
}

// leaders names the leader of each livegate stream.
func (d *deployment) leaders(ctx context.Context) string {
	var parts []string
	for _, st := range []string{"KV_livegate_routes", "KV_livegate_endpoints", "KV_livegate_edges"} {
		s, err := d.leader(ctx, st)
		name := "?"
		if err == nil {
			name = s.Name
		}
		parts = append(parts, strings.TrimPrefix(st, "KV_livegate_")+"→"+name)
	}
	return strings.Join(parts, " ")
}

// Reporting -------------------------------------------------------------------------------------

func results(single, cluster phaseResult) []report.Result {
	return []report.Result{routeAllReport(single, cluster), claimsReport(single, cluster), trafficReport(single, cluster), nodeLossReport(single, cluster)}
}

func fillText(r routeAllResult) string {
	var parts []string
	for _, e := range r.edges {
		parts = append(parts, fmt.Sprintf("%s %d by %s", e.id, e.routes, stats.FormatDuration(e.last)))
	}
	return fmt.Sprintf("%d sessions on 3 edges routed in %s (%s; writes acknowledged at %s, endpoints all seen at %s)",
		r.n, stats.FormatDuration(r.total), strings.Join(parts, ", "), stats.FormatDuration(r.writes), stats.FormatDuration(r.endpoints))
}

func routeAllReport(single, cluster phaseResult) report.Result {
	s, c := single.routeAll, cluster.routeAll
	var dnat []string
	for _, e := range c.edges {
		dnat = append(dnat, fmt.Sprintf("%s %d", e.id, e.dnat))
	}
	return report.Result{
		Name:     "scale-route-all",
		Livegate: "3-node cluster, R3: " + fillText(c),
		Baseline: "single nats-server, R1: " + fillText(s),
		Ratio:    "ratio = " + stats.FormatRatio(stats.Ratio(float64(c.total), float64(s.total))),
		Verdict:  report.Info,
		Notes: []string{
			"every simulated agent starts its session at once: 24 writers put the routes (pool routes, no edge named, as the agent's publisher writes them) through one connection per server; the edges are running and claim them; routed = every endpoint seen by the bench's watch and every edge's HAProxy map (`show map`) holding exactly the sessions it published; per edge, when its last new endpoint was seen",
			fmt.Sprintf("confirmed after: DNAT map elements per edge %s; UDP probes through the DNAT answered %d of %d sampled (cluster), %d of %d (single)", strings.Join(dnat, ", "), c.echoed, c.probed, s.echoed, s.probed),
			fmt.Sprintf("the edges at their defaults but --media-ports %s (so the port pool never bounds a claim); lease %s (no renewals during the run)", mediaPorts, leaseTTL),
		},
	}
}

func claimsText(r routeAllResult) string {
	var won, lost float64
	for _, e := range r.edges {
		won += e.won
		lost += e.lost
	}
	return fmt.Sprintf("%.0f claim writes lost to another edge, %.0f won (%.2f lost per route); %d sessions in two edges' maps, %d endpoints moved edge",
		lost, won, lost/float64(max(r.n, 1)), r.twice, r.moved)
}

func claimsReport(single, cluster phaseResult) report.Result {
	s, c := single.routeAll, cluster.routeAll
	return report.Result{
		Name:     "scale-claims",
		Livegate: "cluster: " + claimsText(c),
		Baseline: "single server: " + claimsText(s),
		Target:   "every route served by exactly one edge",
		Verdict:  report.Verdictf(c.twice == 0 && c.moved == 0 && s.twice == 0 && s.moved == 0),
		Notes: append([]string{
			"claim writes from the edges' livegate_edge_claims_total{result=won|lost} after the route-all; a lost claim is a compare-and-set create of the endpoint that another edge's won (the edge releases the port and drops the route)",
			"per edge, cluster (won/lost): " + claimsPerEdge(c),
			"per edge, single server (won/lost): " + claimsPerEdge(s),
		}, append(edgeWarnings("cluster", c), edgeWarnings("single server", s)...)...),
	}
}

func claimsPerEdge(r routeAllResult) string {
	var parts []string
	for _, e := range r.edges {
		parts = append(parts, fmt.Sprintf("%s %.0f/%.0f (%.0f taken over by another edge, heartbeat lapsed %d×)", e.id, e.won, e.lost, e.reassigned, e.lapsed))
	}
	return strings.Join(parts, ", ")
}

// edgeWarnings lists what the edges logged at warn or above, when any.
func edgeWarnings(name string, r routeAllResult) []string {
	var out []string
	for _, e := range r.edges {
		if e.warnings != "" {
			out = append(out, fmt.Sprintf("%s %s logged: %s", name, e.id, e.warnings))
		}
	}
	return out
}

// warnings summarises an edge's JSON log (it runs at level warn): each message with its count,
// most frequent first.
func warnings(log string) string {
	count := map[string]int{}
	for line := range strings.SplitSeq(log, "\n") {
		var l struct {
			Level, Message string
		}
		if json.Unmarshal([]byte(line), &l) == nil && l.Message != "" {
			count[l.Level+" "+strconv.Quote(l.Message)]++
		}
	}
	keys := slices.Collect(maps.Keys(count))
	slices.SortFunc(keys, func(a, b string) int { return cmp.Or(count[b]-count[a], strings.Compare(a, b)) })
	var parts []string
	for _, k := range keys[:min(len(keys), 4)] {
		parts = append(parts, fmt.Sprintf("%s ×%d", k, count[k]))
	}
	return strings.Join(parts, ", ")
}

// perChange formats counters per route change: all the servers' traffic (with the cluster's
// routes between them) and that with clients alone.
func perChange(v varz, changes int) string {
	n := float64(max(changes, 1))
	return fmt.Sprintf("%.1f msgs %s per change (in %.1f/%s, out %.1f/%s; with clients alone in %.1f/%s, out %.1f/%s)",
		float64(v.InMsgs+v.OutMsgs)/n, bytesText(float64(v.InBytes+v.OutBytes)/n),
		float64(v.InMsgs)/n, bytesText(float64(v.InBytes)/n), float64(v.OutMsgs)/n, bytesText(float64(v.OutBytes)/n),
		float64(v.InClientMsgs)/n, bytesText(float64(v.InClientBytes)/n), float64(v.OutClientMsgs)/n, bytesText(float64(v.OutClientBytes)/n))
}

func bytesText(b float64) string {
	if b >= 10*1024 {
		return fmt.Sprintf("%.1fKiB", b/1024)
	}
	return fmt.Sprintf("%.0fB", b)
}

func trafficReport(single, cluster phaseResult) report.Result {
	s, c := single, cluster
	ratio := func(a, b varz, an, bn int) float64 {
		return stats.Ratio(float64(a.InBytes+a.OutBytes)/float64(max(an, 1)), float64(b.InBytes+b.OutBytes)/float64(max(bn, 1)))
	}
	return report.Result{
		Name:     "scale-nats-traffic",
		Livegate: "cluster: route-all " + perChange(c.routeAll.traffic, c.routeAll.n) + "; churn " + perChange(c.churn.traffic, c.churn.changes),
		Baseline: "single server: route-all " + perChange(s.routeAll.traffic, s.routeAll.n) + "; churn " + perChange(s.churn.traffic, s.churn.changes),
		Ratio: fmt.Sprintf("ratio bytes per change: route-all %s, churn %s",
			stats.FormatRatio(ratio(c.routeAll.traffic, s.routeAll.traffic, c.routeAll.n, s.routeAll.n)),
			stats.FormatRatio(ratio(c.churn.traffic, s.churn.traffic, c.churn.changes, s.churn.changes))),
		Verdict: report.Info,
		Notes: []string{
			"from the servers' /varz (in_msgs, out_msgs, in_bytes, out_bytes and their client-only counterparts) summed over the servers, before and after; a route change is one route written (route-all) or one written or deleted (churn); the route-all figure includes the claims, endpoint writes and every watcher's copy it causes",
			fmt.Sprintf("idle traffic (edge heartbeats, JetStream's own) subtracted from the route-all figure: cluster %s/s, single %s/s; the churn figure is the %s before any node loss, %d changes (cluster), %d (single)",
				bytesText(float64(c.routeAll.idle.InBytes+c.routeAll.idle.OutBytes)), bytesText(float64(s.routeAll.idle.InBytes+s.routeAll.idle.OutBytes)), before, c.churn.changes, s.churn.changes),
		},
	}
}

func latencyText(w window) string {
	return fmt.Sprintf("p50=%s p99=%s max=%s (n=%d, failed %d)", stats.FormatDuration(w.routable.Percentile(50)), stats.FormatDuration(w.routable.Percentile(99)),
		stats.FormatDuration(w.routable.Max()), len(w.routable), w.failures)
}

func nodeLossReport(single, cluster phaseResult) report.Result {
	c := cluster.churn
	r := report.Result{
		Name:     "scale-node-loss",
		Livegate: fmt.Sprintf("route latency during the loss of %s %s; after its restart %s", c.killed, latencyText(c.during), latencyText(c.after)),
		Baseline: fmt.Sprintf("the same churn before the loss %s; on a single server %s", latencyText(c.before), latencyText(single.churn.before)),
		Ratio:    "ratio p99 during/before = " + stats.FormatRatio(stats.Ratio(float64(c.during.routable.Percentile(99)), float64(c.before.routable.Percentile(99)))),
		Target:   fmt.Sprintf("every new route routable within one lease (%s, the agents' default)", agentLease),
		Verdict: report.Verdictf(c.during.failures+c.after.failures+c.before.failures == 0 && len(c.during.routable) > 0 &&
			slices.Max(append(slices.Clone(c.during.routable), c.after.routable...)) <= agentLease),
		Notes: []string{
			fmt.Sprintf("%d new and %d ended routes per second with %d held: %s before, kill -9 of the server leading KV_livegate_routes, %s without it, restart, %s after (%d added, %d ended, %d ends failed); leaders: %s",
				churnRate, churnRate, cluster.routeAll.n, before, during, after, c.added, c.ended, c.endFailures, c.leaders),
			"a route's time runs from its first write (retried as the agent's publisher does: 5 s per try, again after 1 s) until routable: its endpoint seen, its session in the serving edge's HAProxy map and a UDP probe from the client namespace echoed through that edge's public port (edgebench's definition)",
			fmt.Sprintf("the bench's own endpoint watch stalls like the edges' while a stream re-elects its leader; a route still waiting reads its endpoint directly every %s, so such a route is timed up to %s late", fallbackPoll, fallbackPoll),
		},
	}
	for _, w := range []struct {
		name string
		w    window
	}{{"before", c.before}, {"during", c.during}, {"after", c.after}, {"single server", single.churn.before}} {
		if w.w.firstErr != nil {
			r.Notes = append(r.Notes, "first failure "+w.name+": "+w.w.firstErr.Error())
		}
	}
	return r
}
