// Package haproxytest runs a real HAProxy (Debian's /usr/sbin/haproxy) and websocket backends and
// clients for the edge's tests.
package haproxytest

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/rs/zerolog"

	"github.com/livegate/livegate/edgeproxy/internal/haproxy"
	"github.com/livegate/livegate/edgeproxy/internal/tlscert"
	"github.com/livegate/livegate/pkg/commalist"
	"github.com/livegate/livegate/pkg/freeport"
)

// Binary finds HAProxy: $HAPROXY, then PATH, then /usr/sbin/haproxy. Outside CI a missing binary
// skips the test; in CI it fails it.
func Binary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("HAPROXY"); p != "" {
		return p
	}
	if p, err := exec.LookPath("haproxy"); err == nil {
		return p
	}
	if _, err := os.Stat("/usr/sbin/haproxy"); err == nil {
		return "/usr/sbin/haproxy"
	}
	if os.Getenv("CI") != "" {
		t.Fatal("haproxy not found: run `make deps`")
	}
	t.Skip("haproxy not found: run `make deps`")
	return ""
}

// Dir returns a fresh short directory (unix socket paths are limited to 108 bytes), removed at
// the end of the test.
func Dir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("", "lgh-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(d) })
	return d
}

// Files are the paths of one HAProxy's state.
type Files struct {
	Dir, Config, Socket, MapFile, Cert, PidFile string
}

// NewFiles lays out state in dir, with a self-signed certificate for 127.0.0.1.
func NewFiles(t testing.TB, dir string) Files {
	t.Helper()
	f := Files{
		Dir: dir, Config: filepath.Join(dir, "haproxy.cfg"), Socket: filepath.Join(dir, "admin.sock"),
		MapFile: filepath.Join(dir, "sessions.map"), Cert: filepath.Join(dir, "tls.pem"), PidFile: filepath.Join(dir, "haproxy.pid"),
	}
	if err := tlscert.SelfSigned(f.Cert, []string{"127.0.0.1"}, time.Now()); err != nil {
		t.Fatal(err)
	}
	return f
}

// ConfigFor is the configuration of a test HAProxy listening on 127.0.0.1:port.
func (f Files) ConfigFor(port int) haproxy.Config {
	return haproxy.Config{
		Socket: f.Socket, MapFile: f.MapFile, CertFile: f.Cert, BindAddr: "127.0.0.1", Port: port,
		TunnelTimeout: time.Hour, HardStopAfter: 10 * time.Second, MissLimit: 1000,
	}
}

// Instance is a supervised HAProxy.
type Instance struct {
	Files
	Port   int
	Client *haproxy.Client
	// Driver is the runtime driver of an Instance from Start.
	Driver     *haproxy.RuntimeDriver
	Supervisor *haproxy.Supervisor
	ready      chan struct{}
	onReady    atomic.Pointer[func()]
}

// OnReady sets a function called after each (re)start, e.g. a reconciler's Resync.
func (i *Instance) OnReady(f func()) { i.onReady.Store(&f) }

