// Package natstest starts real NATS servers for tests: the embedded one, or the nats-server binary
// that `make deps` installs, each with JetStream and a fresh store; and connects a test to one,
// with the livegate buckets in place.
package natstest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/livegate/livegate/pkg/freeport"
	"github.com/livegate/livegate/pkg/kvstore"
	"github.com/livegate/livegate/pkg/natsembed"
)

// Embedded starts an in-process server on a random loopback port and returns its URL.
func Embedded(t testing.TB) string {
	t.Helper()
	s, err := natsembed.Start(natsembed.Options{Port: -1, StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Shutdown)
	return s.ClientURL()
}

// Binary finds the nats-server binary: $NATS_SERVER, then PATH, then $HOME/go/bin (where `make
// deps` installs it).
func Binary() (string, error) {
	if p := os.Getenv("NATS_SERVER"); p != "" {
		return p, nil
	}
	if p, err := exec.LookPath("nats-server"); err == nil {
		return p, nil
	}
	home, _ := os.UserHomeDir()
	p := filepath.Join(home, "go", "bin", "nats-server")
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("nats-server not found on PATH, $NATS_SERVER or %s: run `make deps`", p)
	}
	return p, nil
}

// Server is a nats-server process that a test can stop and start again on the same port and store.
type Server struct {
	t     testing.TB
	bin   string
	port  int
	store string
	cmd   *exec.Cmd
}

// External starts the nats-server binary. Outside CI a missing binary skips the test; in CI
// (CI set) it fails it, so a broken install step cannot hide.
func External(t testing.TB) *Server {
	t.Helper()
	bin, err := Binary()
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	s := &Server{t: t, bin: bin, port: freeport.TCP(t), store: t.TempDir()}
	s.Start()
	t.Cleanup(s.Stop)
	return s
}

// URL is the server's client URL.
func (s *Server) URL() string { return fmt.Sprintf("nats://127.0.0.1:%d", s.port) }

// Start (re)starts the process and waits until it accepts connections.
func (s *Server) Start() {
	s.t.Helper()
	s.cmd = exec.Command(s.bin, "-js", "-a", "127.0.0.1", "-p", fmt.Sprint(s.port), "-sd", s.store)
	if err := s.cmd.Start(); err != nil {
		s.t.Fatalf("start nats-server: %v", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", s.port), 200*time.Millisecond)
		if err == nil {
			_ = c.Close()
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	s.t.Fatalf("nats-server on port %d not ready after 10s", s.port)
}

// Stop kills the process (SIGKILL: what a crash looks like) and waits for it.
func (s *Server) Stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
	s.cmd = nil
}

// Connect connects to the server at url until the end of the test.
func Connect(t testing.TB, url string, opts ...nats.Option) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return nc, js
}

// Buckets creates (or opens) the livegate KV buckets.
func Buckets(t testing.TB, js jetstream.JetStream) *kvstore.Buckets {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b, err := kvstore.Ensure(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
