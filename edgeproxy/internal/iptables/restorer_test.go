package iptables

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

func TestBatchLines(t *testing.T) {
	for _, c := range []struct {
		msg   string
		first int
		want  string
	}{
		{"iptables-restore: line 17 failed: Bad rule", 15, "iptables-restore: line 3 of the batch failed: Bad rule"},
		{"iptables-restore: line 2 failed", 1, "iptables-restore: line 2 of the batch failed"},
		{"iptables-restore: line 4 failed", 9, "iptables-restore: line 4 failed"},
		{"no line number here", 5, "no line number here"},
	} {
		if got := batchLines(c.msg, c.first); got != c.want {
			t.Errorf("batchLines(%q, %d) = %q, want %q", c.msg, c.first, got, c.want)
		}
	}
}

func TestTailBufferKeepsTheEnd(t *testing.T) {
	b := &tailBuffer{max: 8}
	_, _ = b.Write([]byte("0123456789"))
	_, _ = b.Write([]byte("ab"))
	if got := b.String(); got != "456789ab" {
		t.Fatalf("tail = %q, want 456789ab", got)
	}
	b.Reset()
	if got := b.String(); got != "" {
		t.Fatalf("after Reset = %q", got)
	}
}

// testNetns creates a network namespace for the test, or skips where that is not possible.
func testNetns(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a network namespace and program iptables in it")
	}
	for _, bin := range []string{"ip", "iptables-restore", "iptables-save"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("needs %s: %v", bin, err)
		}
	}
	name := fmt.Sprintf("lgipt%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	return name
}

func natRules(t *testing.T, e *Exec) []string {
	t.Helper()
	out, err := e.Save(context.Background(), "nat")
	if err != nil {
		t.Fatal(err)
	}
	rs, err := ParseSave(out)
	if err != nil {
		t.Fatal(err)
	}
	var specs []string
	for _, r := range rs.Table("nat").ChainRules("LGT") {
		specs = append(specs, r.Spec)
	}
	return specs
}

func dnat(port int) string {
	return fmt.Sprintf("-p udp -m udp --dport %d -j DNAT --to-destination 198.18.9.9:%d", port, port)
}

// TestLongLivedRestore feeds batches to one iptables-restore: each is committed when Restore
// returns, a failing batch (one table) changes nothing and names its own line, the next batch starts a new
// process, and rules changed by someone else meanwhile are seen.
func TestLongLivedRestore(t *testing.T) {
	ns := testNetns(t)
	ctx := context.Background()
	e := NewExec(WithNetns(ns))
	defer e.Close()

	b := NewBatch()
	b.DeclareChain("nat", "LGT")
	b.Append("nat", "LGT", dnat(1000))
	if err := e.Restore(ctx, b.Bytes()); err != nil {
		t.Fatal(err)
	}
	first := e.r
	if first == nil {
		t.Fatal("no long-lived iptables-restore after a batch")
	}
	for port := 1001; port <= 1003; port++ {
		b := NewBatch()
		b.Append("nat", "LGT", dnat(port))
		if err := e.Restore(ctx, b.Bytes()); err != nil {
			t.Fatal(err)
		}
		if got := natRules(t, e); len(got) != port-999 || got[len(got)-1] != dnat(port) {
			t.Fatalf("after adding %d the chain holds %q", port, got)
		}
	}
	if e.r != first {
		t.Fatal("batches did not share one iptables-restore")
	}

	bad := NewBatch()
	bad.Append("nat", "LGT", dnat(2000))
	bad.Delete("nat", "LGT", dnat(9999))
	err := e.Restore(ctx, bad.Bytes())
	if err == nil || !strings.Contains(err.Error(), "line 3 of the batch failed") {
		t.Fatalf("failing batch: err = %v, want one naming line 3 of the batch", err)
	}
	if got := natRules(t, e); len(got) != 4 {
		t.Fatalf("a failed batch changed the chain: %q", got)
	}

	if out, err := exec.Command("ip", "netns", "exec", ns, "iptables", "-t", "nat", "-D", "LGT", "-p", "udp", "--dport", "1000",
		"-j", "DNAT", "--to-destination", "198.18.9.9:1000").CombinedOutput(); err != nil {
		t.Fatalf("delete a rule behind the runner's back: %v: %s", err, out)
	}
	gone := NewBatch()
	gone.Delete("nat", "LGT", dnat(1000))
	if err := e.Restore(ctx, gone.Bytes()); err == nil {
		t.Fatal("deleting a rule someone else deleted succeeded: the process works on a stale picture")
	}
	next := NewBatch()
	next.Delete("nat", "LGT", dnat(1001))
	if err := e.Restore(ctx, next.Bytes()); err != nil {
		t.Fatalf("batch after failures: %v", err)
	}
	want := []string{dnat(1002), dnat(1003)}
	if got := natRules(t, e); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("chain = %q, want %q", got, want)
	}
}

func TestLongLivedRestoreStopsWhenIdle(t *testing.T) {
	ns := testNetns(t)
	e := NewExec(WithNetns(ns), WithIdleTimeout(50*time.Millisecond))
	defer e.Close()
	b := NewBatch()
	b.DeclareChain("nat", "LGT")
	if err := e.Restore(context.Background(), b.Bytes()); err != nil {
		t.Fatal(err)
	}
	e.mu.Lock()
	r := e.r
	e.mu.Unlock()
	if r == nil {
		t.Fatal("no long-lived iptables-restore after a batch")
	}
	select {
	case <-r.exited:
	case <-time.After(10 * time.Second):
		t.Fatal("idle iptables-restore still running")
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.r != nil {
		t.Fatal("the runner still holds the stopped process")
	}
}

func TestOneShotRestore(t *testing.T) {
	ns := testNetns(t)
	e := NewExec(WithNetns(ns), WithIdleTimeout(0))
	b := NewBatch()
	b.DeclareChain("nat", "LGT")
	b.Append("nat", "LGT", dnat(1000))
	if err := e.Restore(context.Background(), b.Bytes()); err != nil {
		t.Fatal(err)
	}
	if e.r != nil {
		t.Fatal("a long-lived process runs with the idle timeout off")
	}
	if got := natRules(t, e); len(got) != 1 {
		t.Fatalf("chain = %q", got)
	}
}

func TestLargeBatchGetsItsOwnProcess(t *testing.T) {
	ns := testNetns(t)
	e := NewExec(WithNetns(ns))
	defer e.Close()
	b := NewBatch()
	b.DeclareChain("nat", "LGT")
	for i := range LongLivedMaxLines {
		b.Append("nat", "LGT", dnat(1000+i))
	}
	if err := e.Restore(context.Background(), b.Bytes()); err != nil {
		t.Fatal(err)
	}
	if e.r != nil {
		t.Fatal("a batch over LongLivedMaxLines went to the long-lived process")
	}
	if got := natRules(t, e); len(got) != LongLivedMaxLines {
		t.Fatalf("chain holds %d rules, want %d", len(got), LongLivedMaxLines)
	}
}
