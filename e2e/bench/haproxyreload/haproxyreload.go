// Package haproxyreload measures the baseline for route programming: adding a session the way an
// operator does without livegate — one backend per session in the configuration file, rewrite the
// file, reload HAProxy (master-worker, SIGUSR2) — timed until the new backend answers through it.
package haproxyreload

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/livegate/livegate/e2e/bench/stats"
	"github.com/livegate/livegate/pkg/freeport"
)

// Options bound one run.
type Options struct {
	Binary string // HAProxy, /usr/sbin/haproxy by default
	// Held is how many sessions the configuration holds while one is added and one removed per
	// change (a churning edge never reloads an empty configuration).
	Held int
	// Changes is how many add-one-remove-one changes are timed.
	Changes int
	// Timeout bounds one change.
	Timeout time.Duration
}

// Result holds the latency of each change and the old workers still alive at the end.
type Result struct {
	Latencies stats.Durations
	Failures  int
}

// Run starts HAProxy on loopback and times Changes reload-based route additions.
func Run(ctx context.Context, o Options) (Result, error) {
	if o.Binary == "" {
		o.Binary = "/usr/sbin/haproxy"
	}
	if o.Timeout == 0 {
		o.Timeout = 5 * time.Second
	}
	dir, err := os.MkdirTemp("", "lgb-haproxy-")
	if err != nil {
		return Result{}, err
	}
	defer os.RemoveAll(dir)

	backends, err := startBackends(o.Held + o.Changes)
	if err != nil {
		return Result{}, err
	}
	defer func() {
		for _, b := range backends {
			_ = b.Close()
		}
	}()
	port, err := freeport.TCPPort()
	if err != nil {
		return Result{}, err
	}
	cfgPath := filepath.Join(dir, "haproxy.cfg")
	live := make([]int, 0, o.Held)
	for i := range o.Held {
		live = append(live, i)
	}
	if err := writeConfig(cfgPath, port, backends, live); err != nil {
		return Result{}, err
	}
	master := filepath.Join(dir, "master.sock")
	cmd := exec.CommandContext(ctx, o.Binary, "-W", "-db", "-S", master, "-f", cfgPath)
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return Result{}, fmt.Errorf("start haproxy: %w", err)
	}
	defer func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		_ = cmd.Wait()
	}()
	client := &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	url := "http://127.0.0.1:" + strconv.Itoa(port) + "/"
	if err := waitAnswer(ctx, client, url, sessionID(0), 10*time.Second); err != nil {
		return Result{}, fmt.Errorf("haproxy never served the first session: %w", err)
	}

	var res Result
	for c := range o.Changes {
		if ctx.Err() != nil {
			return res, ctx.Err()
		}
		add := o.Held + c
		live = append(live[1:], add)
		start := time.Now()
		if err := writeConfig(cfgPath, port, backends, live); err != nil {
			return res, err
		}
		if err := reload(ctx, master); err != nil {
			return res, err
		}
		if err := waitAnswer(ctx, client, url, sessionID(add), o.Timeout); err != nil {
			res.Failures++
			continue
		}
		res.Latencies = append(res.Latencies, time.Since(start))
		// One change at a time, the most favourable case for reloads; the pause lets the old
		// worker exit.
		time.Sleep(20 * time.Millisecond)
	}
	return res, nil
}

func sessionID(i int) string { return "s" + strconv.Itoa(i) }

// reload asks the master to reload through its CLI socket. A SIGUSR2 sent while the master
// re-executes itself into wait mode after the previous reload is lost; the socket refuses
// connections then, so the dial is retried for a bounded time.
func reload(ctx context.Context, socket string) error {
	var d net.Dialer
	deadline := time.Now().Add(5 * time.Second)
	var c net.Conn
	for {
		var err error
		if c, err = d.DialContext(ctx, "unix", socket); err == nil {
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("reload haproxy: %w", err)
		}
		time.Sleep(time.Millisecond)
	}
	defer c.Close()
	if _, err := io.WriteString(c, "reload\n"); err != nil {
		return fmt.Errorf("reload haproxy: %w", err)
	}
	// The master closes the connection when it re-executes: the command was taken.
	_ = c.SetReadDeadline(deadline)
	_, _ = io.Copy(io.Discard, c)
	return nil
}

// writeConfig writes the configuration atomically, as a careful operator's tooling would.
func writeConfig(path string, port int, backends []*backend, live []int) error {
	var b strings.Builder
	fmt.Fprintf(&b, `global
    master-worker
    maxconn 4096
defaults
    mode http
    timeout connect 2s
    timeout client 10s
    timeout server 10s
frontend fe
    bind 127.0.0.1:%d
`, port)
	for _, i := range live {
		fmt.Fprintf(&b, "    use_backend b_%s if { req.hdr(x-session-id) -m str %s }\n", sessionID(i), sessionID(i))
	}
	for _, i := range live {
		fmt.Fprintf(&b, "backend b_%s\n    server s %s\n", sessionID(i), backends[i].addr)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(b.String()), 0o600); err != nil {
		return fmt.Errorf("write haproxy configuration: %w", err)
	}
	return os.Rename(tmp, path)
}

// waitAnswer polls until the session's own backend answers through HAProxy.
func waitAnswer(ctx context.Context, client *http.Client, url, sid string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		req.Header.Set("X-Session-Id", sid)
		resp, err := client.Do(req)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK && string(body) == sid {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("session %s: no answer from its backend within %s", sid, timeout)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		time.Sleep(200 * time.Microsecond)
	}
}

type backend struct {
	addr string
	srv  *http.Server
}

func (b *backend) Close() error { return b.srv.Close() }

// startBackends starts one HTTP server per session, each answering with its session id.
func startBackends(n int) ([]*backend, error) {
	var out []*backend
	for i := range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			for _, b := range out {
				_ = b.Close()
			}
			return nil, fmt.Errorf("backend %d: %w", i, err)
		}
		sid := sessionID(i)
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			_, _ = io.WriteString(w, sid)
		}), ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = srv.Serve(ln) }()
		out = append(out, &backend{addr: ln.Addr().String(), srv: srv})
	}
	return out, nil
}
