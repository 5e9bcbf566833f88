// Package images tests the archives `make images` writes as a cluster would use them: each
// image's layers unpacked into a root file system and its entrypoint run from there, in network
// namespaces, without a container engine. LIVEGATE_IMAGES names the directory of the archives
// (make images-test sets it).
package images

import (
	"archive/tar"
	"bytes"
	"context"
	"debug/elf"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/livegate/livegate/e2e/internal/netns"
	"github.com/livegate/livegate/e2e/internal/proc"
	"github.com/livegate/livegate/e2e/internal/stack"
	"github.com/livegate/livegate/e2e/internal/wsclient"
	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
)

// prefix starts the namespaces of this test alone (sweeps delete by prefix).
const prefix = "lgim"

var built stack.Built

func TestMain(m *testing.M) { built.Main(m) }

// agentFiles is everything the agent's image holds: the binary, users, CA certificates, /tmp.
var agentFiles = []string{
	"/etc", "/etc/group", "/etc/passwd", "/etc/ssl", "/etc/ssl/certs", "/etc/ssl/certs/ca-certificates.crt",
	"/tmp", "/usr", "/usr/local", "/usr/local/bin", "/usr/local/bin/livegate-agent",
}

func TestImages(t *testing.T) {
	dir := os.Getenv("LIVEGATE_IMAGES")
	if dir == "" {
		t.Skip("LIVEGATE_IMAGES unset: `make images-test` builds the images and runs this test")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: unpacks images with their owners, chroot, network namespaces")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	agent := readImage(t, filepath.Join(dir, "livegate-agent.tar"))
	edge := readImage(t, filepath.Join(dir, "livegate-edgeproxy.tar"))
	forbidden := buildPaths(t)

	for _, tc := range []struct {
		img   *image
		user  string
		ports []string
	}{
		{agent, "65532:65532", []string{"8011/tcp"}},
		{edge, "0:0", []string{"48322/tcp", "9470/tcp"}},
	} {
		img := tc.img
		root := t.TempDir()
		t.Run(img.name+"/config", func(t *testing.T) {
			c := img.config.Config
			if !slices.Equal(c.Entrypoint, []string{"/usr/local/bin/" + img.name}) || len(c.Cmd) != 0 || c.User != tc.user {
				t.Errorf("entrypoint %q, cmd %q, user %q; want [/usr/local/bin/%s], none, %s", c.Entrypoint, c.Cmd, c.User, img.name, tc.user)
			}
			var ports []string
			for p := range c.ExposedPorts {
				ports = append(ports, p)
			}
			slices.Sort(ports)
			if !slices.Equal(ports, tc.ports) {
				t.Errorf("exposed ports %v, want %v", ports, tc.ports)
			}
			if img.config.OS != "linux" || img.config.Architecture == "" {
				t.Errorf("platform %s/%s", img.config.OS, img.config.Architecture)
			}
			l := c.Labels
			if l["org.opencontainers.image.version"] == "" || img.tag != "livegate/"+img.name+":"+l["org.opencontainers.image.version"] {
				t.Errorf("tag %s, version label %q", img.tag, l["org.opencontainers.image.version"])
			}
			if !strings.HasPrefix(l["org.opencontainers.image.source"], "https://") || l["org.opencontainers.image.revision"] == "" {
				t.Errorf("labels %v: want source and revision", l)
			}
			// Nothing in the environment but the search path: no secret, no build setting.
			if !slices.Equal(c.Env, []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}) {
				t.Errorf("env %q", c.Env)
			}
		})
		t.Run(img.name+"/layers", func(t *testing.T) {
			img.unpack(t, root, func(name string, h *tar.Header, data []byte) {
				if reason := secretOrBuildPath(name, data, forbidden); reason != "" {
					t.Errorf("%s: %s", name, reason)
				}
			})
			if img.name != "livegate-agent" {
				return
			}
			var names []string
			for name := range img.entries {
				names = append(names, name)
			}
			slices.Sort(names)
			if !slices.Equal(names, agentFiles) {
				t.Errorf("agent image holds %v, want only %v", names, agentFiles)
			}
			f, err := elf.Open(filepath.Join(img.root, "usr/local/bin/livegate-agent"))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			libs, _ := f.ImportedLibraries()
			for _, p := range f.Progs {
				if p.Type == elf.PT_INTERP {
					t.Errorf("agent binary is dynamically linked (libraries %v)", libs)
				}
			}
		})
		if t.Failed() {
			return
		}
		t.Run(img.name+"/version", func(t *testing.T) {
			name, args := img.command(nil, img.config.Config.Entrypoint[0], "--version")
			out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
			want := fmt.Sprintf("%s %s (revision %s,", img.name, img.config.Config.Labels["org.opencontainers.image.version"], img.config.Config.Labels["org.opencontainers.image.revision"])
			if err != nil || !strings.HasPrefix(string(out), want) {
				t.Fatalf("--version from the image: %q, %v; want %q…", out, err, want)
			}
		})
	}
	if t.Failed() {
		return
	}
	t.Run("livegate-edgeproxy/tools", func(t *testing.T) {
		// The last is the DaemonSet's map-file init step.
		state := t.TempDir()
		mapFile := filepath.Join(state, "sessions.map")
		for _, argv := range [][]string{{"haproxy", "-v"}, {"iptables-save", "--version"}, {"iptables-restore", "--version"},
			{"conntrack", "--version"}, {"/bin/sh", "-c", ": >> " + mapFile}} {
			name, args := edge.command([]string{state}, argv...)
			if out, err := exec.CommandContext(ctx, name, args...).CombinedOutput(); err != nil {
				t.Errorf("%s from the image: %v: %s", strings.Join(argv, " "), err, out)
			}
		}
		if _, err := os.Stat(mapFile); err != nil {
			t.Errorf("the map-file step made no map file: %v", err)
		}
	})

	sweep(t, ctx)
	t.Run("startup", func(t *testing.T) {
		for _, img := range []*image{agent, edge} {
			var fromImage, onHost []time.Duration
			// In turns, so that a burst of load on the machine hits both alike.
			for i := range 3 {
				fromImage = append(fromImage, img.timeToReady(t, ctx, i, false))
				onHost = append(onHost, img.timeToReady(t, ctx, i, true))
			}
			slices.Sort(fromImage)
			slices.Sort(onHost)
			t.Logf("%s: %.1f MiB compressed; exec to %s 200: from the image %v (median %v), the binary on the host %v (median %v)",
				img.name, float64(img.size)/(1<<20), img.readyPath(), fromImage, fromImage[1], onHost, onHost[1])
		}
	})
	t.Run("session", func(t *testing.T) { session(t, ctx, agent, edge) })
}

