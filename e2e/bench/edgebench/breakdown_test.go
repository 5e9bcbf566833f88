package edgebench

import (
	"strings"
	"testing"
	"time"
)

const edgeLog = `{"level":"debug","set":1,"deleted":1,"took":0.5,"message":"haproxy map programmed"}
{"level":"info","added":1,"restore_ms":2,"conntrack_ms":0.25,"message":"media mappings synced"}
{"level":"info","instance_id":"lgbi7","latency":6,"message":"route programmed"}
{"level":"debug","plan_ms":0.5,"program_ms":2.5,"claims_ms":0,"publish_ms":0.5,"finish_ms":0.1,"message":"reconcile pass"}
not json
{"level":"info","instance_id":"lgbi8","latency":3,"message":"route programmed"}
{"level":"debug","plan_ms":0.5,"program_ms":1,"claims_ms":0,"publish_ms":0.5,"message":"reconcile pass"}
`

func TestBreakdown(t *testing.T) {
	passes, err := parsePasses(strings.NewReader(edgeLog))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]passTimes{
		"lgbi7": {latency: 6 * time.Millisecond, work: 3500 * time.Microsecond, haproxy: 500 * time.Microsecond, rules: 2 * time.Millisecond, conntrack: 250 * time.Microsecond},
		"lgbi8": {latency: 3 * time.Millisecond, work: 2 * time.Millisecond},
	}
	if len(passes) != len(want) {
		t.Fatalf("passes = %+v, want %+v", passes, want)
	}
	for k, w := range want {
		if passes[k] != w {
			t.Errorf("%s = %+v, want %+v", k, passes[k], w)
		}
	}
	b := breakdown(map[string]routeTimes{
		"lgbi7": {kvSeen: time.Millisecond, endpoint: 9 * time.Millisecond, routable: 10 * time.Millisecond},
		"lgbi8": {kvSeen: time.Millisecond, endpoint: 5 * time.Millisecond, routable: 6 * time.Millisecond},
		"lgbi9": {kvSeen: time.Millisecond, endpoint: 5 * time.Millisecond, routable: 6 * time.Millisecond},
	}, passes)
	if b.Routes != 2 {
		t.Fatalf("routes = %d, want 2 (lgbi9 is not in the log)", b.Routes)
	}
	slowest := map[string]time.Duration{
		PhaseKV: time.Millisecond, PhaseWait: 2500 * time.Microsecond, PhasePass: 3500 * time.Microsecond,
		PhaseHAProxy: 500 * time.Microsecond, PhaseRules: 2 * time.Millisecond, PhaseConntrack: 250 * time.Microsecond,
		PhasePublish: 2 * time.Millisecond, PhaseProbe: time.Millisecond,
	}
	for ph, w := range slowest {
		if b.Slowest[ph] != w {
			t.Errorf("slowest %s = %s, want %s", ph, b.Slowest[ph], w)
		}
	}
	if !strings.Contains(b.String(), "over 2 routes") {
		t.Errorf("String() = %q", b.String())
	}
}
