// Package profiling builds livegate's binaries with net/http/pprof switched on, without touching
// their source: `go build -overlay` adds one file to each main package that serves the pprof
// handlers when LGB_PPROF_ADDR is set. The bench then fetches CPU and heap profiles and execution
// traces at the moments that matter, so a missed target comes with its evidence.
package profiling

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// EnvVar names the listen address of the pprof handlers in a profiling build.
const EnvVar = "LGB_PPROF_ADDR"

// hook is the file the overlay adds to each main package.
const hook = `package main

import (
	"net/http"
	_ "net/http/pprof"
	"os"
)

// Added by livegate-bench --profile through go build -overlay; not part of the source tree.
func init() {
	if addr := os.Getenv("` + EnvVar + `"); addr != "" {
		go func() { _ = http.ListenAndServe(addr, nil) }()
	}
}
`

// mains are the programs to build, relative to the repository root.
var mains = []string{"agent/cmd/livegate-agent", "edgeproxy/cmd/livegate-edgeproxy"}

// Build writes the overlay into dir and builds the profiling binaries there; it returns dir's
// bin subdirectory, which holds livegate-agent and livegate-edgeproxy.
func Build(ctx context.Context, root, dir string) (string, error) {
	if err := os.MkdirAll(filepath.Join(dir, "bin"), 0o755); err != nil {
		return "", err
	}
	hookPath := filepath.Join(dir, "lgb_pprof_hook.go")
	if err := os.WriteFile(hookPath, []byte(hook), 0o644); err != nil {
		return "", err
	}
	replace := map[string]string{}
	for _, m := range mains {
		replace[filepath.Join(root, m, "zz_lgb_pprof_hook.go")] = hookPath
	}
	overlay, err := json.Marshal(map[string]any{"Replace": replace})
	if err != nil {
		return "", err
	}
	overlayPath := filepath.Join(dir, "overlay.json")
	if err := os.WriteFile(overlayPath, overlay, 0o644); err != nil {
		return "", err
	}
	args := []string{"build", "-overlay", overlayPath, "-o", filepath.Join(dir, "bin") + string(filepath.Separator)}
	for _, m := range mains {
		args = append(args, "./"+m)
	}
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return filepath.Join(dir, "bin"), nil
}

// Fetch saves a pprof endpoint (e.g. "profile?seconds=10", "heap?gc=1", "trace?seconds=3")
// from base (http://host:port) to out.
func Fetch(ctx context.Context, client *http.Client, base, endpoint, out string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/debug/pprof/"+endpoint, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("fetch %s: %w", endpoint, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("fetch %s: HTTP %d", endpoint, resp.StatusCode)
	}
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		_ = f.Close()
		return fmt.Errorf("fetch %s: %w", endpoint, err)
	}
	return f.Close()
}
