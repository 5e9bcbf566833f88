package edgebench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Metrics fetches the edge's /metrics and returns every sample by its full name with labels,
// e.g. `livegate_edge_programming_seconds_bucket{le="0.01"}`.
func (e *Env) Metrics(ctx context.Context) (map[string]float64, error) {
	client := e.Topo.Edge.HTTPClient(5 * time.Second)
	req, err := newGet(ctx, "http://"+adminAddr+"/metrics")
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("edge metrics: %w", err)
	}
	defer resp.Body.Close()
	return ParseMetrics(resp.Body)
}

// ParseMetrics reads the Prometheus text format's samples (comments skipped).
func ParseMetrics(r io.Reader) (map[string]float64, error) {
	out := map[string]float64{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		out[line[:i]] = v
	}
	return out, sc.Err()
}

// HistogramQuantile estimates quantile q (0..1) of histogram name from the change of its
// buckets between before and after, as the upper bound of the bucket holding it (so the figure
// is an upper bound, at the bucket's resolution). It returns +Inf when the quantile lies above
// the last finite bucket, and NaN when nothing was observed.
func HistogramQuantile(name string, before, after map[string]float64, q float64) float64 {
	type bucket struct{ le, count float64 }
	var bs []bucket
	prefix := name + `_bucket{le="`
	for k, v := range after {
		if !strings.HasPrefix(k, prefix) {
			continue
		}
		le, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimPrefix(k, prefix), `"}`), 64)
		if err != nil {
			continue
		}
		bs = append(bs, bucket{le, v - before[k]})
	}
	sort.Slice(bs, func(i, j int) bool { return bs[i].le < bs[j].le })
	if len(bs) == 0 || bs[len(bs)-1].count == 0 {
		return math.NaN()
	}
	rank := q * bs[len(bs)-1].count
	for _, b := range bs {
		if b.count >= rank {
			return b.le
		}
	}
	return math.Inf(1)
}

func newGet(ctx context.Context, url string) (*http.Request, error) {
	return http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
}