// buildPaths are the build host's paths that no layer may contain: the checkout, the Go
// caches and module cache.
func buildPaths(t *testing.T) []string {
	t.Helper()
	root, err := stack.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	paths := []string{root}
	out, err := exec.Command("go", "env", "GOMODCACHE", "GOCACHE", "GOPATH").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range strings.Fields(string(out)) {
		if len(p) > 1 {
			paths = append(paths, p)
		}
	}
	return paths
}

// secretOrBuildPath says what is wrong with a file of a layer: a private key, a credentials
// file, a home directory, or a path of the build host inside it.
func secretOrBuildPath(name string, data []byte, forbidden []string) string {
	base := path.Base(name)
	switch {
	case strings.HasPrefix(name, "/root/") || strings.HasPrefix(name, "/home/"):
		return "a home directory's file"
	case strings.HasPrefix(base, "id_rsa") || strings.HasPrefix(base, "id_ed25519") || strings.HasSuffix(base, ".key") ||
		base == ".netrc" || base == ".git-credentials" || base == ".git" || base == "nkeys" || strings.HasSuffix(base, ".creds"):
		return "a credentials file"
	case bytes.Contains(data, []byte("PRIVATE KEY-----")):
		return "holds a private key"
	}
	for _, p := range forbidden {
		if bytes.Contains(data, []byte(p)) || strings.Contains(name, p) {
			return "names the build path " + p
		}
	}
	return ""
}

// script runs a program from a root file system the way a runtime starts a container: /proc,
// /dev and /sys mounted in a mount namespace of its own, volumes bind-mounted at their own
// paths, then chroot as the image's user. Each step execs the next, so the program keeps the pid
// its starter saw, and signals reach it directly.
const script = `set -e
root=$1 user=$2 n=$3; shift 3
for d in proc dev sys; do mkdir -p "$root/$d"; done
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
mount --rbind /sys "$root/sys"
while [ "$n" -gt 0 ]; do mkdir -p "$root$1"; mount --bind "$1" "$root$1"; shift; n=$((n-1)); done
exec chroot --userspec="$user" "$root" "$@"`

