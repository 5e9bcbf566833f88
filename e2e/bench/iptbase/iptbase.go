// Package iptbase measures the baseline for bulk programming: one `iptables` process per DNAT
// rule, the way a shell script without livegate adds media ports, inside a namespace of its own.
// The run is bounded by a rule count and a time budget; Extrapolate projects it to a larger
// count from the measured per-rule cost, which grows with the chain (iptables-nft reads the
// chain back on each invocation).
package iptbase

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/netip"
	"os/exec"
	"strings"
	"time"

	"github.com/livegate/livegate/e2e/bench/stats"
	"github.com/livegate/livegate/e2e/internal/netns"
)

// Options bound one run.
type Options struct {
	Rules  int           // at most this many rules
	Budget time.Duration // stop adding rules after this long
}

// Result is the measured cost of each rule, in order.
type Result struct {
	PerRule []time.Duration
	Total   time.Duration
	// Restore is the time one iptables-restore took to load the same rules into a fresh chain,
	// for reference.
	Restore time.Duration
}

// Rule is the iptables DNAT rule of public port i, as livegate wrote them before its nftables map.
func Rule(chain string, i int) []string {
	port := 10500 + i
	backend := netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 19, byte(1 + i/2768), 2}), uint16(30000+i%2768))
	return []string{"-t", "nat", "-A", chain, "-d", "198.18.1.1/32", "-p", "udp", "-m", "udp", "--dport", fmt.Sprint(port),
		"-m", "comment", "--comment", fmt.Sprintf("lg:%d", port), "-j", "DNAT", "--to-destination", backend.String()}
}

// Run adds rules one process at a time in a fresh namespace named name.
func Run(ctx context.Context, name string, o Options) (Result, error) {
	ns, err := netns.Add(ctx, name)
	if err != nil {
		return Result{}, err
	}
	defer func() { _ = ns.Delete(context.WithoutCancel(ctx)) }()
	const chain = "LGB-DNAT"
	if err := inNS(ctx, ns, "iptables", "-t", "nat", "-N", chain); err != nil {
		return Result{}, err
	}
	if err := inNS(ctx, ns, "iptables", "-t", "nat", "-A", "PREROUTING", "-j", chain); err != nil {
		return Result{}, err
	}
	var res Result
	start := time.Now()
	for i := range o.Rules {
		if time.Since(start) > o.Budget || ctx.Err() != nil {
			break
		}
		t := time.Now()
		if err := inNS(ctx, ns, "iptables", Rule(chain, i)...); err != nil {
			return res, fmt.Errorf("rule %d: %w", i, err)
		}
		res.PerRule = append(res.PerRule, time.Since(t))
	}
	res.Total = time.Since(start)

	var batch bytes.Buffer
	batch.WriteString("*nat\n:LGB-BATCH - [0:0]\n")
	for i := range len(res.PerRule) {
		batch.WriteString(strings.Join(Rule("LGB-BATCH", i)[2:], " ") + "\n")
	}
	batch.WriteString("COMMIT\n")
	t := time.Now()
	if err := ns.Do(func() error {
		cmd := exec.CommandContext(ctx, "iptables-restore", "--noflush")
		cmd.Stdin = &batch
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("iptables-restore: %w: %s", err, out)
		}
		return nil
	}); err != nil {
		return res, err
	}
	res.Restore = time.Since(t)

	return res, nil
}

// Floors are the least one programming pass costs in the kernel: the median time to commit a
// two-rule batch into a namespace that already holds rules, by starting iptables-restore for it
// (Exec) and by feeding it to one iptables-restore that stays running (Fed), as the edge does.
type Floors struct {
	Exec, Fed time.Duration
	// Churn and ChurnP90 are the median and 90th percentile of batches that each delete one
	// rule and append one, fed at the churn's pace.
	Churn, ChurnP90 time.Duration
}

// batches is how many two-rule batches each floor is the median of.
const batches = 7

