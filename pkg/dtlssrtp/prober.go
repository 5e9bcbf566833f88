package dtlssrtp

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/pion/dtls/v3"
	"github.com/pion/rtcp"
	"github.com/pion/rtp"
	"github.com/rs/zerolog"

	"github.com/livegate/livegate/pkg/logging/pionlog"
)

// ErrNoAnswer means the DTLS handshake got no answer within the probe's timeout.
var ErrNoAnswer = errors.New("no DTLS answer")

// ErrRefused means the probed host answered with ICMP port unreachable: nothing listens there.
var ErrRefused = errors.New("connection refused (ICMP port unreachable): nothing listens on that UDP port")

// Dialer opens a connected UDP socket, as (*net.Dialer).DialContext does.
type Dialer func(ctx context.Context, network, address string) (net.Conn, error)

type probeConfig struct {
	count       int
	rate        float64
	timeout     time.Duration
	drain       time.Duration
	payloadSize int
	cert        *tls.Certificate
	packetConn  net.PacketConn
	dial        Dialer
	log         zerolog.Logger
}

// ProbeOption configures Probe.
type ProbeOption func(*probeConfig)

// WithCount sets how many RTP packets to send (default 100).
func WithCount(n int) ProbeOption { return func(c *probeConfig) { c.count = n } }

// WithRate sets the send rate in packets per second (default 50).
func WithRate(pps float64) ProbeOption { return func(c *probeConfig) { c.rate = pps } }

// WithTimeout bounds the DTLS handshake (default 5s): the part that hangs when nothing answers.
func WithTimeout(d time.Duration) ProbeOption { return func(c *probeConfig) { c.timeout = d } }

// WithDrain sets how long to wait for outstanding echoes after the last packet is sent (default
// 1s); the wait ends early once every echo is in.
func WithDrain(d time.Duration) ProbeOption { return func(c *probeConfig) { c.drain = d } }

// WithPayloadSize sets the RTP payload size in bytes (default 160, at least 16, at most 1200).
func WithPayloadSize(n int) ProbeOption { return func(c *probeConfig) { c.payloadSize = n } }

// WithCertificate sets the prober's DTLS certificate; by default a fresh self-signed one is made.
func WithCertificate(cert tls.Certificate) ProbeOption {
	return func(c *probeConfig) { c.cert = &cert }
}

// WithPacketConn probes over pc (for instance a socket bound to a chosen source address) instead
// of a fresh socket; Probe does not close it, and reads from it only while it runs.
func WithPacketConn(pc net.PacketConn) ProbeOption {
	return func(c *probeConfig) { c.packetConn = pc }
}

// WithDialer opens the probe's socket with dial instead of net.Dialer.
func WithDialer(dial Dialer) ProbeOption { return func(c *probeConfig) { c.dial = dial } }

// WithProbeLogger receives pion's DTLS logs (at debug and trace level); by default they are dropped.
func WithProbeLogger(log zerolog.Logger) ProbeOption { return func(c *probeConfig) { c.log = log } }

func (c *probeConfig) validate() error {
	switch {
	case c.count < 1 || c.count > 1_000_000:
		return fmt.Errorf("count %d: want 1 to 1000000 packets", c.count)
	case !(c.rate > 0 && c.rate <= 100_000):
		return fmt.Errorf("rate %g: want more than 0 and at most 100000 packets per second", c.rate)
	case c.timeout <= 0:
		return fmt.Errorf("timeout %s must be positive", c.timeout)
	case c.drain < 0:
		return fmt.Errorf("drain %s must not be negative", c.drain)
	case c.payloadSize < payloadMinSize || c.payloadSize > 1200:
		return fmt.Errorf("payload size %d: want %d to 1200 bytes", c.payloadSize, payloadMinSize)
	case c.packetConn != nil && c.dial != nil:
		return fmt.Errorf("a packet conn and a dialer are mutually exclusive")
	}
	return nil
}

// Probe handshakes DTLS-SRTP with the responder at addr ("host:port"), sends the configured number
// of RTP packets at the configured rate, collects the echoes and RTCP sender reports, then ends
// the association (RTCP BYE and DTLS close_notify). It returns an error only when the probe could
// not run (no handshake, a socket error, ctx done); loss, however high, is in the Report.
func Probe(ctx context.Context, addr string, opts ...ProbeOption) (*Report, error) {
	cfg := probeConfig{
		count:       100,
		rate:        50,
		timeout:     5 * time.Second,
		drain:       time.Second,
		payloadSize: 160,
		log:         zerolog.Nop(),
	}
	for _, o := range opts {
		o(&cfg)
	}
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("probe %s: %w", addr, err)
	}
	if cfg.cert == nil {
		cert, err := NewCertificate()
		if err != nil {
			return nil, fmt.Errorf("probe %s: %w", addr, err)
		}
		cfg.cert = &cert
	}
	t, err := openTransport(ctx, addr, &cfg)
	if err != nil {
		return nil, fmt.Errorf("probe %s: %w", addr, err)
	}
	p := &prober{
		cfg:      cfg,
		t:        t,
		start:    time.Now(),
		rec:      newRecorder(cfg.count),
		complete: make(chan struct{}),
		readDone: make(chan struct{}),
	}
	rep, err := p.run(ctx)
	if err != nil {
		return nil, fmt.Errorf("media %s: %w", addr, err)
	}
	rep.Addr = addr
	return rep, nil
}

