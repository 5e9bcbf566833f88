// Package stack is the one end-to-end harness: the end-to-end tests, the fault suite, the
// cluster test, the benchmarks and `make demo` start livegate from it. Start runs a deployment in a
// netns.Topology: the edge (with its embedded NATS and supervised HAProxy) in the edge namespace,
// an agent and the demo app (or the WebRTC sample app) in each node namespace, and the probe in
// the client namespace. A Lab hangs many namespaces off bridges in a hub for deployments with
// their own nats-server (or a cluster of three) and several edges. Both start their processes in
// a Group, read HAProxy through its runtime API (HAProxy) and the kernel's DNAT map and
// conntrack entries (DNATMap, Conntrack), and leave nothing behind on any exit path.
package stack

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// Binaries are the built programs.
type Binaries struct {
	Agent, Edge, DemoApp string
	// StreamApp is the WebRTC sample app (samples/streamapp).
	StreamApp string
}

// Main packages, relative to the repository root; `go build -o dir/` names each binary after its
// directory.
const (
	agentMain     = "./agent/cmd/livegate-agent"
	edgeMain      = "./edgeproxy/cmd/livegate-edgeproxy"
	demoAppMain   = "./e2e/demoapp"
	streamAppMain = "./samples/streamapp"
)

// RepoRoot finds the directory holding go.work, from the working directory up.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.work")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("go.work not found above the working directory: run from the livegate checkout")
		}
		dir = parent
	}
}

// Build compiles the four binaries into dir with one `go build`, which builds them in parallel
// and reuses the build cache.
func Build(ctx context.Context, dir string) (Binaries, error) {
	if err := goBuild(ctx, dir, agentMain, edgeMain, demoAppMain, streamAppMain); err != nil {
		return Binaries{}, err
	}
	return Binaries{
		Agent:     filepath.Join(dir, "livegate-agent"),
		Edge:      filepath.Join(dir, "livegate-edgeproxy"),
		DemoApp:   filepath.Join(dir, "demoapp"),
		StreamApp: filepath.Join(dir, "streamapp"),
	}, nil
}

// Prebuilt takes livegate-agent, livegate-edgeproxy and streamapp from binDir (what `make build`
// made); it has no demo app, so its nodes must run the stream app.
func Prebuilt(binDir string) (Binaries, error) {
	b := Binaries{Agent: filepath.Join(binDir, "livegate-agent"), Edge: filepath.Join(binDir, "livegate-edgeproxy"),
		StreamApp: filepath.Join(binDir, "streamapp")}
	for _, p := range []string{b.Agent, b.Edge, b.StreamApp} {
		if _, err := os.Stat(p); err != nil {
			return Binaries{}, fmt.Errorf("prebuilt binary: %w (run `make build`)", err)
		}
	}
	return b, nil
}

func goBuild(ctx context.Context, dir string, mains ...string) error {
	root, err := RepoRoot()
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, "go", append([]string{"build", "-o", dir + string(filepath.Separator)}, mains...)...)
	cmd.Dir = root
	if msg, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %w\n%s", strings.Join(mains, " "), err, strings.TrimSpace(string(msg)))
	}
	return nil
}

// Built builds the four binaries at most once per test process, into a temporary directory
// that Remove deletes (from TestMain, after every test has run). The zero value is ready to use.
type Built struct {
	once sync.Once
	dir  string
	bins Binaries
	err  error
}

// buildTimeout bounds the one build of a test process.
const buildTimeout = 5 * time.Minute

// Binaries builds on the first call and returns what that call built or why it failed.
func (b *Built) Binaries() (Binaries, error) {
	b.once.Do(func() {
		if b.dir, b.err = os.MkdirTemp("", "livegate-e2e-bin-"); b.err != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
		defer cancel()
		b.bins, b.err = Build(ctx, b.dir)
	})
	return b.bins, b.err
}

// Remove deletes what Binaries built.
func (b *Built) Remove() {
	if b.dir != "" {
		_ = os.RemoveAll(b.dir)
	}
}
