package stack

import (
	"os/exec"
	"strings"
	"testing"
	"time"
)

// A name whose process still runs is refused, so that Stop still reaches that process; once it
// has exited the name may start again, in its old place.
func TestStartCmdRefusesARunningName(t *testing.T) {
	var g Group
	t.Cleanup(func() { _ = g.Stop(time.Second) })
	first, err := g.StartCmd("a", exec.Command("sleep", "60"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.StartCmd("a", exec.Command("sleep", "60")); err == nil || !strings.Contains(err.Error(), "already running") {
		t.Fatalf("second start of a running name: %v", err)
	}
	if _, err := g.StartCmd("b", exec.Command("sleep", "60")); err != nil {
		t.Fatal(err)
	}
	first.Kill()
	again, err := g.StartCmd("a", exec.Command("sleep", "60"))
	if err != nil {
		t.Fatalf("start after the process exited: %v", err)
	}
	if procs := g.Procs(); len(procs) != 3 {
		t.Fatalf("%d processes recorded, want 3", len(procs))
	}
	if err := g.Stop(time.Second); err != nil {
		t.Fatal(err)
	}
	if !again.Exited() {
		t.Fatal("Stop left the restarted process running")
	}
}

// Stop reports a process that had to be killed; one that died of the SIGTERM (no handler) is no
// failure.
func TestStopReportsAProcessThatIgnoresSIGTERM(t *testing.T) {
	var g Group
	if _, err := g.StartCmd("plain", exec.Command("sleep", "60")); err != nil {
		t.Fatal(err)
	}
	stubborn, err := g.StartCmd("stubborn", exec.Command("sh", "-c", `trap "" TERM; echo ready; while :; do sleep 1; done`))
	if err != nil {
		t.Fatal(err)
	}
	// Its trap must be set before the SIGTERM comes.
	for !strings.Contains(stubborn.Output(), "ready") {
		if stubborn.Exited() {
			t.Fatalf("sh exited: %v", stubborn.Err())
		}
		time.Sleep(10 * time.Millisecond)
	}
	err = g.Stop(200 * time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "stubborn") || strings.Contains(err.Error(), "plain") {
		t.Fatalf("Stop: %v, want the stubborn process alone reported", err)
	}
}
