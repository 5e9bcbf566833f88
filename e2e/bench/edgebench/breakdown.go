package edgebench

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/livegate/livegate/e2e/bench/stats"
)

// Phases of a new route's way to routable, in the order they happen. KV is the bench's own
// watch of the routes bucket (the edge watches the same bucket on the same server); wait is the
// time the edge saw the route before the pass that programmed it began; HAProxy, kernel rules
// and conntrack are that pass's (HAProxy runs alongside the kernel, so pass is their envelope
// with the planning before and the claims after); publish is the endpoint's write until the
// bench saw it, and probe the UDP probe through the DNAT after it (with the map poll).
const (
	PhaseKV        = "kv watch"
	PhaseWait      = "wait in queue"
	PhasePass      = "pass"
	PhaseHAProxy   = "haproxy"
	PhaseRules     = "kernel rules"
	PhaseConntrack = "conntrack"
	PhasePublish   = "endpoint publish"
	PhaseProbe     = "probe"
)

// Phases lists the phases in the order Breakdown prints them.
var Phases = []string{PhaseKV, PhaseWait, PhasePass, PhaseHAProxy, PhaseRules, PhaseConntrack, PhasePublish, PhaseProbe}

// routeTimes is what the bench saw of one new route, as offsets from its KV write.
type routeTimes struct {
	kvSeen, endpoint, routable time.Duration
}

// passTimes is what the edge logged of the pass that programmed a route: the route's own
// latency (seen to programmed), and the pass's phases.
type passTimes struct {
	latency, work, haproxy, rules, conntrack time.Duration
}

// Breakdown holds each phase's samples, one per route the edge's log accounts for.
type Breakdown struct {
	Phases map[string]stats.Durations
	// Slowest holds each phase's mean over the slowest 1% of those routes (by routable).
	Slowest map[string]time.Duration
	Routes  int
}

// logLine is the part of the edge's JSON log lines the breakdown reads; durations are in ms.
type logLine struct {
	Message    string  `json:"message"`
	InstanceID string  `json:"instance_id"`
	Latency    float64 `json:"latency"`
	Took       float64 `json:"took"`
	Restore    float64 `json:"restore_ms"`
	Conntrack  float64 `json:"conntrack_ms"`
	Plan       float64 `json:"plan_ms"`
	Program    float64 `json:"program_ms"`
	Claims     float64 `json:"claims_ms"`
	Publish    float64 `json:"publish_ms"`
}

func ms(v float64) time.Duration { return time.Duration(v * float64(time.Millisecond)) }

// parsePasses reads the edge's debug log: per pass, the HAProxy and media lines come first,
// then one "route programmed" line per route it programmed, then the "reconcile pass" line
// with the pass's phases.
func parsePasses(r io.Reader) (map[string]passTimes, error) {
	out := map[string]passTimes{}
	var cur passTimes
	var pending []string
	latency := map[string]time.Duration{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var l logLine
		if !strings.HasPrefix(sc.Text(), "{") || json.Unmarshal(sc.Bytes(), &l) != nil {
			continue
		}
		switch l.Message {
		case "haproxy map programmed":
			cur.haproxy += ms(l.Took)
		case "media mappings synced":
			cur.rules += ms(l.Restore)
			cur.conntrack += ms(l.Conntrack)
		case "route programmed":
			pending = append(pending, l.InstanceID)
			latency[l.InstanceID] = ms(l.Latency)
		case "reconcile pass":
			cur.work = ms(l.Plan + l.Program + l.Claims + l.Publish)
			for _, k := range pending {
				p := cur
				p.latency = latency[k]
				out[k] = p
			}
			pending, cur = pending[:0], passTimes{}
			clear(latency)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read edge log: %w", err)
	}
	return out, nil
}

// breakdown joins what the bench saw of each route with what the edge logged of it.
func breakdown(seen map[string]routeTimes, passes map[string]passTimes) Breakdown {
	type row struct {
		routable time.Duration
		phases   map[string]time.Duration
	}
	var rows []row
	for k, s := range seen {
		p, ok := passes[k]
		if !ok || s.kvSeen <= 0 || s.endpoint <= 0 || s.routable <= 0 {
			continue
		}
		rows = append(rows, row{routable: s.routable, phases: map[string]time.Duration{
			PhaseKV:        s.kvSeen,
			PhaseWait:      max(p.latency-p.work, 0),
			PhasePass:      p.work,
			PhaseHAProxy:   p.haproxy,
			PhaseRules:     p.rules,
			PhaseConntrack: p.conntrack,
			PhasePublish:   max(s.endpoint-s.kvSeen-p.latency, 0),
			PhaseProbe:     s.routable - s.endpoint,
		}})
	}
	b := Breakdown{Phases: map[string]stats.Durations{}, Slowest: map[string]time.Duration{}, Routes: len(rows)}
	if len(rows) == 0 {
		return b
	}
	slices.SortFunc(rows, func(x, y row) int { return int(y.routable - x.routable) })
	slow := rows[:max(len(rows)/100, 1)]
	for _, ph := range Phases {
		var sum time.Duration
		for _, r := range slow {
			sum += r.phases[ph]
		}
		b.Slowest[ph] = sum / time.Duration(len(slow))
		for _, r := range rows {
			b.Phases[ph] = append(b.Phases[ph], r.phases[ph])
		}
	}
	return b
}

// String is one line: p50/p99 of every phase, then their means over the slowest 1%.
func (b Breakdown) String() string {
	if b.Routes == 0 {
		return "no route of the edge's log matched"
	}
	var all, slow []string
	for _, ph := range Phases {
		all = append(all, fmt.Sprintf("%s %s/%s", ph, stats.FormatDuration(b.Phases[ph].Percentile(50)), stats.FormatDuration(b.Phases[ph].Percentile(99))))
		slow = append(slow, fmt.Sprintf("%s %s", ph, stats.FormatDuration(b.Slowest[ph])))
	}
	return fmt.Sprintf("p50/p99 over %d routes: %s; mean over the slowest 1%%: %s", b.Routes, strings.Join(all, ", "), strings.Join(slow, ", "))
}