// command is the command line running argv from the image's root file system (see script).
func (img *image) command(volumes []string, argv ...string) (string, []string) {
	args := []string{"--mount", "--propagation", "private", "/bin/sh", "-c", script, "container", img.root, img.config.Config.User, strconv.Itoa(len(volumes))}
	return "unshare", append(append(args, volumes...), argv...)
}

// readyPath is what tells that the image's program is up: the agent's startup probe, the edge's
// health check.
func (img *image) readyPath() string {
	if img.name == "livegate-agent" {
		return "/v1/streaming/startup"
	}
	return "/healthz"
}

// timeToReady starts the image's entrypoint alone in a fresh namespace and returns how long it
// took from exec to its ready path answering 200: run from the image's root file system, or,
// with direct, the same binary started as a plain host process (the baseline: what the image
// adds is the difference).
func (img *image) timeToReady(t *testing.T, ctx context.Context, run int, direct bool) time.Duration {
	t.Helper()
	ns, err := netns.Add(ctx, fmt.Sprintf("%s%s-r%d", prefix, strconv.FormatInt(int64(os.Getpid()), 36), run))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = ns.Delete(context.Background()) }()
	var args, volumes []string
	url := "http://127.0.0.1:9470/healthz"
	if img.name == "livegate-agent" {
		url = fmt.Sprintf("http://127.0.0.1:%d/v1/streaming/startup", stack.AgentPort)
		args = stack.AgentArgs(stack.AgentConfig{InstanceID: "img", Pool: "img", NATSHost: netns.EdgePublic, BackendIP: netns.EdgePublic, LeaseTTL: 4 * time.Second})
	} else {
		state := t.TempDir()
		volumes = []string{state}
		args = []string{"--edge-id", "img", "--pool", "img", "--public-host", "127.0.0.1", "--public-ip", "127.0.0.1",
			"--nats-embedded=127.0.0.1:4222", "--haproxy-stop-on-exit", "--tls-self-signed", "--state-dir", state,
			"--media-ports", stack.MediaPorts, "--log-format", "console"}
	}
	entrypoint := img.config.Config.Entrypoint[0]
	name, argv := img.command(volumes, append([]string{entrypoint}, args...)...)
	if direct {
		name, argv = filepath.Join(img.root, entrypoint), args
	}
	start := time.Now()
	p, err := proc.Start(img.name, ns.Command(context.WithoutCancel(ctx), name, argv...), nil)
	if err != nil {
		t.Fatal(err)
	}
	// Killed: how the program stops is not what this measures (the session test stops politely).
	defer p.Kill()
	client := ns.HTTPClient(time.Second)
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := client.Get(url)
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if p.Exited() || time.Now().After(deadline) {
			t.Fatalf("%s: %s not 200 (%v); output:\n%s", img.name, url, err, p.Output())
		}
		time.Sleep(5 * time.Millisecond)
	}
	took := time.Since(start)
	wantUID := strings.Split(img.config.Config.User, ":")[0]
	if uid := statusField(t, p.Pid(), "Uid"); !direct && uid != wantUID {
		t.Errorf("%s runs as uid %s, the image says %s", img.name, uid, wantUID)
	}
	return took
}

// statusField is the first value of a field of /proc/PID/status ("Uid": the real uid).
func statusField(t *testing.T, pid int, field string) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			return strings.Fields(v)[0]
		}
	}
	return ""
}

func sweep(t *testing.T, ctx context.Context) {
	t.Helper()
	if _, err := netns.Sweep(ctx, prefix); err != nil {
		t.Fatal(err)
	}
}

