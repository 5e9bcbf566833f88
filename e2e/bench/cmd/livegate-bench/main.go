// Command livegate-bench runs livegate's benchmarks (make bench, make bench-quick); each prints
// livegate's figures next to a baseline measured in the same run.
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/livegate/livegate/e2e/bench/haproxyreload"
	"github.com/livegate/livegate/e2e/bench/stats"
)

func main() {
	ctx := context.Background()
	r, err := haproxyreload.Run(ctx, haproxyreload.Options{Held: 100, Changes: 30})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(stats.FormatDuration(r.Latencies.Percentile(50)), stats.FormatDuration(r.Latencies.Percentile(99)), r.Failures, time.Now())
}
