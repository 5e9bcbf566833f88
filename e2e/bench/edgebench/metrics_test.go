package edgebench

import (
	"math"
	"strings"
	"testing"
)

const exposition = `# HELP livegate_edge_programming_seconds x
# TYPE livegate_edge_programming_seconds histogram
livegate_edge_programming_seconds_bucket{le="0.005"} 10
livegate_edge_programming_seconds_bucket{le="0.01"} 50
livegate_edge_programming_seconds_bucket{le="0.1"} 99
livegate_edge_programming_seconds_bucket{le="+Inf"} 100
livegate_edge_programming_seconds_count 100
go_memstats_heap_inuse_bytes 1.2e+07
`

func TestParseMetricsAndQuantile(t *testing.T) {
	after, err := ParseMetrics(strings.NewReader(exposition))
	if err != nil {
		t.Fatal(err)
	}
	if after["go_memstats_heap_inuse_bytes"] != 1.2e7 {
		t.Fatalf("heap in use = %v", after["go_memstats_heap_inuse_bytes"])
	}
	const h = "livegate_edge_programming_seconds"
	tests := []struct {
		q    float64
		want float64
	}{{0.5, 0.01}, {0.99, 0.1}, {0.05, 0.005}, {1, math.Inf(1)}}
	for _, tt := range tests {
		if got := HistogramQuantile(h, nil, after, tt.q); got != tt.want {
			t.Errorf("q%v = %v, want %v", tt.q, got, tt.want)
		}
	}
	// Only what was observed between the two scrapes counts.
	before := map[string]float64{
		h + `_bucket{le="0.005"}`: 10, h + `_bucket{le="0.01"}`: 10, h + `_bucket{le="0.1"}`: 10, h + `_bucket{le="+Inf"}`: 10,
	}
	if got := HistogramQuantile(h, before, after, 0.5); got != 0.1 {
		t.Errorf("delta q0.5 = %v, want 0.1", got)
	}
	if got := HistogramQuantile(h, after, after, 0.5); !math.IsNaN(got) {
		t.Errorf("no observations: %v, want NaN", got)
	}
}
