package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/livegate/livegate/edgeproxy/internal/placement"
)

// fakeEdge answers /v1/drain as the admin endpoint does, and counts the requests.
func fakeEdge(t *testing.T) (addr string, calls *int) {
	t.Helper()
	var d placement.Drain
	n := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n++
		switch r.Method {
		case http.MethodPost:
			d = placement.Drain{Draining: true, Since: time.Now()}
			if dl, _ := time.ParseDuration(r.URL.Query().Get("deadline")); dl > 0 {
				d.Deadline = d.Since.Add(dl)
			}
		case http.MethodDelete:
			d = placement.Drain{}
		}
		_ = json.NewEncoder(w).Encode(d)
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://"), &n
}

// TestDrainCommand: drain's --admin-addr comes from the flag, the environment or the edge's
// --config file, as run's does; its switches come from the command line only, and a refusal
// names where the value came from.
func TestDrainCommand(t *testing.T) {
	addr, calls := fakeEdge(t)
	dir := t.TempDir()
	n := 0
	file := func(text string) string {
		n++
		return writeFile(t, dir, fmt.Sprintf("edge-%d.toml", n), text)
	}
	// What run reads from the same file and environment is left alone.
	runFile := "admin-addr = \"" + addr + "\"\npool = \"p1\"\nresync = \"45s\"\nnats-url = \"nats://n:4222\"\ndataplaneapi-user = \"u\"\n"
	tests := []struct {
		name   string
		args   []string
		env    map[string]string
		code   int
		out    string
		stderr string
	}{
		{name: "flag", args: []string{"--admin-addr", addr, "--deadline", "10m"}, out: "pool sessions still served at"},
		{name: "environment", env: map[string]string{"LIVEGATE_EDGEPROXY_ADMIN_ADDR": addr}, args: []string{"--show"}, out: "draining since"},
		{name: "config file", args: []string{"--config", file(runFile), "--deadline", "0"}, out: "sessions served until they end"},
		{name: "config file from the environment", env: map[string]string{"LIVEGATE_EDGEPROXY_CONFIG": file(runFile), "LIVEGATE_EDGEPROXY_POOL": "p2"}, args: []string{"--cancel"}, out: "not draining"},
		{name: "flag over environment", env: map[string]string{"LIVEGATE_EDGEPROXY_ADMIN_ADDR": "127.0.0.1:1"}, args: []string{"--admin-addr", addr, "--show"}, out: "not draining"},
		{name: "both switches", args: []string{"--admin-addr", addr, "--cancel", "--show"}, code: 2, stderr: "want at most one of --cancel and --show"},
		{name: "deadline with cancel", args: []string{"--admin-addr", addr, "--cancel", "--deadline", "5m"}, code: 2, stderr: "--deadline (0 or more) only when draining"},
		{name: "deadline with show", args: []string{"--admin-addr", addr, "--show", "--deadline", "5m"}, code: 2, stderr: "only when draining"},
		{name: "argument", args: []string{"--admin-addr", addr, "extra"}, code: 2, stderr: "livegate-edgeproxy drain: command line: unexpected argument \"extra\"\n(`livegate-edgeproxy drain -h` lists the flags)"},
		{name: "bad address flag", args: []string{"--admin-addr", "http://127.0.0.1:9470"}, code: 2, stderr: `flag --admin-addr: value "http://127.0.0.1:9470": want host:port`},
		{name: "bad address in the environment", env: map[string]string{"LIVEGATE_EDGEPROXY_ADMIN_ADDR": "9470"}, code: 2, stderr: `environment LIVEGATE_EDGEPROXY_ADMIN_ADDR: value "9470": want host:port`},
		{name: "bad address in the file", args: []string{"--config", file("admin-addr = \"nowhere\"\n")}, code: 2, stderr: `config ` + filepath.Join(dir, "edge-3.toml") + `: admin-addr: value "nowhere": want host:port`},
		{name: "unknown key", args: []string{"--config", file("admin-adr = \"x\"\n")}, code: 2, stderr: "admin-adr: unknown setting"},
		{name: "unknown variable", env: map[string]string{"LIVEGATE_EDGEPROXY_ADMIN_ADR": "x"}, code: 2, stderr: "environment LIVEGATE_EDGEPROXY_ADMIN_ADR: unknown setting"},
		{name: "switch in the environment", env: map[string]string{"LIVEGATE_EDGEPROXY_DEADLINE": "5m"}, code: 2, stderr: "environment LIVEGATE_EDGEPROXY_DEADLINE: --deadline is set on the command line only"},
		{name: "run's setting on the command line", args: []string{"--pool", "p1"}, code: 2, stderr: "command line: flag provided but not defined: -pool"},
		{name: "no edge", args: []string{"--admin-addr", "127.0.0.1:1", "--show"}, code: 1, stderr: "(is the edge running, with the admin address of flag --admin-addr?)"},
		{name: "no edge at the environment's address", env: map[string]string{"LIVEGATE_EDGEPROXY_ADMIN_ADDR": "127.0.0.1:1"}, args: []string{"--show"}, code: 1,
			stderr: "(is the edge running, with the admin address of environment LIVEGATE_EDGEPROXY_ADMIN_ADDR?)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			before := *calls
			var out, errOut bytes.Buffer
			code := DrainCommand(testHooks())(context.Background(), tt.args, &out, &errOut)
			if code != tt.code || !strings.Contains(out.String(), tt.out) || !strings.Contains(errOut.String(), tt.stderr) {
				t.Fatalf("exit %d, stdout %q, stderr %q; want %d, %q, %q", code, out.String(), errOut.String(), tt.code, tt.out, tt.stderr)
			}
			if tt.code == 2 && *calls != before {
				t.Errorf("a refused command line called the edge")
			}
		})
	}
}

