package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/livegate/livegate/e2e/internal/netns"
	"github.com/livegate/livegate/e2e/internal/stack"
)

// startDeployment starts o's stack for t, whose end stops it, prints every process's output if
// t failed, and fails t if a namespace is left behind.
func startDeployment(ctx context.Context, t *testing.T, o stack.Options) *stack.Deployment {
	t.Helper()
	start := time.Now()
	d, err := stack.Start(ctx, o)
	if err != nil {
		if d != nil {
			t.Log(d.Logs())
		}
		t.Fatal(err)
	}
	t.Logf("edge and %d nodes started in %s", len(d.Nodes), time.Since(start).Round(time.Millisecond))
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(d.Logs())
		}
		start := time.Now()
		if err := d.Close(); err != nil {
			t.Errorf("cleanup: %v", err)
		}
		t.Logf("stopped and cleaned up in %s", time.Since(start).Round(time.Millisecond))
		if left, _ := netns.List(context.Background(), d.Topo.ID); len(left) > 0 {
			t.Errorf("namespaces left behind: %v", left)
		}
	})
	return d
}
