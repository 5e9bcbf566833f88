package e2e

import (
	"bufio"
	"context"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/livegate/livegate/e2e/internal/stack"
)

// edgeMetric reads an unlabelled metric from the edge's admin endpoint.
func edgeMetric(ctx context.Context, t *testing.T, d *stack.Deployment, name string) float64 {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://127.0.0.1:9470/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := d.Topo.Edge.HTTPClient(5 * time.Second).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			n, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatalf("no %s in /metrics", name)
	return -1
}
