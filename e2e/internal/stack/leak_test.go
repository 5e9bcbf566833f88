package stack

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/livegate/livegate/e2e/internal/netns"
)

// leakPrefix starts the namespaces of this test alone.
const leakPrefix = "lgzl"

// leakChildEnv makes the test binary the aborted run of TestAbortedRunLeavesNothing.
const leakChildEnv = "LIVEGATE_STACK_LEAK_CHILD"

// TestAbortedRunLeavesNothing aborts a run that started processes in a Lab, by its test timeout
// and by SIGKILL, neither of which runs a cleanup: the processes it started die with it, none
// holds the file descriptor (a flock) the run inherited, and the next run's Lab sweeps the
// namespace with what the run's processes had started in it.
func TestAbortedRunLeavesNothing(t *testing.T) {
	if os.Getenv(leakChildEnv) != "" {
		abortedRun(t)
		return
	}
	RequireRoot(t, "sudo go test ./e2e/internal/stack/")
	for _, abort := range []string{"timeout", "kill"} {
		t.Run(abort, func(t *testing.T) { abortAndCheck(t, abort) })
	}
}

// abortedRun starts a process in a Lab and one that process starts in the background, reports
// their pids and the Lab, then waits to be aborted.
func abortedRun(t *testing.T) {
	ctx := context.Background()
	l, _, err := NewLab(ctx, leakPrefix)
	if err != nil {
		t.Fatal(err)
	}
	p, err := l.Procs.Start(ctx, "sh", l.Hub, "sh", "-c", "sleep 300 & echo $!; wait")
	if err != nil {
		t.Fatal(err)
	}
	var orphan string
	for orphan == "" {
		orphan = strings.TrimSpace(p.Output())
		time.Sleep(10 * time.Millisecond)
	}
	fmt.Printf("lab %s started %d orphan %s\n", l.ID, p.Pid(), orphan)
	time.Sleep(time.Minute)
}

// childTimeouts are the test timeouts the aborted run is given, one after another: the first
// fires soon after the run reports its Lab on a quiet machine; a loaded one may need longer only
// to get there, and then the run is started again with the next.
var childTimeouts = []time.Duration{3 * time.Second, 10 * time.Second, 30 * time.Second}

// abortedChild is a started aborted run that has reported its Lab.
type abortedChild struct {
	cmd             *exec.Cmd
	out             io.Reader
	id              string
	started, orphan int
}

// startAborted starts the aborted run (with timeout as its test timeout, unless zero) holding
// lock, and waits for its report; ok is false when it ended without one.
func startAborted(t *testing.T, lock *os.File, timeout time.Duration) (c abortedChild, ok bool) {
	t.Helper()
	args := []string{"-test.run", "^TestAbortedRunLeavesNothing$", "-test.v"}
	if timeout > 0 {
		args = append(args, "-test.timeout", timeout.String())
	}
	c.cmd = exec.Command(os.Args[0], args...)
	c.cmd.Env = append(os.Environ(), leakChildEnv+"=1")
	// Inherited as flock(1) passes its lock down: not close-on-exec.
	c.cmd.ExtraFiles = []*os.File{lock}
	out, err := c.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	c.out = out
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if _, err := fmt.Sscanf(sc.Text(), "lab %s started %d orphan %d", &c.id, &c.started, &c.orphan); err == nil {
			return c, true
		}
	}
	_ = c.cmd.Process.Kill()
	_ = c.cmd.Wait()
	return c, false
}

func abortAndCheck(t *testing.T, abort string) {
	lock, err := os.Create(filepath.Join(t.TempDir(), "held.lock"))
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	var c abortedChild
	ok := false
	if abort == "timeout" {
		for _, timeout := range childTimeouts {
			if c, ok = startAborted(t, lock, timeout); ok {
				break
			}
			t.Logf("the aborted run timed out after %s before it reported its Lab: again with longer", timeout)
		}
	} else {
		c, ok = startAborted(t, lock, 0)
	}
	if !ok {
		t.Fatal("the aborted run reported no Lab")
	}
	child, out, id, started, orphan := c.cmd, c.out, c.id, c.started, c.orphan
	t.Cleanup(func() { _ = (&netns.Namespace{Name: id + "h"}).Delete(context.Background()) })
	if holds(orphan, lock.Name()) {
		t.Errorf("the orphan %d holds the run's inherited descriptor", orphan)
	}
	if abort == "kill" {
		_ = child.Process.Kill()
	}
	go func() { _, _ = io.Copy(io.Discard, out) }()
	_ = child.Wait()
	t.Logf("run aborted by %s: %v", abort, child.ProcessState)
	waitGone(t, started, "the process the run started")
	if !running(orphan) {
		t.Fatalf("the orphan %d is gone before any sweep: the check proves nothing", orphan)
	}
	ctx := context.Background()
	l, swept, err := NewLab(ctx, leakPrefix)
	if l != nil {
		defer func() {
			if err := l.Close(time.Second); err != nil {
				t.Error(err)
			}
		}()
	}
	if err != nil {
		t.Fatal(err)
	}
	if len(swept) != 1 || swept[0] != id+"h" {
		t.Errorf("the next run swept %v, want [%sh]", swept, id)
	}
	waitGone(t, orphan, "the orphan left in the namespace")
	if left, _ := netns.List(ctx, id); len(left) > 0 {
		t.Errorf("namespaces left: %v", left)
	}
}

// holds reports whether pid has path open.
func holds(pid int, path string) bool {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if target, err := os.Readlink(filepath.Join(dir, e.Name())); err == nil && target == path {
			return true
		}
	}
	return false
}

// running reports whether pid exists and is not a zombie.
func running(pid int) bool {
	if err := syscall.Kill(pid, 0); err != nil {
		return false
	}
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// "pid (comm) S ...": the state follows the last parenthesis.
	s := string(stat)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

func waitGone(t *testing.T, pid int, what string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for running(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("%s (%d) still runs", what, pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
