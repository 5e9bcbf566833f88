package haproxy_test

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/livegate/livegate/edgeproxy/internal/haproxy"
	"github.com/livegate/livegate/edgeproxy/internal/haproxy/drivertest"
	"github.com/livegate/livegate/edgeproxy/internal/haproxy/haproxytest"
	"github.com/livegate/livegate/pkg/freeport"
	"github.com/livegate/livegate/pkg/logbuf"
	"github.com/rs/zerolog"
)

// TestRuntimeDriverContract runs the drivers' contract on the runtime driver. The edge's map-file
// writer, not the driver, keeps the routes for HAProxy's next start.
func TestRuntimeDriverContract(t *testing.T) {
	drivertest.Run(t, drivertest.Harness{Bulk: 9500, Start: func(t *testing.T, missLimit int) drivertest.Edge {
		f := haproxytest.NewFiles(t, haproxytest.Dir(t))
		cfg := f.ConfigFor(freeport.TCP(t))
		cfg.MissLimit = missLimit
		h := haproxytest.Start(t, cfg, f)
		return drivertest.Edge{HAProxy: h, Driver: h.Driver, Persist: func(entries map[string]string) error {
			return haproxy.WriteMapFile(h.MapFile, entries)
		}}
	}})
}

func TestCommandsRefuseInjection(t *testing.T) {
	for _, w := range []string{"", "a b", "a;show info", "a\nshow info", "a#b", "a<<", `a\b`, "a'b"} {
		if _, err := haproxy.NewCommand("set", "map", "/m", w, "1.2.3.4:5"); err == nil {
			t.Errorf("NewCommand accepted %q", w)
		}
	}
	c, err := haproxy.NewCommand("add", "map", "/m")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.WithPayload([][]string{{"ok", "1.2.3.4:5"}, {"bad\nkey", "x"}}); err == nil {
		t.Error("WithPayload accepted a newline")
	}
}

