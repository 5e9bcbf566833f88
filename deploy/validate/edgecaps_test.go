package validate

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// unitSetting returns the values of a key of deploy/systemd/livegate-edgeproxy.service.
func unitSetting(t *testing.T, key string) []string {
	t.Helper()
	f, err := os.Open(filepath.Join(repoRoot, "deploy", "systemd", "livegate-edgeproxy.service"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var vals []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), key+"="); ok {
			vals = append(vals, v)
		}
	}
	return vals
}

// nsRun runs a command inside the network namespace.
func nsRun(t *testing.T, ns string, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// nsPost sends a bodiless POST from inside the namespace: the socket is created on a thread that
// has joined it.
func nsPost(ns, addr, path string) (string, error) {
	type result struct {
		out string
		err error
	}
	ch := make(chan result, 1)
	go func() {
		// The thread stays in the namespace; it ends with this goroutine, never reused.
		runtime.LockOSThread()
		f, err := os.Open("/run/netns/" + ns)
		if err != nil {
			ch <- result{err: err}
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			ch <- result{err: fmt.Errorf("setns: %w", err)}
			return
		}
		conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			ch <- result{err: err}
			return
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := fmt.Fprintf(conn, "POST %s HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n", path); err != nil {
			ch <- result{err: err}
			return
		}
		line, err := bufio.NewReader(conn).ReadString('\n')
		ch <- result{out: line, err: err}
	}()
	r := <-ch
	return r.out, r.err
}

func uidOf(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return ""
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "Uid:"); ok {
			return strings.Fields(v)[0]
		}
	}
	return ""
}

// TestEdgeRunsWithTheUnitsCapabilities runs the edge the way its systemd unit does (an
// unprivileged user, only the unit's ambient capabilities, no new privileges, XTABLES_LOCKFILE)
// in a network namespace of its own, and checks that it programs the media plane (the DNAT map
// over netlink) and that SIGTERM leaves HAProxy and the DNAT map in place.
func TestEdgeRunsWithTheUnitsCapabilities(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a network namespace")
	}
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Skip("setpriv (util-linux) not installed")
	}
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("nft (nftables) not installed")
	}
	ambient := unitSetting(t, "AmbientCapabilities")
	bounding := unitSetting(t, "CapabilityBoundingSet")
	if len(ambient) != 1 || len(bounding) != 1 || unitSetting(t, "NoNewPrivileges")[0] != "yes" {
		t.Fatalf("unit: AmbientCapabilities %q CapabilityBoundingSet %q: want one line each and NoNewPrivileges=yes", ambient, bounding)
	}
	capList := func(line string) string {
		var caps []string
		for _, c := range strings.Fields(line) {
			caps = append(caps, "+"+strings.ToLower(strings.TrimPrefix(c, "CAP_")))
		}
		return strings.Join(caps, ",")
	}

	edgeBin, agentBin := binary(t, "livegate-edgeproxy"), binary(t, "livegate-agent")
	if err := os.Chmod(binDir, 0o755); err != nil {
		t.Fatal(err)
	}
	ns := fmt.Sprintf("lgdeploy%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v\n%s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	nsRun(t, ns, "ip", "link", "set", "lo", "up")

	state, err := os.MkdirTemp("", "lgdeploy-state-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(state) })
	const nobody = 65534
	if err := os.Chmod(state, 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(state, nobody, nobody); err != nil {
		t.Fatal(err)
	}
	// Inside a namespace of its own every port is free; these are fixed for simplicity.
	edgeArgs := []string{"netns", "exec", ns, setpriv,
		"--reuid=" + strconv.Itoa(nobody), "--regid=" + strconv.Itoa(nobody), "--clear-groups",
		"--inh-caps=" + capList(ambient[0]), "--ambient-caps=" + capList(ambient[0]),
		"--bounding-set=-all," + capList(bounding[0]), "--no-new-privs",
		"env", "XTABLES_LOCKFILE=" + filepath.Join(state, "xtables.lock"),
		edgeBin, "run", "--state-dir=" + state, "--nats-embedded=127.0.0.1:14222", "--tls-self-signed",
		"--public-host=edge.test", "--public-ip=198.18.0.1", "--backend-cidrs=198.18.0.0/15",
		"--signaling-bind=127.0.0.1", "--signaling-port=14832", "--admin-addr=127.0.0.1:19470", "--log-format=json"}
	// HAProxy and the rules outlive the edge by design: this removes them, registered before the
	// edge starts so that it runs after the edge's stop.
	t.Cleanup(func() {
		if b, err := os.ReadFile(filepath.Join(state, "haproxy.pid")); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 1 {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		_ = exec.Command("ip", "netns", "exec", ns, edgeBin, "cleanup").Run()
	})
	edge := startNamed(t, "edge", nil, "ip", edgeArgs...)
	agent := startNamed(t, "agent", nil, "ip", "netns", "exec", ns, agentBin, "--nats-url=nats://127.0.0.1:14222",
		"--host=127.0.0.1", "--port=18011", "--app-addr=127.0.0.1:18012", "--instance-id=lgdeploy-app",
		"--session-id=lgdeploy-1", "--backend-ip=198.18.0.2", "--signaling-backend=:31000", "--media-backend=:31001")

	// The session's element of the edge's DNAT map, as nft lists it ("<public port> : 198.18.0.2
	// . 31001"); nft fails until the edge has made its table.
	mapped := func() bool {
		out, err := exec.Command("ip", "netns", "exec", ns, "nft", "list", "map", "ip", "livegate", "media").Output()
		return err == nil && strings.Contains(string(out), " : 198.18.0.2 . 31001")
	}
	posted := false
	waitUntil(t, 30*time.Second, "a DNAT map element programmed", []*proc{edge, agent}, func() bool {
		if !posted {
			_, err1 := nsPost(ns, "127.0.0.1:18012", "/v1/app/events/app-ready")
			_, err2 := nsPost(ns, "127.0.0.1:18012", "/v1/app/events/rtx-ready")
			posted = err1 == nil && err2 == nil
		}
		return mapped()
	})
	b, err := os.ReadFile(filepath.Join(state, "haproxy.pid"))
	if err != nil {
		t.Fatal(err)
	}
	haproxyPid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	if uid := uidOf(haproxyPid); uid != strconv.Itoa(nobody) {
		t.Errorf("haproxy runs as uid %q, want %d", uid, nobody)
	}

	// The agent goes first, while the edge's embedded NATS still answers its goodbye.
	agent.stop(t)
	edge.terminate(t)
	if syscall.Kill(haproxyPid, 0) != nil {
		t.Error("HAProxy stopped with the edge: a restart of the edge would drop every websocket")
	}
	// The agent's goodbye ended the session, so its element is gone; the table, and with it the
	// forwarding of every other session, outlives the edge.
	out, err := exec.Command("ip", "netns", "exec", ns, "nft", "list", "chain", "ip", "livegate", "prerouting").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "dnat ip to udp dport map @media") {
		t.Errorf("the DNAT table went away with the edge: %v: %s", err, out)
	}
}