// session runs the e2e topology with the edge and the agent from their images (the demo app
// and the client from the host): a session is routed through the image's HAProxy and its UDP
// forwarded by the rules the image's iptables programmed.
func session(t *testing.T, ctx context.Context, agent, edge *image) {
	bins := built.For(t)
	dir := t.TempDir()
	d := stack.StartFor(ctx, t, stack.Options{
		Prefix: prefix,
		Bins:   stack.Binaries{Agent: agent.config.Config.Entrypoint[0], Edge: edge.config.Config.Entrypoint[0], DemoApp: bins.DemoApp},
		Dir:    dir, EdgeID: "edge-img", Pool: "img", LeaseTTL: 4 * time.Second,
		Nodes: []stack.NodeOptions{{ResumeTimeoutSeconds: 6}},
		Wrap: func(name, bin string, args []string) (string, []string) {
			switch {
			case name == "edge":
				return edge.command([]string{dir}, append([]string{bin}, args...)...)
			case strings.HasPrefix(name, "agent"):
				return agent.command(nil, append([]string{bin}, args...)...)
			}
			return bin, args
		},
	})
	n := d.Nodes[0]
	if r, err := n.Startup(ctx); err != nil || r.Code != http.StatusOK {
		t.Fatalf("agent /v1/streaming/startup: %s, %v", r, err)
	}
	wait := func(typ livegatev1.EventType) *livegatev1.Event {
		t.Helper()
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		r, err := d.Obs.Wait(wctx, 0, "", typ)
		if err != nil {
			t.Fatal(err)
		}
		return r.Event
	}
	sid := wait(livegatev1.EventType_EVENT_TYPE_READY_FOR_CONNECTION).GetSessionId()
	wait(livegatev1.EventType_EVENT_TYPE_ROUTE_PROGRAMMED)
	wait(livegatev1.EventType_EVENT_TYPE_ENDPOINT_ASSIGNED)
	ep, err := d.Obs.Endpoint(ctx, n.InstanceID)
	if err != nil || ep.GetSessionId() != sid || len(ep.GetPublicUdpPorts()) != 1 {
		t.Fatalf("endpoint of %s: %v, %v", sid, ep, err)
	}
	if m, err := d.HAProxyMap(ctx); err != nil || m[sid] == "" {
		t.Fatalf("HAProxy map: %v, %v; want %s", m, err, sid)
	}
	ws, err := wsclient.Dial(ctx, d.Topo.Client.Dial, d.PublicSignaling(), sid)
	if err != nil {
		t.Fatalf("websocket through the edge: %v", err)
	}
	defer ws.Abort()
	wait(livegatev1.EventType_EVENT_TYPE_CLIENT_CONNECTED)
	port := ep.GetPublicUdpPorts()[0]
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	rep, err := d.ProbeMedia(pctx, fmt.Sprintf("%s:%d", netns.EdgePublic, port), 50)
	if err != nil || rep.Received == 0 {
		t.Fatalf("media through udp %d: %v, %v", port, rep, err)
	}
	t.Logf("session %s: websocket through the image's HAProxy, media through udp %d: %d/%d echoed", sid, port, rep.Received, rep.Sent)
	dnat, err := stack.DNATMap(ctx, d.Topo.Edge)
	if want := netip.AddrPortFrom(netns.NodeAddr(n.Index), stack.AppMediaPort); err != nil || dnat[int(port)] != want {
		t.Errorf("DNAT map in the edge namespace: udp %d -> %s (%v), want %s", port, dnat[int(port)], err, want)
	}
	// The processes are the images' programs, not the host's (comm is the name's first 15 bytes).
	running := map[string]string{"haproxy": filepath.Join(edge.root, "usr/sbin/haproxy"), "livegate-edgepr": filepath.Join(edge.root, "usr/local/bin/livegate-edgeproxy")}
	pids, err := d.Topo.Edge.Pids(ctx)
	if err != nil {
		t.Fatal(err)
	}
	found := map[string]bool{}
	for _, pid := range pids {
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		want, ok := running[strings.TrimSpace(string(comm))]
		if !ok {
			continue
		}
		exe, err1 := os.Stat(fmt.Sprintf("/proc/%d/exe", pid))
		img, err2 := os.Stat(want)
		if err1 != nil || err2 != nil || !os.SameFile(exe, img) {
			t.Errorf("pid %d (%s) does not run %s (%v, %v)", pid, comm, want, err1, err2)
		}
		found[strings.TrimSpace(string(comm))] = true
	}
	if len(found) != len(running) {
		t.Errorf("in the edge namespace: %v, want the image's %v", found, running)
	}
}