// Start renders a configuration, writes an empty map file when none exists and supervises
// HAProxy until the end of the test, with a runtime driver on its map.
func Start(t testing.TB, cfg haproxy.Config, f Files) *Instance {
	t.Helper()
	text, err := haproxy.Render(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f.Config, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(f.MapFile); err != nil {
		if err := haproxy.WriteMapFile(f.MapFile, nil); err != nil {
			t.Fatal(err)
		}
	}
	inst := Supervise(t, f, cfg.Port)
	drv, err := haproxy.NewRuntimeDriver(inst.Client, f.MapFile)
	if err != nil {
		t.Fatal(err)
	}
	inst.Driver = drv
	inst.WaitReady(t)
	return inst
}

// StartNew starts HAProxy with the edge's configuration, in files of its own, on a free port.
func StartNew(t testing.TB) *Instance {
	t.Helper()
	f := NewFiles(t, Dir(t))
	return Start(t, f.ConfigFor(freeport.TCP(t)), f)
}

// Supervise runs HAProxy on the configuration and map already in f until the end of the test,
// without waiting for it to answer. It may be called from a goroutine other than the test's.
func Supervise(t testing.TB, f Files, port int) *Instance {
	bin := Binary(t)
	inst := &Instance{Files: f, Port: port, Client: haproxy.NewClient(f.Socket, 5*time.Second), ready: make(chan struct{}, 16)}
	log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
	inst.Supervisor = haproxy.NewSupervisor(bin, f.Config, f.PidFile, inst.Client, log,
		haproxy.StopOnExit(true), haproxy.Backoff(50*time.Millisecond, time.Second),
		haproxy.OnReady(func() {
			if f := inst.onReady.Load(); f != nil {
				(*f)()
			}
			select {
			case inst.ready <- struct{}{}:
			default:
			}
		}))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = inst.Supervisor.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return inst
}

// Ready waits for HAProxy to answer after a (re)start.
func (i *Instance) Ready() error {
	select {
	case <-i.ready:
		return nil
	case <-time.After(20 * time.Second):
		return errors.New("haproxy not ready after 20s")
	}
}

// WaitReady is Ready that fails the test.
func (i *Instance) WaitReady(t testing.TB) {
	t.Helper()
	if err := i.Ready(); err != nil {
		t.Fatal(err)
	}
}

// ShowMap is HAProxy's own listing of its session map, one "<id> <key> <value>" line an entry.
func (i *Instance) ShowMap(t testing.TB, ctx context.Context) string {
	t.Helper()
	c, err := haproxy.NewCommand("show", "map", i.MapFile)
	if err != nil {
		t.Fatal(err)
	}
	out, err := i.Client.Exec(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Backend is a websocket server standing in for an app's signaling port.
type Backend struct {
	Name string
	Addr netip.AddrPort
}

// StartBackend serves websockets on 127.0.0.1: the first message of every connection is
// "<name> <path>", then it echoes what it receives. With echo it answers the client's first subprotocol itself, as a well-behaved
// app does; without, HAProxy has to add it.
func StartBackend(t testing.TB, name string, echo bool) Backend {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Plain HTTP requests (no upgrade) learn which backend answered from this header.
		w.Header().Set("X-Backend", name)
		opts := &websocket.AcceptOptions{}
		if echo {
			opts.Subprotocols = subprotocols(r.Header)
		}
		c, err := websocket.Accept(w, r, opts)
		if err != nil {
			return
		}
		defer c.CloseNow()
		ctx, cancel := context.WithTimeout(r.Context(), time.Minute)
		defer cancel()
		if err := c.Write(ctx, websocket.MessageText, []byte(name+" "+r.URL.Path)); err != nil {
			return
		}
		// Echo until the client closes.
		for {
			typ, msg, err := c.Read(ctx)
			if err != nil {
				return
			}
			if err := c.Write(ctx, typ, msg); err != nil {
				return
			}
		}
	})}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	return Backend{Name: name, Addr: netip.MustParseAddrPort(l.Addr().String())}
}

func subprotocols(h http.Header) []string {
	var out []string
	for _, v := range h.Values("Sec-WebSocket-Protocol") {
		out = append(out, commalist.Split(v)...)
	}
	return out
}

// Result is what a handshake through HAProxy got.
type Result struct {
	Status      int
	Subprotocol string
	Message     string
}

// ErrNotUpgraded is returned with the status when HAProxy answered without upgrading.
var ErrNotUpgraded = errors.New("websocket not upgraded")

// Dial handshakes with wss://127.0.0.1:port/path offering subprotocol x-nv-sessionid.<id> and
// reads the backend's first message.
func Dial(ctx context.Context, port int, path, sessionID string) (Result, error) {
	return DialWith(ctx, port, path, []string{"x-nv-sessionid." + sessionID}, nil)
}

// DialWith handshakes with the given subprotocols and headers.
func DialWith(ctx context.Context, port int, path string, subprotocols []string, header http.Header) (Result, error) {
	c, res, err := Open(ctx, port, path, subprotocols, header)
	if err != nil {
		return res, err
	}
	_ = c.Close(websocket.StatusNormalClosure, "")
	return res, nil
}

// Open is DialWith that leaves the connection open.
func Open(ctx context.Context, port int, path string, subprotocols []string, header http.Header) (*websocket.Conn, Result, error) {
	hc := &http.Client{Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12},
		ForceAttemptHTTP2: false,
	}}
	defer hc.CloseIdleConnections()
	c, resp, err := websocket.Dial(ctx, fmt.Sprintf("wss://127.0.0.1:%d%s", port, path), &websocket.DialOptions{
		HTTPClient: hc, Subprotocols: subprotocols, HTTPHeader: header,
	})
	var res Result
	if resp != nil {
		res.Status = resp.StatusCode
	}
	if err != nil {
		if resp != nil && resp.StatusCode != http.StatusSwitchingProtocols {
			return nil, res, fmt.Errorf("%w: status %d", ErrNotUpgraded, resp.StatusCode)
		}
		return nil, res, err
	}
	res.Subprotocol = c.Subprotocol()
	_, msg, err := c.Read(ctx)
	if err != nil {
		c.CloseNow()
		return nil, res, fmt.Errorf("read first message: %w", err)
	}
	res.Message = string(msg)
	return c, res, nil
}

// Change is the one-route batch a driver's fuzz target applies: a delete of key when del is
// set, else a set of key to value.
func Change(key, value string, del bool) (set map[string]string, dels []string) {
	if del {
		return nil, []string{key}
	}
	return map[string]string{key: value}, nil
}
