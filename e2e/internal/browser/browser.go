// Package browser drives Debian's headless Chromium inside a network namespace with chromedp, on
// livegate's web client page (samples/streamapp/webclient): what the end-to-end test and the demo
// use to prove that a real browser streams through the edge.
package browser

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"syscall"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/livegate/livegate/e2e/internal/netns"
	"github.com/livegate/livegate/samples/streamapp/webclient"
)

// Browser is one Chromium with one tab.
type Browser struct {
	ctx         context.Context
	cancelTab   context.CancelFunc
	cancelAlloc context.CancelFunc
	dir         string
}

// Find is the Chromium binary, or an error that says how to install it.
func Find() (string, error) {
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p, nil
		}
	}
	return "", errors.New("chromium not found: install it (Debian: apt-get install chromium, or `make deps`)")
}

// Launch starts Chromium inside ns (through `ip netns exec`, so the browser's sockets are the
// namespace's), talking to chromedp over its debugging pipe, which needs no network.
func Launch(ctx context.Context, ns *netns.Namespace) (*Browser, error) {
	chromium, err := Find()
	if err != nil {
		return nil, err
	}
	ip, err := exec.LookPath("ip")
	if err != nil {
		return nil, fmt.Errorf("ip (iproute2) not found: %w", err)
	}
	dir, err := os.MkdirTemp("", "livegate-chromium-")
	if err != nil {
		return nil, err
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium),
		chromedp.UserDataDir(dir),
		chromedp.NoSandbox, // root, in a test namespace
		chromedp.DisableGPU,
		chromedp.IgnoreCertErrors, // the edge's self-signed certificate
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("autoplay-policy", "no-user-gesture-required"),
		chromedp.WindowSize(720, 900),
		chromedp.ModifyCmdFunc(func(cmd *exec.Cmd) {
			cmd.Args = append([]string{"ip", "netns", "exec", ns.Name, chromium}, cmd.Args[1:]...)
			cmd.Path = ip
			// `ip netns exec` execs Chromium in its own process, so this reaches the browser.
			cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		}),
	)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.WithoutCancel(ctx), opts...)
	tab, cancelTab := chromedp.NewContext(allocCtx)
	b := &Browser{ctx: tab, cancelTab: cancelTab, cancelAlloc: cancelAlloc, dir: dir}
	// The first action starts the browser, bound to the context it runs in: that must be the
	// tab's own, so a watchdog, not a shorter context, bounds the start.
	watchdog := time.AfterFunc(time.Minute, b.Close)
	defer watchdog.Stop()
	stop := context.AfterFunc(ctx, b.Close)
	defer stop()
	if err := chromedp.Do(tab); err != nil {
		b.Close()
		return nil, fmt.Errorf("start chromium in %s: %w", ns.Name, err)
	}
	return b, nil
}

// do runs actions in the tab, bounded by ctx as well as by the browser's life.
func (b *Browser) do(ctx context.Context, actions ...chromedp.Action[chromedp.Void]) error {
	tab, cancel := context.WithCancel(b.ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, cancel)
	defer stop()
	return chromedp.Do(tab, actions...)
}

// Open loads the web client page for session through edge (host or IP), with the page's other
// query parameters in extra (may be nil).
func (b *Browser) Open(ctx context.Context, page, edge, session string, extra url.Values) error {
	q := url.Values{"edge": {edge}, "session": {session}}
	for k, v := range extra {
		q[k] = v
	}
	return b.do(ctx, chromedp.Navigate(page+"?"+q.Encode()))
}

// State is the page's window.livegate.state.
type State struct {
	WSState         string     `json:"wsState"`
	WSCloseCode     int        `json:"wsCloseCode"`
	WSCloseReason   string     `json:"wsCloseReason"`
	PCState         string     `json:"pcState"`
	FramesDecoded   int        `json:"framesDecoded"`
	BitrateKbps     float64    `json:"bitrateKbps"`
	RTTMs           *float64   `json:"rttMs"`
	LocalCandidate  *Candidate `json:"localCandidate"`
	RemoteCandidate *Candidate `json:"remoteCandidate"`
	Echoes          int        `json:"echoes"`
	LastEchoMs      *float64   `json:"lastEchoMs"`
	EchoMs          []float64  `json:"echoMs"`
	EchoSession     string     `json:"echoSession"`
	StartedAt       int64      `json:"startedAt"`
	FirstFrameAt    int64      `json:"firstFrameAt"`
	Errors          []string   `json:"errors"`
}

// Candidate is one side of the selected candidate pair.
type Candidate struct {
	Address  string `json:"address"`
	Port     int    `json:"port"`
	Protocol string `json:"protocol"`
	Type     string `json:"type"`
	// RelayProtocol is how a relay candidate reaches its TURN server: udp, tcp or tls.
	RelayProtocol string `json:"relayProtocol"`
}

func (c *Candidate) String() string {
	if c == nil {
		return "-"
	}
	return fmt.Sprintf("%s:%d %s %s", c.Address, c.Port, c.Protocol, c.Type)
}

// State reads the page's figures.
func (b *Browser) State(ctx context.Context) (State, error) {
	var s State
	err := b.do(ctx, func(ctx context.Context, t *chromedp.Target) (chromedp.Void, error) {
		var err error
		s, err = chromedp.Evaluate[State](`window.livegate ? window.livegate.state : null`)(ctx, t)
		return chromedp.Void{}, err
	})
	return s, err
}

// WaitState polls the page until ok holds or ctx ends; it returns the last state read.
func (b *Browser) WaitState(ctx context.Context, ok func(State) bool) (State, error) {
	for {
		st, err := b.State(ctx)
		if err == nil && ok(st) {
			return st, nil
		}
		select {
		case <-ctx.Done():
			return st, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// SendInput sends one input event over the page's data channel; false when it is not open yet.
func (b *Browser) SendInput(ctx context.Context) (bool, error) {
	var sent bool
	err := b.do(ctx, func(ctx context.Context, t *chromedp.Target) (chromedp.Void, error) {
		var err error
		sent, err = chromedp.Evaluate[bool](`window.livegate.sendInput({kind: "mousemove", x: 10, y: 20})`)(ctx, t)
		return chromedp.Void{}, err
	})
	return sent, err
}

// Screenshot is a PNG of the tab.
func (b *Browser) Screenshot(ctx context.Context) ([]byte, error) {
	var png []byte
	err := b.do(ctx, func(ctx context.Context, t *chromedp.Target) (chromedp.Void, error) {
		var err error
		png, err = chromedp.CaptureScreenshot()(ctx, t)
		return chromedp.Void{}, err
	})
	return png, err
}

// Close stops the browser and removes its profile.
func (b *Browser) Close() {
	b.cancelTab()
	b.cancelAlloc()
	_ = os.RemoveAll(b.dir)
}

// ServePage serves the web client on 127.0.0.1 inside ns (a page on a loopback origin is a secure
// context, as WebRTC wants) and returns its address; stop ends it.
func ServePage(ns *netns.Namespace) (page string, stop func(), err error) {
	var ln net.Listener
	if err := ns.Do(func() error {
		var err error
		ln, err = net.Listen("tcp4", "127.0.0.1:0")
		return err
	}); err != nil {
		return "", nil, fmt.Errorf("web client listener in %s: %w", ns.Name, err)
	}
	srv := &http.Server{Handler: webclient.Handler(), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	return "http://" + ln.Addr().String() + "/", func() { _ = srv.Close() }, nil
}
