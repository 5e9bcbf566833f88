package report

import "testing"

func TestLine(t *testing.T) {
	tests := []struct {
		name string
		r    Result
		want string
	}{
		{"full", Result{Name: "route-latency", Livegate: "p50=1.2ms p99=4.8ms", Baseline: "haproxy-reload p50=30ms p99=120ms", Ratio: "ratio p99 = 0.040×", Target: "p99 ≤ 10 ms", Verdict: Met},
			"route-latency: livegate p50=1.2ms p99=4.8ms | haproxy-reload p50=30ms p99=120ms | ratio p99 = 0.040× (target p99 ≤ 10 ms: met)"},
		{"no target", Result{Name: "signaling", Livegate: "p50=2ms", Baseline: "direct p50=1ms", Ratio: "ratio = 2.00×", Verdict: Info},
			"signaling: livegate p50=2ms | direct p50=1ms | ratio = 2.00× (no target)"},
		{"bare", Result{Name: "x", Livegate: "1"}, "x: livegate 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.r.Line(); got != tt.want {
				t.Fatalf("Line() =\n%s\nwant\n%s", got, tt.want)
			}
		})
	}
}
