// Package stack starts livegate's processes inside a netns.Topology: the edge (with its embedded
// NATS and supervised HAProxy) in the edge namespace, an agent and the demo app in each node
// namespace, and the probe in the client namespace. The end-to-end test and `make demo` share it.
package stack

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Binaries are the built programs.
type Binaries struct {
	Agent, Edge, DemoApp string
}

// mains are the main packages, relative to the repository root; `go build -o dir/` names each
// binary after its directory.
var mains = []string{"./agent/cmd/livegate-agent", "./edgeproxy/cmd/livegate-edgeproxy", "./e2e/demoapp"}

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

// Build compiles the binaries into dir with one `go build`, which builds them in parallel and
// reuses the build cache.
func Build(ctx context.Context, dir string) (Binaries, error) {
	root, err := RepoRoot()
	if err != nil {
		return Binaries{}, err
	}
	cmd := exec.CommandContext(ctx, "go", append([]string{"build", "-o", dir + string(filepath.Separator)}, mains...)...)
	cmd.Dir = root
	if msg, err := cmd.CombinedOutput(); err != nil {
		return Binaries{}, fmt.Errorf("go build %s: %w\n%s", strings.Join(mains, " "), err, strings.TrimSpace(string(msg)))
	}
	return Binaries{
		Agent:   filepath.Join(dir, "livegate-agent"),
		Edge:    filepath.Join(dir, "livegate-edgeproxy"),
		DemoApp: filepath.Join(dir, "demoapp"),
	}, nil
}