func TestRenderedConfigIsValid(t *testing.T) {
	bin := haproxytest.Binary(t)
	f := haproxytest.NewFiles(t, haproxytest.Dir(t))
	if err := haproxy.WriteMapFile(f.MapFile, map[string]string{"a": "10.0.0.1:30000"}); err != nil {
		t.Fatal(err)
	}
	for _, render := range []func(haproxy.Config) (string, error){haproxy.Render, haproxy.RenderSections} {
		text, err := render(f.ConfigFor(48322))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(text, "global") {
			text = "global\n    stats socket " + f.Socket + " mode 600 level admin\n" + text
		}
		if err := os.WriteFile(f.Config, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(bin, "-c", "-f", f.Config).CombinedOutput()
		if err != nil {
			t.Fatalf("haproxy -c: %v\n%s\n%s", err, out, text)
		}
	}
	bad := f.ConfigFor(48322)
	bad.MapFile = "/tmp/x y"
	if _, err := haproxy.Render(bad); err == nil {
		t.Fatal("Render accepted a map path with a space")
	}
}

// TestSupervisorStoppedWhileStartingLeavesHAProxy stops the supervisor while the HAProxy it has
// just started is not yet answering (its client reaches no socket, so it never does): without
// StopOnExit HAProxy keeps running for the next edge process, as a ready one does.
func TestSupervisorStoppedWhileStartingLeavesHAProxy(t *testing.T) {
	bin := haproxytest.Binary(t)
	f := configured(t)
	sup := haproxy.NewSupervisor(bin, f.Config, f.PidFile, haproxy.NewClient(f.Socket+".absent", time.Second),
		zerolog.New(zerolog.NewTestWriter(t)), haproxy.StopOnExit(false))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sup.Run(ctx) }()
	deadline := time.Now().Add(20 * time.Second)
	for sup.Pid() == 0 {
		if time.Now().After(deadline) {
			cancel()
			t.Fatal("haproxy not started after 20s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	pid := sup.Pid()
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if err := syscall.Kill(pid, 0); err != nil || sup.Pid() != pid {
		t.Fatalf("haproxy %d stopped with its supervisor (pid file names %d): %v", pid, sup.Pid(), err)
	}
}

// TestSupervisorAdoptsHAProxyWithoutPidFile: an edge killed between starting HAProxy and writing
// the pid file leaves a master holding the ports; the next supervisor adopts it rather than
// start a second one beside it (HAProxy binds with SO_REUSEPORT, so both would serve).
func TestSupervisorAdoptsHAProxyWithoutPidFile(t *testing.T) {
	bin := haproxytest.Binary(t)
	f := configured(t)
	// An operator's tail of the configuration names the file too: it is no HAProxy to adopt
	// (started first, so a scan in pid order meets it first).
	decoy := exec.Command("tail", "-f", f.Config)
	if err := decoy.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = decoy.Process.Kill(); _ = decoy.Wait() })
	orphan := exec.Command(bin, "-W", "-db", "-f", f.Config)
	orphan.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := orphan.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(-orphan.Process.Pid, syscall.SIGKILL); _ = orphan.Wait() })
	client := haproxy.NewClient(f.Socket, time.Second)
	ping, _ := haproxy.NewCommand("show", "info")
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := client.Exec(context.Background(), ping); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("hand-started haproxy not answering after 20s")
		}
	}
	ready := make(chan struct{}, 1)
	sup := haproxy.NewSupervisor(bin, f.Config, f.PidFile, client,
		zerolog.New(zerolog.NewTestWriter(t)), haproxy.StopOnExit(false), haproxy.OnReady(func() { ready <- struct{}{} }))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sup.Run(ctx) }()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("Run: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("haproxy not ready after 20s")
	}
	if got := sup.Pid(); got != orphan.Process.Pid {
		t.Errorf("supervisor holds haproxy %d, want the running master %d", got, orphan.Process.Pid)
	}
	if err := decoy.Process.Signal(syscall.Signal(0)); err != nil {
		t.Errorf("the tail of the configuration was signalled: %v", err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
}

// TestSupervisorOutputLogOneComponent checks that HAProxy's own lines carry the component key
// once, whatever the supervisor's logger already carries.
func TestSupervisorOutputLogOneComponent(t *testing.T) {
	bin := haproxytest.Binary(t)
	f := configured(t)
	var out logbuf.Buffer
	base := zerolog.New(&out)
	ready := make(chan struct{}, 1)
	sup := haproxy.NewSupervisor(bin, f.Config, f.PidFile, haproxy.NewClient(f.Socket, time.Second),
		base.With().Str("component", "supervisor").Logger(), haproxy.StopOnExit(true),
		haproxy.OutputLog(base.With().Str("component", "haproxy").Logger()),
		haproxy.OnReady(func() { ready <- struct{}{} }))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sup.Run(ctx) }()
	select {
	case <-ready:
	case <-time.After(20 * time.Second):
		t.Fatal("haproxy not ready after 20s")
	}
	cancel()
	<-done
	var lines int
	for _, line := range strings.Split(out.String(), "\n") {
		if !strings.Contains(line, `"component":"haproxy"`) {
			continue
		}
		lines++
		if strings.Count(line, `"component"`) != 1 {
			t.Errorf("line carries component more than once: %s", line)
		}
	}
	if lines == 0 {
		t.Fatalf("no haproxy output logged:\n%s", out.String())
	}
}

// configured lays out the files of an HAProxy the test supervises itself: configuration and map.
func configured(t *testing.T) haproxytest.Files {
	t.Helper()
	f := haproxytest.NewFiles(t, haproxytest.Dir(t))
	text, err := haproxy.Render(f.ConfigFor(freeport.TCP(t)))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f.Config, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := haproxy.WriteMapFile(f.MapFile, nil); err != nil {
		t.Fatal(err)
	}
	return f
}
