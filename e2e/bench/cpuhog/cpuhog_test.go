package cpuhog

import (
	"runtime"
	"syscall"
	"testing"
	"time"
)

// One process per core is started, and none is left after Stop.
func TestStartStop(t *testing.T) {
	h, err := Start(time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if h.Cores() != runtime.NumCPU() {
		t.Fatalf("%d processes for %d cores", h.Cores(), runtime.NumCPU())
	}
	pids := make([]int, 0, h.Cores())
	for _, c := range h.cmds {
		pids = append(pids, c.Process.Pid)
	}
	h.Stop()
	for _, pid := range pids {
		if err := syscall.Kill(pid, 0); err == nil {
			t.Fatalf("process %d still alive after Stop", pid)
		}
	}
}
