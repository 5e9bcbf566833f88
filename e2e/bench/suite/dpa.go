package suite

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/livegate/livegate/e2e/bench/report"
	"github.com/livegate/livegate/e2e/bench/stats"
	"github.com/livegate/livegate/e2e/internal/stack"
)

// dpaBench is the Go benchmark of the dataplaneapi driver against its fake Data Plane API, whose
// force_sync rewrites the whole map file per call as the real server's does. It lives beside the
// driver because the fake is internal to the edge's module.
const (
	dpaPackage = "./edgeproxy/internal/dataplaneapi/"
	dpaBench   = "BenchmarkDataplaneAPIChurn"
)

// dataplaneAPI reports the cost of a map change through the Data Plane API as the map grows, and
// whether a churn of 100 changes/s on 9,500 entries stays bounded.
func (c Config) dataplaneAPI(ctx context.Context) []report.Result {
	const growth, churn = "dpa-change-growth", "dpa-churn"
	secs := c.pick(3, 10)
	m, err := runDPABench(ctx, secs)
	if err != nil {
		return []report.Result{failed(growth, err), failed(churn, err)}
	}
	d := func(k string) time.Duration { return time.Duration(m[k] * float64(time.Millisecond)) }
	ratio := func(a, b string) float64 {
		if m[b] == 0 {
			return 0
		}
		return m[a] / m[b]
	}
	g := report.Result{
		Name:     growth,
		Livegate: fmt.Sprintf("one change on 9,500 entries p50=%s p99=%s", stats.FormatDuration(d("single-9500-p50-ms")), stats.FormatDuration(d("single-9500-p99-ms"))),
		Baseline: fmt.Sprintf("on 6 entries p50=%s p99=%s", stats.FormatDuration(d("single-6-p50-ms")), stats.FormatDuration(d("single-6-p99-ms"))),
		Ratio:    "ratio p50 = " + stats.FormatRatio(ratio("single-9500-p50-ms", "single-6-p50-ms")),
		Verdict:  report.Info,
		Notes: []string{
			"200 re-points one after another, each its own Apply (one HTTP call with force_sync), through the fake Data Plane API (" + dpaPackage + ")",
			"the fake's force_sync does what the real server's does (v2.9): read and parse the map file, compare it sorted with the runtime map, truncate it and write it again one line per write call",
		},
	}
	backlog := m["batched-backlog-max"]
	ch := report.Result{
		Name: churn,
		Livegate: fmt.Sprintf("batched p50=%s p99=%s, backlog max %.0f changes, %.2f force_syncs per change",
			stats.FormatDuration(d("batched-p50-ms")), stats.FormatDuration(d("batched-p99-ms")), backlog, m["batched-syncs-per-change"]),
		Baseline: fmt.Sprintf("one force_sync per change p50=%s p99=%s, backlog max %.0f",
			stats.FormatDuration(d("per-change-p50-ms")), stats.FormatDuration(d("per-change-p99-ms")), m["per-change-backlog-max"]),
		Ratio:   "ratio p99 = " + stats.FormatRatio(ratio("batched-p99-ms", "per-change-p99-ms")),
		Target:  "backlog < 100 (1 s of churn)",
		Verdict: report.Verdictf(backlog < 100),
		Notes: []string{
			fmt.Sprintf("%d s of 100 changes/s (half adds of new keys, half deletes) on a map of 9,500 entries; a change's time runs from its arrival to the end of the Apply that carried it", secs),
			"passes as the edge's reconcile loop makes them: what arrived while a pass ran is the next pass's batch, one Apply each; the baseline makes one Apply, so one force_sync, per change, as the driver did before",
		},
	}
	return []report.Result{g, ch}
}

// runDPABench runs the Go benchmark once and returns its custom metrics by unit.
func runDPABench(ctx context.Context, secs int) (map[string]float64, error) {
	root, err := stack.RepoRoot()
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, "go", "test", "-run", "^$", "-bench", "^"+dpaBench+"$", "-benchtime", "1x", "-timeout", "10m", dpaPackage)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "LIVEGATE_DPA_BENCH_SECONDS="+strconv.Itoa(secs))
	out, err := cmd.CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("go test -bench %s: %w: %s", dpaBench, err, lastLines(string(out), 5))
	}
	for line := range strings.SplitSeq(string(out), "\n") {
		if !strings.HasPrefix(line, dpaBench) {
			continue
		}
		f := strings.Fields(line)
		m := map[string]float64{}
		// name, iterations, then value-unit pairs.
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				return nil, fmt.Errorf("benchmark line %q: %w", line, err)
			}
			m[f[i+1]] = v
		}
		return m, nil
	}
	return nil, errors.New("go test -bench printed no result line: " + lastLines(string(out), 5))
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(l[max(0, len(l)-n):], " / ")
}
