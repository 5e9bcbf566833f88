package validate

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/livegate/livegate/pkg/freeport"
	"github.com/livegate/livegate/pkg/selfsigned"
)

// The examples must work with the real binaries: they are built from the workspace once.

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

func binary(t *testing.T, name string) string {
	t.Helper()
	buildOnce.Do(func() {
		root, err := filepath.Abs(repoRoot)
		if err != nil {
			buildErr = err
			return
		}
		binDir, buildErr = os.MkdirTemp("", "livegate-deploy-bin-")
		if buildErr != nil {
			return
		}
		cmd := exec.Command("go", "build", "-o", binDir+"/", "./agent/cmd/livegate-agent", "./edgeproxy/cmd/livegate-edgeproxy")
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "GOWORK="+filepath.Join(root, "go.work"))
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %w\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatalf("build the binaries: %v", buildErr)
	}
	return filepath.Join(binDir, name)
}

// selfSigned writes a certificate and its key as cert.pem and cert.pem.key (the key beside the
// certificate, as HAProxy finds it).
func selfSigned(t *testing.T) (cert, key string) {
	t.Helper()
	c, err := selfsigned.New([]string{"edge.test"}, time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cert, key = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "cert.pem.key")
	if err := os.WriteFile(cert, c.CertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(key, c.KeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return cert, key
}

// runAgent starts the agent on free loopback ports without NATS, checks its startup endpoint and
// that SIGTERM stops it cleanly.
func runAgent(t *testing.T, args []string, env ...string) {
	t.Helper()
	port := freeport.TCP(t)
	agent := start(t, append(env,
		"LIVEGATE_AGENT_NATS_URL=", "LIVEGATE_AGENT_HOST=127.0.0.1", "LIVEGATE_AGENT_PORT="+strconv.Itoa(port),
		"LIVEGATE_AGENT_APP_ADDR=127.0.0.1:"+strconv.Itoa(freeport.TCP(t)), "LIVEGATE_AGENT_APP_PROBE=",
		"LIVEGATE_AGENT_INSTANCE_ID=deploy-check"), binary(t, "livegate-agent"), args...)
	url := fmt.Sprintf("http://127.0.0.1:%d/v1/streaming/startup", port)
	waitUntil(t, 20*time.Second, "agent answers "+url, []*proc{agent}, func() bool {
		resp, err := http.Get(url)
		if err != nil {
			return false
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("startup answered %d", resp.StatusCode)
		}
		return true
	})
	agent.terminate(t)
}

func TestAgentExampleConfigStarts(t *testing.T) {
	runAgent(t, []string{"--config", filepath.Join(repoRoot, "deploy", "etc", "livegate", "agent.toml")})
}

func TestAgentSidecarConfigStarts(t *testing.T) {
	cm := decode(t, "agent-sidecar/configmap.yaml")
	toml, _ := at(cm, "data", "agent.toml").(string)
	file := filepath.Join(t.TempDir(), "agent.toml")
	if err := os.WriteFile(file, []byte(toml), 0o600); err != nil {
		t.Fatal(err)
	}
	spec := podSpec(decode(t, "agent-sidecar/deployment.yaml"))
	agent := container(t, spec, "livegate-agent")
	args := texts(agent["args"])
	for i, a := range args {
		if a == "/etc/livegate/agent.toml" {
			args[i] = file
		}
	}
	// The pod's own variables, with values a test host has; the checked ones are overridden.
	env := []string{"LIVEGATE_AGENT_BACKEND_IP=198.18.0.10"}
	runAgent(t, args, env...)
}

func checkEdgeConfig(t *testing.T, args []string) {
	t.Helper()
	cmd := exec.Command(binary(t, "livegate-edgeproxy"), append([]string{"check-config"}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("livegate-edgeproxy check-config %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func TestEdgeSystemdConfigCheck(t *testing.T) {
	cert, key := selfSigned(t)
	// The example's certificate paths do not exist here: flags win over the file.
	checkEdgeConfig(t, []string{"--config", filepath.Join(repoRoot, "deploy", "etc", "livegate", "edgeproxy.toml"),
		"--tls-cert=" + cert, "--tls-key=" + key, "--state-dir=" + t.TempDir()})
}

var k8sVar = regexp.MustCompile(`\$\(([A-Z_]+)\)`)

// edgeArgs are the DaemonSet's edge arguments after the run subcommand, with the downward API
// variables given test values.
func edgeArgs(t *testing.T) []string {
	t.Helper()
	spec := podSpec(decode(t, "edgeproxy/daemonset.yaml"))
	args := texts(container(t, spec, "edgeproxy")["args"])
	if len(args) == 0 || args[0] != "run" {
		t.Fatalf("edge args %q: want the run subcommand first", args)
	}
	vals := map[string]string{"HOST_IP": "198.18.0.1", "NODE_NAME": "node-1"}
	out := make([]string, 0, len(args)-1)
	for _, a := range args[1:] {
		out = append(out, k8sVar.ReplaceAllStringFunc(a, func(m string) string {
			v, ok := vals[k8sVar.FindStringSubmatch(m)[1]]
			if !ok {
				t.Fatalf("edge arg %q: unknown variable %s", a, m)
			}
			return v
		}))
	}
	return out
}

func TestEdgeDaemonSetFlagsCheck(t *testing.T) {
	checkEdgeConfig(t, edgeArgs(t))
}

// meaningful drops comments and blank lines and trims indentation.
func meaningful(s string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		l = strings.TrimSpace(l)
		if l != "" && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return out
}

// TestEdgeHAProxyConfigMap checks that the pod's HAProxy configuration holds exactly the sections
// the edge renders for the DaemonSet's flags, and that HAProxy accepts it.
func TestEdgeHAProxyConfigMap(t *testing.T) {
	cm := decode(t, "edgeproxy/configmap.yaml")
	cfg, _ := at(cm, "data", "haproxy.cfg").(string)
	out, err := exec.Command(binary(t, "livegate-edgeproxy"), append([]string{"haproxy-config"}, edgeArgs(t)...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("haproxy-config: %v\n%s", err, out)
	}
	want, have := meaningful(string(out)), meaningful(cfg)
	start := slices.Index(have, want[0])
	if start < 0 || len(have)-start < len(want) || !slices.Equal(have[start:start+len(want)], want) {
		t.Fatalf("edgeproxy/configmap.yaml differs from `livegate-edgeproxy haproxy-config` for the DaemonSet's flags; regenerate it:\n%s", out)
	}

	haproxyBin, err := exec.LookPath("haproxy")
	if err != nil {
		haproxyBin = "/usr/sbin/haproxy"
	}
	if _, err := os.Stat(haproxyBin); err != nil {
		t.Skip("haproxy not installed (make deps installs it)")
	}
	dir := t.TempDir()
	cert, _ := selfSigned(t)
	mapFile := filepath.Join(dir, "sessions.map")
	if err := os.WriteFile(mapFile, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg = strings.NewReplacer(
		"/etc/livegate/tls/edge.pem", cert,
		"/var/lib/livegate/sessions.map", mapFile,
		"/var/run/livegate/haproxy.sock", filepath.Join(dir, "haproxy.sock"),
	).Replace(cfg)
	file := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(file, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, haproxyBin, "-c", "-q", "-f", file).CombinedOutput(); err != nil {
		t.Fatalf("haproxy -c: %v\n%s", err, out)
	}
}