// transport is the probe's UDP socket seen as one peer.
type transport struct {
	local, remote net.Addr
	read          func([]byte) (int, error)
	write         func([]byte) (int, error)
	// stop unblocks read for good; reset, when set, runs once the reader has returned.
	stop, reset func()
}

func openTransport(ctx context.Context, addr string, cfg *probeConfig) (*transport, error) {
	if pc := cfg.packetConn; pc != nil {
		remote, err := net.ResolveUDPAddr("udp", addr)
		if err != nil {
			return nil, fmt.Errorf("resolve %s: %w", addr, err)
		}
		return &transport{
			local:  pc.LocalAddr(),
			remote: remote,
			read: func(b []byte) (int, error) {
				for {
					n, from, err := pc.ReadFrom(b)
					if err != nil {
						return 0, err
					}
					if sameAddr(from, remote) {
						return n, nil
					}
				}
			},
			write: func(b []byte) (int, error) { return pc.WriteTo(b, remote) },
			stop:  func() { _ = pc.SetReadDeadline(time.Unix(1, 0)) },
			reset: func() { _ = pc.SetReadDeadline(time.Time{}) },
		}, nil
	}
	dial := cfg.dial
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	// A connected socket is what lets the kernel report ICMP port unreachable as ECONNREFUSED.
	c, err := dial(ctx, "udp", addr)
	if err != nil {
		return nil, fmt.Errorf("dial udp %s: %w", addr, err)
	}
	setBuffers(c)
	return &transport{
		local:  c.LocalAddr(),
		remote: c.RemoteAddr(),
		read:   c.Read,
		write:  c.Write,
		stop:   func() { _ = c.Close() },
	}, nil
}

func sameAddr(a, b net.Addr) bool {
	ua, ok1 := a.(*net.UDPAddr)
	ub, ok2 := b.(*net.UDPAddr)
	if ok1 && ok2 {
		return ua.AddrPort().Addr().Unmap() == ub.AddrPort().Addr().Unmap() && ua.Port == ub.Port
	}
	return a.String() == b.String()
}

type prober struct {
	cfg   probeConfig
	t     *transport
	dc    *dtlsConn
	start time.Time

	// refused is set by the reader when ICMP says nothing listens; it aborts the handshake.
	refused context.CancelCauseFunc

	mu       sync.Mutex
	keys     *srtpKeys
	rec      *recorder
	complete chan struct{}
	closing  bool
	readErr  error
	readDone chan struct{}
}

func (p *prober) run(ctx context.Context) (*Report, error) {
	p.dc = newDTLSConn(p.t.local, p.t.remote, p.t.write)
	hsCtx, cancelTimeout := context.WithTimeoutCause(ctx, p.cfg.timeout,
		fmt.Errorf("%w within %s: is a DTLS-SRTP responder listening there, and the route programmed?", ErrNoAnswer, p.cfg.timeout))
	defer cancelTimeout()
	hsCtx, p.refused = context.WithCancelCause(hsCtx)
	defer p.refused(nil)
	go p.readLoop()
	defer p.shutdown()

	conn, err := dtls.ClientWithOptions(p.dc, p.t.remote,
		dtls.WithCertificates(*p.cfg.cert),
		dtls.WithSRTPProtectionProfiles(profiles...),
		dtls.WithExtendedMasterSecret(dtls.RequireExtendedMasterSecret),
		// The responder's certificate is self-signed; WebRTC pins it by the SDP fingerprint, which
		// a probe does not have, so the report shows the fingerprint for a person to compare.
		dtls.WithInsecureSkipVerify(true),
		dtls.WithLoggerFactory(pionlog.Factory(p.cfg.log, pionLevels)),
	)
	if err != nil {
		return nil, fmt.Errorf("dtls client setup: %w", err)
	}
	defer func() { _ = conn.Close() }()
	if err := conn.HandshakeContext(hsCtx); err != nil {
		if cause := context.Cause(hsCtx); cause != nil && ctx.Err() == nil {
			return nil, fmt.Errorf("dtls handshake: %w", cause)
		}
		return nil, fmt.Errorf("dtls handshake: %w", err)
	}
	rep := &Report{Handshake: time.Since(p.start)}
	keys, err := keysFromDTLS(conn, true)
	if err != nil {
		return nil, err
	}
	rep.Profile = keys.profile
	if keys.peerCert != nil {
		rep.PeerFingerprint = Fingerprint(keys.peerCert)
	}
	p.mu.Lock()
	p.keys = keys
	p.mu.Unlock()

	ssrc := rand.Uint32()
	sent, err := p.send(ctx, keys, ssrc)
	if err != nil {
		return nil, err
	}
	drain := time.NewTimer(p.cfg.drain)
	select {
	case <-p.complete:
	case <-drain.C:
	case <-ctx.Done():
	}
	drain.Stop()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	p.sendBye(keys, ssrc)
	_ = conn.Close()
	p.shutdown()

	p.mu.Lock()
	defer p.mu.Unlock()
	if p.readErr != nil {
		return nil, fmt.Errorf("read: %w", p.readErr)
	}
	p.rec.fill(rep, sent)
	rep.Elapsed = time.Since(p.start)
	return rep, nil
}

