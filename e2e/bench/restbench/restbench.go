// Package restbench loads the agent's GET /v1/streaming/ready with wrk and, in the same run, a
// bare net/http handler that answers the same bytes; it also reads the agent's resident memory
// idle and under load.
package restbench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/livegate/livegate/e2e/bench/httpbench"
	"github.com/livegate/livegate/e2e/bench/procstat"
	"github.com/livegate/livegate/e2e/internal/proc"
	"github.com/livegate/livegate/pkg/freeport"
)

// Options bound one run.
type Options struct {
	Agent  string // livegate-agent binary
	Rounds int    // alternating bare/agent wrk runs of each
	Wrk    httpbench.Options
	// Env is added to the agent's environment.
	Env []string
	// DuringLoad, when set, runs while the last agent round loads it (e.g. to record a profile);
	// the run waits for it.
	DuringLoad func(ctx context.Context)
}

// Round is one bare run and the agent run right after it.
type Round struct{ Agent, Bare httpbench.Result }

// Result holds the round with the median agent/bare ratio, every round, and the agent's memory.
type Result struct {
	Agent, Bare     httpbench.Result
	Ratio           float64
	Rounds          []Round
	Idle, UnderLoad procstat.Memory
	Status          int
	Body            string
}

// Run starts the agent on loopback without NATS, makes it ready, and compares.
func Run(ctx context.Context, o Options) (Result, error) {
	var res Result
	port, err := freeport.TCPPort()
	if err != nil {
		return res, err
	}
	appPort, err := freeport.TCPPort()
	if err != nil {
		return res, err
	}
	cmd := exec.CommandContext(ctx, o.Agent, "--host", "127.0.0.1", "--port", strconv.Itoa(port),
		"--app-addr", "127.0.0.1:"+strconv.Itoa(appPort), "--log-level", "warn", "--log-format", "json",
		"--instance-id", "bench", "--backend-ip", "127.0.0.1")
	cmd.Env = append(os.Environ(), o.Env...)
	p, err := proc.Start("agent", cmd, nil)
	if err != nil {
		return res, err
	}
	defer func() { _ = p.Stop(3 * time.Second) }()

	base := "http://127.0.0.1:" + strconv.Itoa(port)
	app := "http://127.0.0.1:" + strconv.Itoa(appPort)
	if err := waitHTTP(ctx, base+"/v1/streaming/startup", 10*time.Second); err != nil {
		return res, fmt.Errorf("agent did not start: %w (output: %.400s)", err, p.Output())
	}
	for _, ev := range []string{"app-ready", "rtx-ready"} {
		resp, err := http.Post(app+"/v1/app/events/"+ev, "application/json", nil)
		if err != nil {
			return res, fmt.Errorf("agent app event %s: %w", ev, err)
		}
		_ = resp.Body.Close()
	}
	resp, err := http.Get(base + "/v1/streaming/ready")
	if err != nil {
		return res, err
	}
	body, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	res.Status, res.Body = resp.StatusCode, string(body)
	contentType := resp.Header.Get("Content-Type")

	bare, bareURL, err := startBare(res.Status, contentType, body)
	if err != nil {
		return res, err
	}
	defer bare.Close()

	time.Sleep(time.Second)
	if res.Idle, err = procstat.ReadMemory(p.Pid()); err != nil {
		return res, err
	}

	peak := &peakRSS{pid: p.Pid()}
	var ratios []float64
	for r := range o.Rounds {
		b, err := httpbench.Wrk(ctx, bareURL, o.Wrk)
		if err != nil {
			return res, err
		}
		var during sync.WaitGroup
		if o.DuringLoad != nil && r == o.Rounds-1 {
			during.Go(func() { o.DuringLoad(ctx) })
		}
		stop := peak.sample()
		a, err := httpbench.Wrk(ctx, base+"/v1/streaming/ready", o.Wrk)
		stop()
		during.Wait()
		if err != nil {
			return res, err
		}
		res.Rounds = append(res.Rounds, Round{Agent: a, Bare: b})
		ratios = append(ratios, a.RPS/b.RPS)
	}
	// The median round by ratio: each round pairs two adjacent runs, so a slow drift in the
	// machine's load touches both sides of it alike.
	idx := make([]int, len(ratios))
	for i := range idx {
		idx[i] = i
	}
	sort.Slice(idx, func(a, b int) bool { return ratios[idx[a]] < ratios[idx[b]] })
	med := res.Rounds[idx[len(idx)/2]]
	res.Agent, res.Bare, res.Ratio = med.Agent, med.Bare, ratios[idx[len(idx)/2]]
	res.UnderLoad = peak.max
	return res, nil
}

// startBare serves the agent's exact answer from a plain net/http handler.
func startBare(status int, contentType string, body []byte) (*http.Server, string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, "", err
	}
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", contentType)
		w.WriteHeader(status)
		_, _ = io.Copy(w, bytes.NewReader(body))
	})}
	go func() { _ = srv.Serve(ln) }()
	return srv, "http://" + ln.Addr().String() + "/v1/streaming/ready", nil
}

type peakRSS struct {
	pid int
	mu  sync.Mutex
	max procstat.Memory
}

// sample reads the RSS every 100 ms until the returned stop is called.
func (p *peakRSS) sample() (stop func()) {
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			if m, err := procstat.ReadMemory(p.pid); err == nil {
				p.mu.Lock()
				if m.RSS > p.max.RSS {
					p.max.RSS = m.RSS
				}
				p.max.HWM = max(p.max.HWM, m.HWM)
				p.mu.Unlock()
			}
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	}()
	return func() { close(done); <-finished }
}

func waitHTTP(ctx context.Context, url string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			_ = resp.Body.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}
