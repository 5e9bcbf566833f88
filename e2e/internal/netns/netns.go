// Package netns creates network namespaces and veth links with iproute2, runs commands inside
// them, and dials from inside them without leaving the calling process: the socket is created on a
// thread that has joined the namespace, so the test process reaches NATS, HAProxy and the agents
// without an address of its own on the host.
package netns

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// runDir is where `ip netns add` pins namespaces.
const runDir = "/run/netns"

// Namespace is one named network namespace.
type Namespace struct {
	Name string
}

// Add creates the namespace and brings its loopback up.
func Add(ctx context.Context, name string) (*Namespace, error) {
	if err := run(ctx, "ip", "netns", "add", name); err != nil {
		return nil, fmt.Errorf("add namespace %s: %w", name, err)
	}
	n := &Namespace{Name: name}
	if err := n.Run(ctx, "ip", "link", "set", "lo", "up"); err != nil {
		_ = n.Delete(ctx)
		return nil, fmt.Errorf("namespace %s: loopback up: %w", name, err)
	}
	return n, nil
}

// Command is cmd run inside the namespace (`ip netns exec`, which execs the program: the pid is
// the program's own, so signals reach it directly).
func (n *Namespace) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.Name, name}, args...)...)
}

// Run runs a command inside the namespace; the error carries its output.
func (n *Namespace) Run(ctx context.Context, name string, args ...string) error {
	return run(ctx, "ip", append([]string{"netns", "exec", n.Name, name}, args...)...)
}

// Output runs a command inside the namespace and returns its standard output.
func (n *Namespace) Output(ctx context.Context, name string, args ...string) (string, error) {
	cmd := n.Command(ctx, name, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("%s %s in %s: %w: %s", name, strings.Join(args, " "), n.Name, err, strings.TrimSpace(stderr.String()))
	}
	return string(out), nil
}

// Sysctl sets a sysctl of the namespace (net.* keys are per namespace).
func (n *Namespace) Sysctl(key, value string) error {
	path := filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/"))
	return n.Do(func() error {
		if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
			return fmt.Errorf("sysctl %s=%s in %s: %w", key, value, n.Name, err)
		}
		return nil
	})
}

// Pids lists the processes inside the namespace.
func (n *Namespace) Pids(ctx context.Context) ([]int, error) {
	out, err := exec.CommandContext(ctx, "ip", "netns", "pids", n.Name).Output()
	if err != nil {
		return nil, fmt.Errorf("pids of namespace %s: %w", n.Name, err)
	}
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// Delete kills whatever still runs inside the namespace, then removes it; its veths, iptables
// rules and conntrack entries go with it.
func (n *Namespace) Delete(ctx context.Context) error {
	if pids, err := n.Pids(ctx); err == nil {
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	if _, err := os.Stat(filepath.Join(runDir, n.Name)); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err := run(ctx, "ip", "netns", "del", n.Name); err != nil {
		return fmt.Errorf("delete namespace %s: %w", n.Name, err)
	}
	return nil
}

// Do runs f on an OS thread that has joined the namespace. Sockets f creates stay in the
// namespace after the thread returns to its own. f runs on a goroutine of its own, so a thread
// that cannot return is never used again: its goroutine ends still locked to it, and the runtime
// discards it.
func (n *Namespace) Do(f func() error) error {
	errc := make(chan error, 1)
	go func() { errc <- n.do(f) }()
	return <-errc
}

func (n *Namespace) do(f func() error) error {
	target, err := os.Open(filepath.Join(runDir, n.Name))
	if err != nil {
		return fmt.Errorf("open namespace %s: %w", n.Name, err)
	}
	defer target.Close()
	runtime.LockOSThread()
	home, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open own namespace: %w", err)
	}
	defer home.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("join namespace %s: %w", n.Name, err)
	}
	ferr := f()
	if err := unix.Setns(int(home.Fd()), unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("leave namespace %s: %w", n.Name, err)
	}
	runtime.UnlockOSThread()
	return ferr
}

// Dial connects from inside the namespace. Addresses must be literal IPs: name resolution would
// run on other threads, outside the namespace.
func (n *Namespace) Dial(ctx context.Context, network, address string) (net.Conn, error) {
	var c net.Conn
	err := n.Do(func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, network, address)
		return err
	})
	return c, err
}

// Dialer adapts Dial to the Dial(network, address) shape (nats.SetCustomDialer).
func (n *Namespace) Dialer(timeout time.Duration) *Dialer {
	return &Dialer{ns: n, timeout: timeout}
}

// Dialer dials from inside a namespace with a timeout.
type Dialer struct {
	ns      *Namespace
	timeout time.Duration
}

// Dial dials with the dialer's timeout.
func (d *Dialer) Dial(network, address string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d.timeout)
	defer cancel()
	return d.ns.Dial(ctx, network, address)
}

// HTTPClient is an HTTP client whose connections start inside the namespace.
func (n *Namespace) HTTPClient(timeout time.Duration) *http.Client {
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			DialContext:       n.Dial,
			DisableKeepAlives: true,
		},
	}
}

// Veth links namespace a (interface aIf, address aAddr) to namespace b (bIf, bAddr) with a veth
// pair. Interface names are at most 15 bytes.
func Veth(ctx context.Context, a *Namespace, aIf string, aAddr netip.Prefix, b *Namespace, bIf string, bAddr netip.Prefix) error {
	if err := run(ctx, "ip", "link", "add", aIf, "netns", a.Name, "type", "veth", "peer", "name", bIf, "netns", b.Name); err != nil {
		return fmt.Errorf("veth %s/%s: %w", aIf, bIf, err)
	}
	for _, side := range []struct {
		ns   *Namespace
		dev  string
		addr netip.Prefix
	}{{a, aIf, aAddr}, {b, bIf, bAddr}} {
		if err := side.ns.Run(ctx, "ip", "addr", "add", side.addr.String(), "dev", side.dev); err != nil {
			return fmt.Errorf("veth %s: %w", side.dev, err)
		}
		if err := side.ns.Run(ctx, "ip", "link", "set", side.dev, "up"); err != nil {
			return fmt.Errorf("veth %s: %w", side.dev, err)
		}
	}
	return nil
}

// List names the namespaces whose name starts with prefix.
func List(ctx context.Context, prefix string) ([]string, error) {
	entries, err := os.ReadDir(runDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list namespaces: %w", err)
	}
	var names []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			names = append(names, e.Name())
		}
	}
	return names, nil
}

func run(ctx context.Context, name string, args ...string) error {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Bridged links ns to a bridge in hub with a veth: inIf inside ns (with addr, up), outIf on the
// hub's side, enslaved to bridge. Interface names are at most 15 bytes.
func Bridged(ctx context.Context, hub *Namespace, bridge string, ns *Namespace, inIf, outIf string, addr netip.Prefix) error {
	if err := run(ctx, "ip", "link", "add", inIf, "netns", ns.Name, "type", "veth", "peer", "name", outIf, "netns", hub.Name); err != nil {
		return fmt.Errorf("veth %s/%s: %w", inIf, outIf, err)
	}
	if err := ns.Run(ctx, "ip", "addr", "add", addr.String(), "dev", inIf); err != nil {
		return err
	}
	if err := ns.Run(ctx, "ip", "link", "set", inIf, "up"); err != nil {
		return err
	}
	if err := hub.Run(ctx, "ip", "link", "set", outIf, "master", bridge); err != nil {
		return err
	}
	return hub.Run(ctx, "ip", "link", "set", outIf, "up")
}