// Floor measures Floors in a namespace (named name) that already holds held rules.
func Floor(ctx context.Context, name string, held int) (Floors, error) {
	ns, err := netns.Add(ctx, name)
	if err != nil {
		return Floors{}, err
	}
	defer func() { _ = ns.Delete(context.WithoutCancel(ctx)) }()
	restore := func(payload string) error {
		return ns.Do(func() error {
			cmd := exec.CommandContext(ctx, "iptables-restore", "--noflush")
			cmd.Stdin = strings.NewReader(payload)
			if out, err := cmd.CombinedOutput(); err != nil {
				return fmt.Errorf("iptables-restore: %w: %s", err, out)
			}
			return nil
		})
	}
	var b strings.Builder
	b.WriteString("*nat\n:LGB-HELD - [0:0]\n")
	for i := range held {
		b.WriteString(strings.Join(Rule("LGB-HELD", i)[2:], " ") + "\n")
	}
	b.WriteString("COMMIT\n")
	if err := restore(b.String()); err != nil {
		return Floors{}, err
	}
	small := func(round int) string {
		chain := fmt.Sprintf("LGB-SMALL%d", round)
		return fmt.Sprintf("*nat\n:%s - [0:0]\n%s\n%s\nCOMMIT\n", chain,
			strings.Join(Rule(chain, held+2*round)[2:], " "), strings.Join(Rule(chain, held+2*round+1)[2:], " "))
	}
	var f Floors
	var execd stats.Durations
	for i := range batches {
		t := time.Now()
		if err := restore(small(i)); err != nil {
			return Floors{}, err
		}
		execd = append(execd, time.Since(t))
	}
	f.Exec = execd.Percentile(50)
	fed, err := fedFloor(ctx, ns, batches, 0, func(i int) string { return small(batches + i) })
	if err != nil {
		return Floors{}, err
	}
	f.Fed = fed.Percentile(50)
	// What a churning edge writes instead: each batch deletes one rule and appends another, at
	// the churn's pace. A rule with an xtables match or target (comment, DNAT) waits in the
	// kernel for the release of the rules deleted before it, an RCU grace period.
	swap := func(i int) string {
		return fmt.Sprintf("*nat\n-D %s\n%s\nCOMMIT\n", strings.Join(Rule("LGB-HELD", i)[3:], " "),
			strings.Join(Rule("LGB-HELD", held+4*batches+i)[2:], " "))
	}
	churn, err := fedFloor(ctx, ns, min(churnBatches, held-1), ChurnPause, swap)
	if err != nil {
		return Floors{}, err
	}
	f.Churn, f.ChurnP90 = churn.Percentile(50), churn.Percentile(90)
	return f, nil
}

// churnBatches delete-and-append batches are fed ChurnPause apart: 100 changes per second.
const (
	churnBatches = 50
	ChurnPause   = 10 * time.Millisecond
)

// fedFloor feeds n batches, pause apart, to one iptables-restore --verbose and returns how long
// each took: it echoes comment lines, and the echo of a comment written after a batch means the
// batch was committed.
func fedFloor(ctx context.Context, ns *netns.Namespace, n int, pause time.Duration, batch func(int) string) (stats.Durations, error) {
	cmd := exec.CommandContext(ctx, "iptables-restore", "--noflush", "--verbose")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := ns.Do(cmd.Start); err != nil {
		return nil, fmt.Errorf("start iptables-restore: %w", err)
	}
	defer func() {
		_ = stdin.Close()
		_ = cmd.Wait()
	}()
	lines := bufio.NewScanner(stdout)
	feed := func(i int) error {
		marker := fmt.Sprintf("# lgb batch %d", i)
		if _, err := io.WriteString(stdin, batch(i)+marker+"\n"); err != nil {
			return err
		}
		for lines.Scan() {
			if lines.Text() == marker {
				return nil
			}
		}
		return fmt.Errorf("iptables-restore stopped: %s", strings.TrimSpace(stderr.String()))
	}
	// The first batch pays for the start, which the edge pays once per busy period.
	if err := feed(0); err != nil {
		return nil, err
	}
	var fed stats.Durations
	for i := 1; i <= n; i++ {
		time.Sleep(pause)
		t := time.Now()
		if err := feed(i); err != nil {
			return nil, err
		}
		fed = append(fed, time.Since(t))
	}
	return fed, nil
}

// Extrapolate projects the total time for n rules: a least-squares line through the per-rule
// cost against the chain length, summed over 0..n-1. It returns the measured total when n is
// not larger than what was measured.
func Extrapolate(perRule []time.Duration, n int) time.Duration {
	if len(perRule) == 0 {
		return 0
	}
	if n <= len(perRule) {
		var s time.Duration
		for _, d := range perRule[:n] {
			s += d
		}
		return s
	}
	a, b := fit(perRule)
	// Sum of a + b*i for i in 0..n-1.
	total := a*float64(n) + b*float64(n)*float64(n-1)/2
	return time.Duration(total)
}

// Slope is the fitted growth of the per-rule cost per rule already in the chain.
func Slope(perRule []time.Duration) time.Duration {
	_, b := fit(perRule)
	return time.Duration(b)
}

func fit(perRule []time.Duration) (a, b float64) {
	n := float64(len(perRule))
	var sx, sy, sxx, sxy float64
	for i, d := range perRule {
		x, y := float64(i), float64(d)
		sx, sy, sxx, sxy = sx+x, sy+y, sxx+x*x, sxy+x*y
	}
	den := n*sxx - sx*sx
	if den == 0 {
		return sy / n, 0
	}
	b = (n*sxy - sx*sy) / den
	// A noisy run can fit a negative slope; the cost never falls as the chain grows.
	b = max(b, 0)
	a = (sy - b*sx) / n
	return a, b
}

// inNS runs a program whose process starts on a thread inside ns: no `ip netns exec` in between,
// so the figure is iptables' own cost.
func inNS(ctx context.Context, ns *netns.Namespace, name string, args ...string) error {
	return ns.Do(func() error {
		out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
		}
		return nil
	})
}