// testHooks has a driver with a flag of its own, which the edge's file may set.
func testHooks() Hooks {
	var user string
	return Hooks{Drivers: map[string]DriverFactory{"dataplaneapi": {Flags: func(fs *flag.FlagSet) {
		fs.StringVar(&user, "dataplaneapi-user", "", "user")
	}}}}
}

// TestCommandsReadOneSettingsFile: every command that reads the edge's settings accepts the file
// and environment run reads, and refuses what run refuses as unknown.
func TestCommandsReadOneSettingsFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "edge.toml")
	if err := os.WriteFile(path, []byte("pool = \"p1\"\nlog-level = \"loud\"\nnats-url = \"nats://127.0.0.1:1\"\nadmin-addr = \"x\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, tt := range map[string]struct {
		cmd  Command
		args []string
		want string
	}{
		// cleanup's log level comes from the file too.
		"cleanup": {CleanupCommand(testHooks()), []string{"--config", path}, "config " + path + ": log-level: log level \"loud\""},
		// status reads --nats-url from the file; the timeout is its own switch.
		"status": {StatusCommand(testHooks()), []string{"--config", path, "--timeout", "1s"}, "is NATS up?"},
		// haproxy-config's --full is a switch of the command line.
		"haproxy-config": {HAProxyConfigCommand(testHooks()), []string{"--config", writeFile(t, dir, "full.toml", "full = true\n")}, "full: --full is set on the command line only"},
	} {
		t.Run(name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			code := tt.cmd(context.Background(), tt.args, &out, &errOut)
			if code == 0 || !strings.Contains(errOut.String(), tt.want) {
				t.Fatalf("exit %d, stderr %q; want a failure saying %q", code, errOut.String(), tt.want)
			}
		})
	}
	t.Run("help", func(t *testing.T) {
		var errOut bytes.Buffer
		if code := StatusCommand(testHooks())(context.Background(), []string{"-h"}, io.Discard, &errOut); code != 0 ||
			!strings.Contains(errOut.String(), "[env LIVEGATE_EDGEPROXY_NATS_URL]") || strings.Contains(errOut.String(), "LIVEGATE_EDGEPROXY_WATCH") {
			t.Fatalf("status -h: exit %d, %s", code, errOut.String())
		}
	})
}

func writeFile(t *testing.T, dir, name, text string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
