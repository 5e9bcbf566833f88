// Package cpuhog keeps every core busy for a bounded time, so that a benchmark measures what a
// noisy host does to it.
package cpuhog

import (
	"fmt"
	"os/exec"
	"runtime"
	"strconv"
	"time"
)

// Hog is one busy process per core.
type Hog struct {
	cmds []*exec.Cmd
}

// Start starts one busy shell loop per core, at the default priority. Each loop ends by itself
// after limit (bash's SECONDS, no process forked per turn), so none outlives a bench that died
// without Stop.
func Start(limit time.Duration) (*Hog, error) {
	h := &Hog{}
	secs := strconv.Itoa(max(int(limit/time.Second), 1))
	for range runtime.NumCPU() {
		cmd := exec.Command("bash", "-c", "while (( SECONDS < "+secs+" )); do :; done")
		if err := cmd.Start(); err != nil {
			h.Stop()
			return nil, fmt.Errorf("start cpu hog: %w", err)
		}
		h.cmds = append(h.cmds, cmd)
	}
	return h, nil
}

// Cores is how many busy processes run.
func (h *Hog) Cores() int { return len(h.cmds) }

// Stop kills the busy processes and waits for them.
func (h *Hog) Stop() {
	for _, c := range h.cmds {
		_ = c.Process.Kill()
	}
	for _, c := range h.cmds {
		_ = c.Wait()
	}
	h.cmds = nil
}
