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
// watch of the routes bucket (the edge watches the same bucket on the same server). The next
// four are measured by the edge, which logs them per route at log level debug ("route
// timeline", offsets from the moment its watch delivered the route): wait is until the pass
// that programmed the route began; HAProxy until that pass had programmed HAProxy's map (its
// planning included); kernel rules how much longer the media batch holding the route's mappings
// took (zero when it was done first); publish wait from there until the endpoint write started;
// endpoint write until its reply. Endpoint watch is from that reply until the bench's watch of
// livegate_endpoints delivered the endpoint, and probe the UDP probe through the DNAT after it
// (with the map poll).
const (
	PhaseKV            = "kv watch"
	PhaseWait          = "wait in queue"
	PhaseHAProxy       = "haproxy"
	PhaseRules         = "kernel rules"
	PhasePublishWait   = "publish wait"
	PhaseEndpointWrite = "endpoint write"
	PhaseEndpointWatch = "endpoint watch"
	PhaseProbe         = "probe"
)

// Phases lists the phases in the order Breakdown prints them.
var Phases = []string{PhaseKV, PhaseWait, PhaseHAProxy, PhaseRules, PhasePublishWait, PhaseEndpointWrite, PhaseEndpointWatch, PhaseProbe}

// routeTimes is what the bench saw of one new route, as offsets from its KV write.
type routeTimes struct {
	kvSeen, endpoint, routable time.Duration
}

// passTimes is the edge's timeline of one route, as offsets from when its watch delivered it.
type passTimes struct {
	pass, mapped, kernel, write, acked time.Duration
}

// Breakdown holds each phase's samples, one per route the edge's log accounts for.
type Breakdown struct {
	Phases map[string]stats.Durations
	// Slowest holds each phase's mean over the slowest 1% of those routes (by routable).
	Slowest map[string]time.Duration
	Routes  int
}

// logLine is the part of the edge's JSON "route timeline" lines the breakdown reads; durations
// are in ms.
type logLine struct {
	Message    string  `json:"message"`
	InstanceID string  `json:"instance_id"`
	Pass       float64 `json:"pass_at"`
	Mapped     float64 `json:"mapped_at"`
	Kernel     float64 `json:"kernel_at"`
	Write      float64 `json:"write_at"`
	Acked      float64 `json:"acked_at"`
}

func ms(v float64) time.Duration { return time.Duration(v * float64(time.Millisecond)) }

// parsePasses reads the edge's debug log: one "route timeline" line per route whose endpoint
// write came back.
func parsePasses(r io.Reader) (map[string]passTimes, error) {
	out := map[string]passTimes{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var l logLine
		if !strings.HasPrefix(sc.Text(), "{") || json.Unmarshal(sc.Bytes(), &l) != nil || l.Message != "route timeline" {
			continue
		}
		out[l.InstanceID] = passTimes{pass: ms(l.Pass), mapped: ms(l.Mapped), kernel: ms(l.Kernel), write: ms(l.Write), acked: ms(l.Acked)}
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
		routable := max(p.mapped, p.kernel)
		rows = append(rows, row{routable: s.routable, phases: map[string]time.Duration{
			PhaseKV:            s.kvSeen,
			PhaseWait:          max(p.pass, 0),
			PhaseHAProxy:       max(p.mapped-p.pass, 0),
			PhaseRules:         max(p.kernel-p.mapped, 0),
			PhasePublishWait:   max(p.write-routable, 0),
			PhaseEndpointWrite: max(p.acked-p.write, 0),
			PhaseEndpointWatch: max(s.endpoint-s.kvSeen-p.acked, 0),
			PhaseProbe:         s.routable - s.endpoint,
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
