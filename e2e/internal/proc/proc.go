// Package proc runs the processes of an end-to-end run: it keeps each one's output (in full, for
// a failure report) and stops it politely, then firmly. A process never outlives the run that
// started it: it gets SIGKILL when the run dies (a test timeout, a panic, a SIGKILL), and it
// inherits no file the run did not mean to pass (a held flock).
package proc

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/livegate/livegate/pkg/logbuf"
)

// Proc is one started process.
type Proc struct {
	Name string
	cmd  *exec.Cmd
	out  *logbuf.Buffer
	done chan struct{}
	err  error
}

// Start starts cmd, sending its standard output and error to an internal buffer and, when tee is
// not nil, to tee as well.
func Start(name string, cmd *exec.Cmd, tee io.Writer) (*Proc, error) {
	p := &Proc{Name: name, cmd: cmd, out: &logbuf.Buffer{}, done: make(chan struct{})}
	var w io.Writer = p.out
	if tee != nil {
		w = io.MultiWriter(p.out, tee)
	}
	cmd.Stdout, cmd.Stderr = w, w
	// Its own process group, so a Ctrl-C at the terminal reaches the runner alone, which then
	// stops everything in order; SIGKILL when the runner dies without doing so.
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid, cmd.SysProcAttr.Pdeathsig = true, syscall.SIGKILL
	if err := startOnLauncher(cmd); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// launches are the starts the launcher thread runs.
var (
	launchOnce sync.Once
	launches   chan launch
)

type launch struct {
	cmd *exec.Cmd
	err chan error
}

// startOnLauncher starts cmd from one OS thread that lives as long as the runner. Pdeathsig
// fires when the thread that forked the child exits, not the process: the runtime ends a thread
// whose goroutine exits locked to it (netns.Do does, when it cannot leave a namespace), which
// would kill a process forked from it in the middle of a run.
func startOnLauncher(cmd *exec.Cmd) error {
	launchOnce.Do(func() {
		launches = make(chan launch)
		go func() {
			runtime.LockOSThread()
			for l := range launches {
				l.err <- l.cmd.Start()
			}
		}()
	})
	l := launch{cmd: cmd, err: make(chan error, 1)}
	launches <- l
	return <-l.err
}

// init marks close-on-exec every descriptor the runner inherited beyond the standard three (Go
// opens its own so), before anything is started (this package's processes, a browser, a
// command): a lock file `flock` passes down would otherwise be held by every process the run
// starts, and by anything that outlives it.
func init() {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return
	}
	for _, e := range entries {
		if fd, err := strconv.Atoi(e.Name()); err == nil && fd > 2 {
			syscall.CloseOnExec(fd)
		}
	}
}

// Pid is the process id.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has exited.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// ExitCode is the exit code once exited (-1 when killed by a signal or still running).
func (p *Proc) ExitCode() int {
	if !p.Exited() {
		return -1
	}
	return p.cmd.ProcessState.ExitCode()
}

// Err is what Wait returned, once exited.
func (p *Proc) Err() error {
	if !p.Exited() {
		return nil
	}
	return p.err
}

// Output is everything the process wrote so far.
func (p *Proc) Output() string { return p.out.String() }

// Stop sends SIGTERM, waits up to grace, then SIGKILLs. It returns the exit error, if any, of a
// process that stopped on SIGTERM.
func (p *Proc) Stop(grace time.Duration) error {
	if p.Exited() {
		return nil
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return p.err
	case <-time.After(grace):
	}
	_ = p.cmd.Process.Kill()
	<-p.done
	return fmt.Errorf("%s: still running %s after SIGTERM, killed", p.Name, grace)
}

// Kill sends SIGKILL, what a crash looks like, and waits for the process to go.
func (p *Proc) Kill() {
	if p.Exited() {
		return
	}
	_ = p.cmd.Process.Kill()
	<-p.done
}

// Wait waits up to timeout for the process to exit by itself.
func (p *Proc) Wait(timeout time.Duration) error {
	select {
	case <-p.done:
		return nil
	case <-time.After(timeout):
		return errors.New(p.Name + ": still running after " + timeout.String())
	}
}
