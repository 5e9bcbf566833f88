package stack

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// HAProxy reaches an HAProxy's runtime API: what it routes by right now, whoever runs it. A unix
// socket is reached by path, from any namespace.
type HAProxy struct {
	Socket string
	// Map is the session map's file, as HAProxy names the map.
	Map string
}

// EdgeHAProxy is the HAProxy an edge with state directory dir supervises or attaches to at the
// socket there.
func EdgeHAProxy(dir string) HAProxy {
	return HAProxy{Socket: filepath.Join(dir, "haproxy.sock"), Map: filepath.Join(dir, "sessions.map")}
}

// Command sends one runtime API command and returns the answer.
func (h HAProxy) Command(ctx context.Context, cmd string) (string, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", h.Socket)
	if err != nil {
		return "", fmt.Errorf("haproxy runtime socket: %w", err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, cmd+"\n"); err != nil {
		return "", fmt.Errorf("haproxy %s: %w", cmd, err)
	}
	out, err := io.ReadAll(c)
	if err != nil {
		return "", fmt.Errorf("haproxy %s: %w", cmd, err)
	}
	return string(out), nil
}

// ShowMap reads the session map (`show map`).
func (h HAProxy) ShowMap(ctx context.Context) (map[string]string, error) {
	out, err := h.Command(ctx, "show map "+h.Map)
	if err != nil {
		return nil, err
	}
	m := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		// "<entry id> <key> <value>"
		f := strings.Fields(line)
		if len(f) == 3 && strings.HasPrefix(f[0], "0x") {
			m[f[1]] = f[2]
		} else if line != "" {
			return nil, fmt.Errorf("haproxy show map: unexpected line %q", line)
		}
	}
	return m, nil
}

// MapHas reports whether key is in the session map (`get map`).
func (h HAProxy) MapHas(ctx context.Context, key string) (bool, error) {
	out, err := h.Command(ctx, "get map "+h.Map+" "+key)
	if err != nil {
		return false, err
	}
	return strings.Contains(out, "found=yes"), nil
}

// WorkerPid is the process that answers the runtime API (`show info`): it changes when a reload
// or a restart has brought a new worker up.
func (h HAProxy) WorkerPid(ctx context.Context) (int, error) {
	out, err := h.Command(ctx, "show info")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(line, "Pid: "); ok {
			return strconv.Atoi(strings.TrimSpace(v))
		}
	}
	return 0, fmt.Errorf("show info: no Pid line in %q", out)
}

// SupervisedMaster is the pid of the HAProxy master the edge with state directory dir
// supervises, as it recorded it.
func SupervisedMaster(dir string) (int, error) {
	b, err := os.ReadFile(filepath.Join(dir, "haproxy.pid"))
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// SupervisedPids lists the supervised HAProxy's master and workers; nil when there is none.
func SupervisedPids(dir string) []int {
	master, err := SupervisedMaster(dir)
	if err != nil {
		return nil
	}
	pids := []int{master}
	children, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", master, master))
	for _, f := range strings.Fields(string(children)) {
		if p, err := strconv.Atoi(f); err == nil {
			pids = append(pids, p)
		}
	}
	return pids
}