// send paces packets on an absolute schedule, so a late wake-up is caught up rather than
// stretching the whole run.
func (p *prober) send(ctx context.Context, keys *srtpKeys, ssrc uint32) (int, error) {
	interval := time.Duration(float64(time.Second) / p.cfg.rate)
	seq := uint16(rand.Uint32())
	tsBase := rand.Uint32()
	payload := make([]byte, p.cfg.payloadSize)
	var enc []byte
	timer := time.NewTimer(0)
	defer timer.Stop()
	<-timer.C
	begin := time.Now()
	for i := 0; i < p.cfg.count; i++ {
		if wait := time.Until(begin.Add(time.Duration(i) * interval)); wait > 0 {
			timer.Reset(wait)
			select {
			case <-timer.C:
			case <-ctx.Done():
				return i, ctx.Err()
			}
		}
		sentAt := time.Since(p.start)
		putPayload(payload, uint32(i), sentAt)
		pkt := rtp.Packet{
			Header: rtp.Header{
				Version:        2,
				PayloadType:    96,
				SequenceNumber: seq + uint16(i),
				Timestamp:      tsBase + rtpUnits(sentAt),
				SSRC:           ssrc,
			},
			Payload: payload,
		}
		raw, err := pkt.Marshal()
		if err != nil {
			return i, fmt.Errorf("marshal rtp: %w", err)
		}
		if enc, err = keys.local.EncryptRTP(enc[:0], raw, nil); err != nil {
			return i, fmt.Errorf("encrypt rtp: %w", err)
		}
		// A refused write is an ICMP error from an earlier packet: the packet counts as sent and
		// its loss shows in the report.
		if _, err := p.t.write(enc); err != nil && !errors.Is(err, syscall.ECONNREFUSED) {
			return i, fmt.Errorf("send rtp: %w", err)
		}
	}
	return p.cfg.count, nil
}

func (p *prober) sendBye(keys *srtpKeys, ssrc uint32) {
	raw, err := rtcp.Marshal([]rtcp.Packet{
		&rtcp.ReceiverReport{SSRC: ssrc},
		&rtcp.Goodbye{Sources: []uint32{ssrc}, Reason: "probe done"},
	})
	if err != nil {
		return
	}
	enc, err := keys.local.EncryptRTCP(nil, raw, nil)
	if err != nil {
		return
	}
	_, _ = p.t.write(enc)
}

// shutdown stops the reader and waits for it; it is safe to call more than once.
func (p *prober) shutdown() {
	p.mu.Lock()
	already := p.closing
	p.closing = true
	p.mu.Unlock()
	if already {
		return
	}
	p.t.stop()
	<-p.readDone
	if p.t.reset != nil {
		p.t.reset()
	}
	_ = p.dc.Close()
}

func (p *prober) readLoop() {
	defer close(p.readDone)
	buf := make([]byte, 64*1024)
	for {
		n, err := p.t.read(buf)
		arrival := time.Since(p.start)
		if err != nil {
			p.mu.Lock()
			closing, handshaken := p.closing, p.keys != nil
			p.mu.Unlock()
			switch {
			case closing:
				return
			case errors.Is(err, syscall.ECONNREFUSED):
				if !handshaken {
					p.refused(ErrRefused)
				}
				continue
			}
			p.mu.Lock()
			p.readErr = err
			p.mu.Unlock()
			p.refused(err)
			return
		}
		b := buf[:n]
		switch classify(b) {
		case kindDTLS:
			p.dc.push(b)
		case kindRTP:
			p.onRTP(b, arrival)
		case kindRTCP:
			p.onRTCP(b)
		}
	}
}

func (p *prober) onRTP(b []byte, arrival time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.keys == nil {
		return
	}
	plain, err := p.keys.remote.DecryptRTP(nil, b, nil)
	if err != nil {
		return
	}
	var pkt rtp.Packet
	if err := pkt.Unmarshal(plain); err != nil {
		return
	}
	index, sentAt, err := parsePayload(pkt.Payload)
	if err != nil {
		return
	}
	before := p.rec.received()
	p.rec.echo(index, sentAt, arrival, pkt.Timestamp)
	if before < p.rec.count && p.rec.received() == p.rec.count {
		close(p.complete)
	}
}

func (p *prober) onRTCP(b []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.keys == nil {
		return
	}
	plain, err := p.keys.remote.DecryptRTCP(nil, b, nil)
	if err != nil {
		return
	}
	pkts, err := rtcp.Unmarshal(plain)
	if err != nil {
		return
	}
	for _, pk := range pkts {
		if _, ok := pk.(*rtcp.SenderReport); ok {
			p.rec.senderReports++
		}
	}
}
