// Package udpflow measures UDP forwarding: a paced sender and a counting sink, both using
// batched system calls (sendmmsg, recvmmsg) so the generator is not what limits the path, and a
// ramp that finds the highest rate a path carries within a loss budget.
package udpflow

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/net/ipv4"
)

const batch = 64

// Sink counts the packets of the current step that reach a socket.
type Sink struct {
	conn     *net.UDPConn
	step     atomic.Uint32
	received atomic.Int64
	done     chan struct{}
}

// NewSink reads from conn until Close. Packets start with a 4-byte step number; only the
// current step's are counted, so stragglers of a previous step never inflate a figure.
func NewSink(conn *net.UDPConn) *Sink {
	_ = conn.SetReadBuffer(8 << 20)
	s := &Sink{conn: conn, done: make(chan struct{})}
	go s.loop()
	return s
}

func (s *Sink) loop() {
	defer close(s.done)
	pc := ipv4.NewPacketConn(s.conn)
	msgs := make([]ipv4.Message, batch)
	for i := range msgs {
		msgs[i].Buffers = [][]byte{make([]byte, 2048)}
	}
	for {
		n, err := pc.ReadBatch(msgs, 0)
		if err != nil {
			return
		}
		cur := s.step.Load()
		var c int64
		for _, m := range msgs[:n] {
			if m.N >= 4 && binary.BigEndian.Uint32(m.Buffers[0][:4]) == cur {
				c++
			}
		}
		s.received.Add(c)
	}
}

// Begin starts counting a new step.
func (s *Sink) Begin(step uint32) {
	s.step.Store(step)
	s.received.Store(0)
}

// Received is the count of the current step so far.
func (s *Sink) Received() int64 { return s.received.Load() }

// Close stops the sink.
func (s *Sink) Close() error {
	err := s.conn.Close()
	<-s.done
	return err
}

// Path is one way through the network: what the sender writes to, and the header it puts in
// front of each payload (a TURN ChannelData header, or nothing).
type Path struct {
	Name   string
	Conn   *net.UDPConn // the sender's socket
	Dst    *net.UDPAddr
	Header func(payload int) []byte
	Sink   *Sink
}

// Step is one offered rate and what came out.
type Step struct {
	Offered  float64 // packets per second asked of the sender
	Sent     int64
	Received int64
	Elapsed  time.Duration
}

// Loss is the fraction of sent packets that never arrived.
func (s Step) Loss() float64 {
	if s.Sent == 0 {
		return 0
	}
	return float64(s.Sent-s.Received) / float64(s.Sent)
}

// Rate is the delivered packets per second.
func (s Step) Rate() float64 { return float64(s.Received) / s.Elapsed.Seconds() }

// SentRate is what the sender achieved.
func (s Step) SentRate() float64 { return float64(s.Sent) / s.Elapsed.Seconds() }

// Options shape a ramp.
type Options struct {
	Size     int           // payload bytes
	Start    float64       // first offered rate, packets per second
	Factor   float64       // next offered rate = previous × Factor
	Steps    int           // at most this many steps
	StepTime time.Duration // length of each step
	MaxLoss  float64       // a step above this loss ends the ramp
}

// Ladder raises the offered rate step by step and, at each rate, runs every path still in the
// race one after the other, so slow drifts in the machine's load touch all paths alike. A path
// leaves the race when its loss exceeds the budget; the ladder ends when no path still in it
// could send at the offered rate (every sender is saturated), so each path is offered the same
// rates. It returns each path's steps, index-aligned with paths.
func Ladder(ctx context.Context, paths []Path, o Options) ([][]Step, error) {
	out := make([][]Step, len(paths))
	active := make([]bool, len(paths))
	for i := range active {
		active[i] = true
	}
	rate := o.Start
	step := uint32(1)
	for range o.Steps {
		running, reached := false, false
		for i, p := range paths {
			if !active[i] {
				continue
			}
			running = true
			st, err := Run(ctx, p, step, rate, o.StepTime, o.Size)
			step++
			if err != nil {
				return out, err
			}
			out[i] = append(out[i], st)
			if st.Loss() > o.MaxLoss {
				active[i] = false
			} else if st.SentRate() >= 0.9*rate {
				reached = true
			}
		}
		if !running || !reached {
			break
		}
		rate *= o.Factor
	}
	return out, nil
}

// Best is the step with the highest delivered rate within the loss budget; ok is false when
// none kept within it.
func Best(steps []Step, maxLoss float64) (Step, bool) {
	var best Step
	ok := false
	for _, s := range steps {
		if s.Loss() <= maxLoss && (!ok || s.Rate() > best.Rate()) {
			best, ok = s, true
		}
	}
	return best, ok
}

// Run sends at rate packets per second for d and counts what the sink received, after a short
// drain.
func Run(ctx context.Context, p Path, step uint32, rate float64, d time.Duration, size int) (Step, error) {
	p.Sink.Begin(step)
	var hdr []byte
	if p.Header != nil {
		hdr = p.Header(size)
	}
	payload := make([]byte, len(hdr)+size)
	copy(payload, hdr)
	binary.BigEndian.PutUint32(payload[len(hdr):], step)
	pc := ipv4.NewPacketConn(p.Conn)
	msgs := make([]ipv4.Message, batch)
	for i := range msgs {
		msgs[i] = ipv4.Message{Buffers: [][]byte{payload}, Addr: p.Dst}
	}
	var sent int64
	start := time.Now()
	for {
		elapsed := time.Since(start)
		if elapsed >= d {
			break
		}
		if ctx.Err() != nil {
			return Step{}, ctx.Err()
		}
		due := int64(rate*elapsed.Seconds()) + 1
		if due <= sent {
			time.Sleep(50 * time.Microsecond)
			continue
		}
		n := int(min(due-sent, batch))
		w, err := pc.WriteBatch(msgs[:n], 0)
		// A full queue drops on the sender's side; that is loss like any other.
		if err != nil && !errors.Is(err, syscall.ENOBUFS) && !errors.Is(err, syscall.EAGAIN) {
			return Step{}, fmt.Errorf("send on %s: %w", p.Name, err)
		}
		sent += int64(w)
	}
	elapsed := time.Since(start)
	time.Sleep(150 * time.Millisecond)
	return Step{Offered: rate, Sent: sent, Received: p.Sink.Received(), Elapsed: elapsed}, nil
}
