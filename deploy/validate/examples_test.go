package validate

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/livegate/livegate/pkg/freeport"
)

// proc is a binary started by a test, its output kept for the failure message.
type proc struct {
	name string
	cmd  *exec.Cmd
	mu   sync.Mutex
	out  strings.Builder
	// done is closed when the process has exited, err then holds what Wait returned: a closed
	// channel can be looked at by stop, terminate and waitUntil alike.
	done chan struct{}
	err  error
}

func (p *proc) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.Write(b)
}

func (p *proc) String() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

func start(t *testing.T, env []string, bin string, args ...string) *proc {
	t.Helper()
	return startNamed(t, filepath.Base(bin), env, bin, args...)
}

// startNamed is start for a binary run through another (ip netns exec, setpriv): name is what the
// failure messages call it.
func startNamed(t *testing.T, name string, env []string, bin string, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, cmd: exec.Command(bin, args...), done: make(chan struct{})}
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout, p.cmd.Stderr = p, p
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() { p.stop(t) })
	return p
}

// stop sends SIGTERM and waits for the exit, once.
func (p *proc) stop(t *testing.T) {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
		t.Errorf("%s still running 20 s after SIGTERM", p.name)
	}
}

// terminate sends SIGTERM and fails the test unless p exits cleanly within 20 s: the check that a
// binary shuts down as its service manager stops it.
func (p *proc) terminate(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.done:
		if p.err != nil {
			t.Fatalf("%s after SIGTERM: %v\n%s", p.name, p.err, p)
		}
	case <-time.After(20 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
		t.Fatalf("%s still running 20 s after SIGTERM\n%s", p.name, p)
	}
}

// waitUntil polls cond every 200 ms for at most within, and fails at once when one of procs
// exits; the bound is generous, it is a wait, not a timing assertion.
func waitUntil(t *testing.T, within time.Duration, what string, procs []*proc, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		for _, p := range procs {
			select {
			case <-p.done:
				t.Fatalf("%s: %s exited: %v\n%s", what, p.name, p.err, logs(procs))
			default:
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s\n%s", what, within, logs(procs))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// logs is the output of procs, each under its name.
func logs(procs []*proc) string {
	var b strings.Builder
	for _, p := range procs {
		fmt.Fprintf(&b, "--- %s\n%s\n", p.name, p)
	}
	return b.String()
}

func sessionView(url string) map[string]any {
	resp, err := http.Get(url)
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var v map[string]any
	_ = json.Unmarshal(b, &v)
	return v
}

// TestExamplesWorkTogether starts a NATS server, the edge with deploy/etc/livegate/edgeproxy.toml
// and the agent with deploy/etc/livegate/agent.toml, overriding only what belongs to a host (ports,
// directories, the certificate, the NATS address, the app host's address inside the example's
// backend-cidrs): the agent's route must be programmed, not refused. First the same pair with the
// edge's backend ports as the examples had them (30000-32767): the refusal must reach the agent.
func TestExamplesWorkTogether(t *testing.T) {
	natsBin, err := exec.LookPath("nats-server")
	if err != nil {
		t.Skip("nats-server not installed (make deps installs it)")
	}
	if _, err := exec.LookPath("haproxy"); err != nil {
		t.Skip("haproxy not installed (make deps installs it)")
	}
	natsPort := freeport.TCP(t)
	natsURL := "nats://127.0.0.1:" + strconv.Itoa(natsPort)
	nats := start(t, nil, natsBin, "-js", "-a", "127.0.0.1", "-p", strconv.Itoa(natsPort), "-sd", t.TempDir())

	cert, key := selfSigned(t)
	adminPort := freeport.TCP(t)
	edgeEnv := []string{
		"LIVEGATE_EDGEPROXY_NATS_URL=" + natsURL, "LIVEGATE_EDGEPROXY_STATE_DIR=" + t.TempDir(),
		"LIVEGATE_EDGEPROXY_TLS_CERT=" + cert, "LIVEGATE_EDGEPROXY_TLS_KEY=" + key,
		"LIVEGATE_EDGEPROXY_SIGNALING_PORT=" + strconv.Itoa(freeport.TCP(t)), "LIVEGATE_EDGEPROXY_SIGNALING_BIND=127.0.0.1",
		"LIVEGATE_EDGEPROXY_ADMIN_ADDR=127.0.0.1:" + strconv.Itoa(adminPort), "LIVEGATE_EDGEPROXY_EDGE_ID=edge-examples",
		// The media plane programs this host's nftables and iptables: left out; the backend policy
		// it shares with signaling is what the examples must agree on.
		"LIVEGATE_EDGEPROXY_MEDIA=off", "LIVEGATE_EDGEPROXY_HAPROXY_STOP_ON_EXIT=true",
	}
	edgeConfig := filepath.Join(repoRoot, "deploy", "etc", "livegate", "edgeproxy.toml")
	edgeBin := binary(t, "livegate-edgeproxy")
	edge := start(t, append(edgeEnv, "LIVEGATE_EDGEPROXY_BACKEND_PORTS=30000-32767"), edgeBin, "run", "--config", edgeConfig)

	agentPort, appPort := freeport.TCP(t), freeport.TCP(t)
	agent := start(t, []string{
		"LIVEGATE_AGENT_NATS_URL=" + natsURL, "LIVEGATE_AGENT_HOST=127.0.0.1", "LIVEGATE_AGENT_PORT=" + strconv.Itoa(agentPort),
		"LIVEGATE_AGENT_APP_ADDR=127.0.0.1:" + strconv.Itoa(appPort), "LIVEGATE_AGENT_INSTANCE_ID=examples-1",
		"LIVEGATE_AGENT_BACKEND_IP=10.0.0.21",
	}, binary(t, "livegate-agent"), "--config", filepath.Join(repoRoot, "deploy", "etc", "livegate", "agent.toml"))
	procs := []*proc{nats, edge, agent}
	session := fmt.Sprintf("http://127.0.0.1:%d/v1/streaming/session", agentPort)
	waitUntil(t, 30*time.Second, "agent up", procs, func() bool { return sessionView(session) != nil })
	for _, ev := range []string{"app-ready", "rtx-ready"} {
		resp, err := http.Post(fmt.Sprintf("http://127.0.0.1:%d/v1/app/events/%s", appPort, ev), "application/json", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}

	var refusal map[string]any
	waitUntil(t, 30*time.Second, "the old examples' refusal reaches the agent", procs, func() bool {
		refusal, _ = sessionView(session)["routeRefusal"].(map[string]any)
		return refusal != nil
	})
	if reason, _ := refusal["reason"].(string); !strings.Contains(reason, "port 49100 is outside the allowed range 30000-32767") {
		t.Errorf("refusal %v", refusal)
	}

	edge.stop(t)
	edge = start(t, edgeEnv, edgeBin, "run", "--config", edgeConfig)
	procs[1] = edge
	var endpoint map[string]any
	waitUntil(t, 30*time.Second, "the shipped examples' route is programmed", procs, func() bool {
		v := sessionView(session)
		endpoint, _ = v["endpoint"].(map[string]any)
		return endpoint != nil && v["routeRefusal"] == nil
	})
	if endpoint["edgeId"] != "edge-examples" || endpoint["publicHost"] != "edge-1.example.com" {
		t.Errorf("endpoint %v", endpoint)
	}
	// The edge's own view names itself for a pool route, and empty lists as [] with media off.
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/v1/routes", adminPort))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if want := `"public_udp_ports":[],"edge_id":"edge-examples","pool":"default"`; !strings.Contains(string(b), want) {
		t.Errorf("/v1/routes %s: want %s", b, want)
	}
}
