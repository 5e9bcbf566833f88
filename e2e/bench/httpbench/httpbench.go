// Package httpbench drives wrk (Debian's HTTP load generator) and reads its figures.
package httpbench

import (
	"bufio"
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// Result is what wrk reports.
type Result struct {
	RPS      float64
	P50, P99 time.Duration
	Requests int64
	Non2xx   int64
	Errors   int64
}

// Options shape one wrk run.
type Options struct {
	Threads, Conns int
	Duration       time.Duration
}

// Wrk loads url for o.Duration.
func Wrk(ctx context.Context, url string, o Options) (Result, error) {
	bin, err := exec.LookPath("wrk")
	if err != nil {
		return Result{}, fmt.Errorf("wrk not installed (apt-get install wrk): %w", err)
	}
	secs := max(int(o.Duration.Round(time.Second)/time.Second), 1)
	out, err := exec.CommandContext(ctx, bin, "-t", strconv.Itoa(o.Threads), "-c", strconv.Itoa(o.Conns),
		"-d", strconv.Itoa(secs)+"s", "--latency", url).CombinedOutput()
	if err != nil {
		return Result{}, fmt.Errorf("wrk %s: %w: %s", url, err, out)
	}
	return Parse(string(out))
}

// Parse reads wrk's --latency output.
func Parse(out string) (Result, error) {
	var r Result
	var haveRPS, haveP99 bool
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) == 2 && f[0] == "Requests/sec:":
			v, err := strconv.ParseFloat(f[1], 64)
			if err != nil {
				return r, fmt.Errorf("wrk requests/sec %q: %w", f[1], err)
			}
			r.RPS, haveRPS = v, true
		case len(f) == 2 && (f[0] == "50%" || f[0] == "99%"):
			d, err := parseDuration(f[1])
			if err != nil {
				return r, err
			}
			if f[0] == "50%" {
				r.P50 = d
			} else {
				r.P99, haveP99 = d, true
			}
		case len(f) >= 3 && f[1] == "requests" && f[2] == "in":
			r.Requests, _ = strconv.ParseInt(f[0], 10, 64)
		case len(f) == 5 && f[0] == "Non-2xx":
			r.Non2xx, _ = strconv.ParseInt(f[4], 10, 64)
		case len(f) >= 2 && f[0] == "Socket" && f[1] == "errors:":
			// "Socket errors: connect 0, read 0, write 0, timeout 0"
			for i := 3; i < len(f); i += 2 {
				n, _ := strconv.ParseInt(strings.TrimSuffix(f[i], ","), 10, 64)
				r.Errors += n
			}
		}
	}
	if !haveRPS || !haveP99 {
		return r, fmt.Errorf("wrk output without Requests/sec or 99%%: %q", out)
	}
	return r, nil
}

func parseDuration(s string) (time.Duration, error) {
	for _, u := range []struct {
		suffix string
		unit   float64
	}{{"us", 1e3}, {"ms", 1e6}, {"m", 60e9}, {"s", 1e9}} {
		if v, ok := strings.CutSuffix(s, u.suffix); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				return 0, fmt.Errorf("wrk duration %q: %w", s, err)
			}
			return time.Duration(f * u.unit), nil
		}
	}
	return 0, fmt.Errorf("wrk duration %q: unknown unit", s)
}
