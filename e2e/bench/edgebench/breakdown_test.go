package edgebench

import (
	"strings"
	"testing"
	"time"
)

const edgeLog = `{"level":"debug","set":1,"deleted":1,"took":0.5,"message":"haproxy map programmed"}
{"level":"debug","instance_id":"lgbi7","pass_at":0.5,"mapped_at":1,"kernel_at":3,"write_at":3.5,"acked_at":4,"message":"route timeline"}
not json
{"level":"debug","instance_id":"lgbi8","pass_at":0.25,"mapped_at":1,"kernel_at":0.5,"write_at":1,"acked_at":1.5,"message":"route timeline"}
`

func TestBreakdown(t *testing.T) {
	passes, err := parsePasses(strings.NewReader(edgeLog))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]passTimes{
		"lgbi7": {pass: 500 * time.Microsecond, mapped: time.Millisecond, kernel: 3 * time.Millisecond, write: 3500 * time.Microsecond, acked: 4 * time.Millisecond},
		"lgbi8": {pass: 250 * time.Microsecond, mapped: time.Millisecond, kernel: 500 * time.Microsecond, write: time.Millisecond, acked: 1500 * time.Microsecond},
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
		"lgbi7": {kvSeen: time.Millisecond, endpoint: 6 * time.Millisecond, routable: 7 * time.Millisecond},
		"lgbi8": {kvSeen: time.Millisecond, endpoint: 3 * time.Millisecond, routable: 4 * time.Millisecond},
		"lgbi9": {kvSeen: time.Millisecond, endpoint: 5 * time.Millisecond, routable: 6 * time.Millisecond},
	}, passes)
	if b.Routes != 2 {
		t.Fatalf("routes = %d, want 2 (lgbi9 is not in the log)", b.Routes)
	}
	// The slowest 1% is lgbi7 alone.
	slowest := map[string]time.Duration{
		PhaseKV: time.Millisecond, PhaseWait: 500 * time.Microsecond, PhaseHAProxy: 500 * time.Microsecond,
		PhaseRules: 2 * time.Millisecond, PhasePublishWait: 500 * time.Microsecond, PhaseEndpointWrite: 500 * time.Microsecond,
		PhaseEndpointWatch: time.Millisecond, PhaseProbe: time.Millisecond,
	}
	for ph, w := range slowest {
		if b.Slowest[ph] != w {
			t.Errorf("slowest %s = %s, want %s", ph, b.Slowest[ph], w)
		}
	}
	if got := b.Phases[PhaseRules]; got[1] != 0 {
		t.Errorf("kernel rules of lgbi8, whose batch was done before HAProxy = %s, want 0", got[1])
	}
	if !strings.Contains(b.String(), "over 2 routes") {
		t.Errorf("String() = %q", b.String())
	}
}
