// Package browserbench measures a real browser's WebRTC session through the edge (HAProxy TLS
// websocket, kernel DNAT and SNAT) against the same browser and sample app with the edge's proxy
// and NAT out of the path (a plain websocket to the app and the app's own address as its
// candidate, still routed by the edge's namespace), in the same run: the time to the first
// decoded frame and the input echo round trip over the data channel.
package browserbench

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"time"

	"github.com/livegate/livegate/e2e/bench/stats"
	"github.com/livegate/livegate/e2e/internal/browser"
	"github.com/livegate/livegate/e2e/internal/netns"
	"github.com/livegate/livegate/e2e/internal/stack"
	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
)

// Sample is one path's figures.
type Sample struct {
	FirstFrame stats.Durations
	Echo       stats.Durations
}

// Figures are both paths'.
type Figures struct {
	Edge, Direct Sample
}

// echoesPerRound is how many input events each page load sends.
const echoesPerRound = 20

// Run plays rounds page loads on each path, alternating, with one agent and one sample app.
func Run(ctx context.Context, bins stack.Binaries, prefix string, rounds int) (Figures, error) {
	var f Figures
	dir, err := os.MkdirTemp("", "livegate-browserbench-")
	if err != nil {
		return f, err
	}
	defer os.RemoveAll(dir)
	d, err := stack.Start(ctx, stack.Options{
		Prefix: prefix, Bins: bins, Dir: dir, EdgeID: "edge1", Pool: "bench", LeaseTTL: 15 * time.Second,
		Nodes: []stack.NodeOptions{{StreamApp: true, ResumeTimeoutSeconds: 60}},
	})
	if err != nil {
		if d != nil {
			return f, fmt.Errorf("%w\n%s", err, d.Logs())
		}
		return f, err
	}
	defer func() { _ = d.Close() }()
	n := d.Nodes[0]
	rfc, err := d.Obs.Wait(ctx, 0, n.InstanceID, livegatev1.EventType_EVENT_TYPE_READY_FOR_CONNECTION)
	if err != nil {
		return f, err
	}
	sid := rfc.Event.GetSessionId()
	if _, err := d.Obs.Wait(ctx, 0, n.InstanceID, livegatev1.EventType_EVENT_TYPE_ENDPOINT_ASSIGNED); err != nil {
		return f, err
	}
	page, stopPage, err := browser.ServePage(d.Topo.Client)
	if err != nil {
		return f, err
	}
	defer stopPage()
	b, err := browser.Launch(ctx, d.Topo.Client)
	if err != nil {
		return f, err
	}
	defer b.Close()
	direct := url.Values{"port": {strconv.Itoa(stack.AppSignalingPort)}, "tls": {"0"}, "direct": {"1"}}
	for i := 0; i < rounds; i++ {
		// The page of one round is replaced by the next one's; the app takes the newer client.
		if err := play(ctx, b, page, netns.EdgePublic.String(), sid, nil, &f.Edge); err != nil {
			return f, fmt.Errorf("through the edge: %w", err)
		}
		if err := play(ctx, b, page, netns.NodeAddr(n.Index).String(), sid, direct, &f.Direct); err != nil {
			return f, fmt.Errorf("direct: %w", err)
		}
	}
	return f, nil
}

// play loads the page once, waits for the first frame and times echoesPerRound input echoes.
func play(ctx context.Context, b *browser.Browser, page, host, sid string, extra url.Values, s *Sample) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if err := b.Open(ctx, page, host, sid, extra); err != nil {
		return err
	}
	st, err := b.WaitState(ctx, func(st browser.State) bool { return st.FirstFrameAt > 0 })
	if err != nil {
		return fmt.Errorf("no first frame: %w (page %+v)", err, st)
	}
	s.FirstFrame = append(s.FirstFrame, time.UnixMilli(st.FirstFrameAt).Sub(time.UnixMilli(st.StartedAt)))
	for sent := 0; sent < echoesPerRound; {
		ok, err := b.SendInput(ctx)
		if err != nil {
			return err
		}
		if ok {
			sent++
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	st, err = b.WaitState(ctx, func(st browser.State) bool { return st.Echoes >= echoesPerRound })
	if err != nil {
		return fmt.Errorf("echoes: %w (page %+v)", err, st)
	}
	for _, ms := range st.EchoMs {
		s.Echo = append(s.Echo, time.Duration(ms*float64(time.Millisecond)))
	}
	return nil
}
