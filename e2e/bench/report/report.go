// Package report prints benchmark results in one fixed shape — livegate's figures, the
// baseline's, the ratio and the target — and describes the machine they were measured on.
package report

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strings"
)

// Verdict says how a figure compares with its target.
type Verdict string

// Verdicts.
const (
	Met     Verdict = "met"
	Missed  Verdict = "MISSED"
	Info    Verdict = "no target"
	Skipped Verdict = "skipped"
	// Unsure is a figure known only as a range that straddles the target.
	Unsure Verdict = "inconclusive"
)

// Result is one benchmark's outcome.
type Result struct {
	Name     string
	Livegate string // livegate's figures
	Baseline string // the same-run baseline's figures
	Ratio    string // e.g. "ratio p99 = 0.04×"
	Target   string // e.g. "p99 ≤ 10 ms"
	Verdict  Verdict
	Notes    []string
}

// Line is the one-line summary: `name: livegate … | baseline … | ratio … (target …: met)`.
func (r Result) Line() string {
	parts := []string{r.Name + ": livegate " + r.Livegate}
	if r.Baseline != "" {
		parts = append(parts, r.Baseline)
	}
	if r.Ratio != "" {
		parts = append(parts, r.Ratio)
	}
	line := strings.Join(parts, " | ")
	if r.Target != "" {
		line += fmt.Sprintf(" (target %s: %s)", r.Target, r.Verdict)
	} else if r.Verdict != "" {
		line += fmt.Sprintf(" (%s)", r.Verdict)
	}
	return line
}

// Print writes the summary line and the notes, indented.
func (r Result) Print(w io.Writer) {
	fmt.Fprintln(w, r.Line())
	for _, n := range r.Notes {
		fmt.Fprintln(w, "    "+n)
	}
}

// Verdictf returns Met when ok, else Missed.
func Verdictf(ok bool) Verdict {
	if ok {
		return Met
	}
	return Missed
}

// Machine describes where the figures come from.
func Machine(ctx context.Context) string {
	var b bytes.Buffer
	fmt.Fprintf(&b, "cpus=%d", runtime.NumCPU())
	if mem := memTotal(); mem != "" {
		fmt.Fprintf(&b, " mem=%s", mem)
	}
	if out, err := exec.CommandContext(ctx, "uname", "-r").Output(); err == nil {
		fmt.Fprintf(&b, " kernel=%s", strings.TrimSpace(string(out)))
	}
	if out, err := exec.CommandContext(ctx, "haproxy", "-v").Output(); err == nil {
		if f := strings.Fields(string(out)); len(f) >= 3 {
			fmt.Fprintf(&b, " haproxy=%s", f[2])
		}
	}
	fmt.Fprintf(&b, " go=%s", runtime.Version())
	if out, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(out), "\n") {
			if name, ok := strings.CutPrefix(l, "model name"); ok {
				fmt.Fprintf(&b, " cpu=%q", strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(name), ":")))
				break
			}
		}
	}
	return b.String()
}

func memTotal() string {
	out, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return ""
	}
	for _, l := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(l, "MemTotal:"); ok {
			var kb int64
			if _, err := fmt.Sscanf(strings.TrimSpace(v), "%d kB", &kb); err == nil {
				return fmt.Sprintf("%.1fGiB", float64(kb)/(1<<20))
			}
		}
	}
	return ""
}
