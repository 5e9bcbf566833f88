package stack

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/livegate/livegate/e2e/internal/netns"
	"github.com/livegate/livegate/e2e/internal/proc"
)

// Group is the processes of one run: it starts each inside a namespace, keeps every one's output
// for a failure report and stops them all. The zero value is ready to use.
type Group struct {
	// Output, when set, returns where a process's output goes besides its buffer.
	Output func(name string) io.Writer
	// Wrap, when set, turns the command line of each process Start starts into the one to run,
	// for example from an image's root file system.
	Wrap func(name, bin string, args []string) (string, []string)

	mu sync.Mutex
	// all is every process started, restarts included, for Logs.
	all []*proc.Proc
	// slots hold the current process of each name in the order the names first started: Stop
	// goes backwards through them, so a restarted NATS still stops after the agents that need it.
	slots []*slot
}

type slot struct {
	name string
	p    *proc.Proc
}

// Start runs bin inside ns under name. A process started again under a name keeps that name's
// place in the stopping order.
func (g *Group) Start(ctx context.Context, name string, ns *netns.Namespace, bin string, args ...string) (*proc.Proc, error) {
	if g.Wrap != nil {
		bin, args = g.Wrap(name, bin, args)
	}
	return g.StartCmd(name, ns.Command(context.WithoutCancel(ctx), bin, args...))
}

// StartCmd starts a command made by the caller (one with its own environment, say). It refuses
// a name whose process still runs: the Group would lose track of it, and Stop would leave it
// running.
func (g *Group) StartCmd(name string, cmd *exec.Cmd) (*proc.Proc, error) {
	// The lock is held across the start, so two starts of one name cannot both pass the check.
	g.mu.Lock()
	defer g.mu.Unlock()
	var own *slot
	for _, s := range g.slots {
		if s.name == name {
			own = s
		}
	}
	if own != nil && !own.p.Exited() {
		return nil, fmt.Errorf("start %s: already running (pid %d)", name, own.p.Pid())
	}
	var tee io.Writer
	if g.Output != nil {
		tee = g.Output(name)
	}
	p, err := proc.Start(name, cmd, tee)
	if err != nil {
		return nil, err
	}
	g.all = append(g.all, p)
	if own != nil {
		own.p = p
	} else {
		g.slots = append(g.slots, &slot{name: name, p: p})
	}
	return p, nil
}

// Procs is every process started so far, in start order.
func (g *Group) Procs() []*proc.Proc {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]*proc.Proc(nil), g.all...)
}

// Logs is the end (tail bytes) of every process's output so far, for a failure report.
func (g *Group) Logs(tail int) string {
	var b strings.Builder
	for _, p := range g.Procs() {
		out := p.Output()
		if len(out) > tail {
			out = "[...]" + out[len(out)-tail:]
		}
		fmt.Fprintf(&b, "----- %s (pid %d, exited %t, code %d) -----\n%s\n", p.Name, p.Pid(), p.Exited(), p.ExitCode(), out)
	}
	return b.String()
}

// Stop stops every running process, the last started name first, each with SIGTERM then
// SIGKILL after grace. It returns how the processes failed to stop, a death by that SIGTERM
// (a program without a handler) aside.
func (g *Group) Stop(grace time.Duration) error {
	g.mu.Lock()
	slots := append([]*slot(nil), g.slots...)
	g.mu.Unlock()
	var errs []error
	for i := len(slots) - 1; i >= 0; i-- {
		if err := slots[i].p.Stop(grace); err != nil && !isSignalExit(err) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// isSignalExit tells a process that died of the SIGTERM Stop sent (no handler) from a failure.
func isSignalExit(err error) bool {
	var ee interface{ ExitCode() int }
	return errors.As(err, &ee) && ee.ExitCode() == -1
}

// WaitTCP waits until addr accepts connections from inside ns, failing early when p exits.
func WaitTCP(ctx context.Context, p *proc.Proc, ns *netns.Namespace, addr string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		c, err := ns.Dial(ctx, "tcp", addr)
		if err == nil {
			_ = c.Close()
			return nil
		}
		select {
		case <-p.Done():
			return fmt.Errorf("%s exited (%v) before %s accepted connections", p.Name, p.Err(), addr)
		case <-ctx.Done():
			return fmt.Errorf("%s: %s not accepting connections: %w", p.Name, addr, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}
