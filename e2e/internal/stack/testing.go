package stack

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/livegate/livegate/e2e/internal/netns"
)

// logTail bounds each process's share of a failure report.
const logTail = 24 << 10

// RequireRoot skips t unless it runs as root (namespaces, nftables, iptables, conntrack).
func RequireRoot(t testing.TB, how string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skipf("needs root (network namespaces, nftables, iptables, conntrack); run `%s`", how)
	}
}

// LabFor opens a Lab for t. At t's end every process stops and every namespace goes, on failure
// too (a test killed before, by its timeout say, is swept by the next run, its processes having
// died with it); the processes' output is logged when t failed or logsEnv is set.
func LabFor(ctx context.Context, t testing.TB, prefix, logsEnv string) *Lab {
	t.Helper()
	l, swept, err := NewLab(ctx, prefix)
	if len(swept) > 0 {
		t.Logf("swept namespaces of a killed run: %v", swept)
	}
	if l != nil {
		t.Cleanup(func() {
			if t.Failed() || os.Getenv(logsEnv) != "" {
				t.Log(l.Procs.Logs(logTail))
			}
			start := time.Now()
			if err := l.Close(3 * time.Second); err != nil {
				t.Errorf("cleanup: %v", err)
			}
			t.Logf("deployment %s stopped and removed in %s", l.ID, since(start))
		})
	}
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// StartFor starts o's deployment for t, whose end stops it, logs every process's output if t
// failed, and fails t if a namespace is left behind.
func StartFor(ctx context.Context, t testing.TB, o Options) *Deployment {
	t.Helper()
	start := time.Now()
	d, err := Start(ctx, o)
	if err != nil {
		if d != nil {
			t.Log(d.Logs())
		}
		t.Fatal(err)
	}
	t.Logf("edge and %d nodes started in %s", len(d.Nodes), since(start))
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(d.Logs())
		}
		start := time.Now()
		if err := d.Close(); err != nil {
			t.Errorf("cleanup: %v", err)
		}
		t.Logf("stopped and cleaned up in %s", since(start))
		if left, _ := netns.List(context.Background(), d.Topo.ID); len(left) > 0 {
			t.Errorf("namespaces left behind: %v", left)
		}
	})
	return d
}

// Eventually retries check every interval until it passes, failing t when timeout (generous,
// never a measure) or ctx runs out. It returns how long it took.
func Eventually(ctx context.Context, t testing.TB, timeout, interval time.Duration, what string, check func() error) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := start.Add(timeout)
	for {
		err := check()
		if err == nil {
			return time.Since(start)
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			t.Fatalf("%s: not after %s: %v", what, timeout, err)
		}
		time.Sleep(interval)
	}
}

func since(t time.Time) time.Duration { return time.Since(t).Round(time.Millisecond) }

// For is Binaries for t: it fails t when the build failed.
func (b *Built) For(t testing.TB) Binaries {
	t.Helper()
	bins, err := b.Binaries()
	if err != nil {
		t.Fatal(err)
	}
	return bins
}

// Main runs a test binary's tests, then removes what they built: a TestMain's whole body.
func (b *Built) Main(m *testing.M) {
	code := m.Run()
	b.Remove()
	os.Exit(code)
}
