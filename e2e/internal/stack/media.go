package stack

import (
	"context"
	"fmt"
	"net"
	"sync/atomic"
	"time"

	"github.com/livegate/livegate/pkg/dtlssrtp"
)

// Flow is DTLS-SRTP media to an edge's public port, running in the background: what a client's
// stream looks like while a test injects a fault.
type Flow struct {
	done chan struct{}
	// echoed counts the echoes so far: the report comes only once the flow ends.
	echoed atomic.Int64
	rep    *dtlssrtp.Report
	err    error
}

// FlowRate is the packets a second a Flow sends.
const FlowRate = 50

// StartFlow sends media to addr through dial (which decides the namespace) for about d, FlowRate
// packets a second, each echoed by the app behind; it gives up 30 s after d or when ctx ends.
func StartFlow(ctx context.Context, dial func(ctx context.Context, network, addr string) (net.Conn, error), addr string, d time.Duration) *Flow {
	f := &Flow{done: make(chan struct{})}
	counting := func(ctx context.Context, network, address string) (net.Conn, error) {
		c, err := dial(ctx, network, address)
		if err != nil {
			return nil, err
		}
		uc, ok := c.(*net.UDPConn)
		if !ok {
			_ = c.Close()
			return nil, fmt.Errorf("media socket to %s is a %T, want a UDP socket", address, c)
		}
		return countingConn{UDPConn: uc, rtp: &f.echoed}, nil
	}
	go func() {
		defer close(f.done)
		ctx, cancel := context.WithTimeout(ctx, d+30*time.Second)
		defer cancel()
		f.rep, f.err = dtlssrtp.Probe(ctx, addr, dtlssrtp.WithDialer(counting),
			dtlssrtp.WithCount(int(d.Seconds()*FlowRate)), dtlssrtp.WithRate(FlowRate), dtlssrtp.WithDrain(500*time.Millisecond))
	}()
	return f
}

// Echoed is how many echoes came back so far.
func (f *Flow) Echoed() int64 { return f.echoed.Load() }

// Done is closed when the flow has ended.
func (f *Flow) Done() <-chan struct{} { return f.done }

// Result waits for the flow to end and returns its report.
func (f *Flow) Result() (*dtlssrtp.Report, error) {
	<-f.done
	return f.rep, f.err
}

// countingConn counts the RTP datagrams the probe reads, told from DTLS and RTCP as the probe
// tells them (RFC 7983, RFC 5761). The UDP socket stays embedded so the probe can still size its
// buffers.
type countingConn struct {
	*net.UDPConn
	rtp *atomic.Int64
}

func (c countingConn) Read(b []byte) (int, error) {
	n, err := c.UDPConn.Read(b)
	if n >= 2 && b[0] >= 128 && b[0] <= 191 && (b[1] < 192 || b[1] > 223) {
		c.rtp.Add(1)
	}
	return n, err
}
