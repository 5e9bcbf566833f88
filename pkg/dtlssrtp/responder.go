package dtlssrtp

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/dtls/v3"
	"github.com/pion/rtcp"
	"github.com/pion/rtp"
	"github.com/rs/zerolog"

	"github.com/livegate/livegate/pkg/logging/pionlog"
)

type responderConfig struct {
	cert             *tls.Certificate
	log              zerolog.Logger
	idleTimeout      time.Duration
	handshakeTimeout time.Duration
	reportInterval   time.Duration
	dropEvery        int
	maxSessions      int
}

// ResponderOption configures a Responder.
type ResponderOption func(*responderConfig)

// WithResponderCertificate sets the DTLS certificate; by default a fresh self-signed one is made.
func WithResponderCertificate(cert tls.Certificate) ResponderOption {
	return func(c *responderConfig) { c.cert = &cert }
}

// WithLogger sets the logger for association lifecycle lines; by default nothing is logged.
func WithLogger(log zerolog.Logger) ResponderOption {
	return func(c *responderConfig) { c.log = log }
}

// WithIdleTimeout closes an association that has received nothing for d (default 30s).
func WithIdleTimeout(d time.Duration) ResponderOption {
	return func(c *responderConfig) { c.idleTimeout = d }
}

// WithHandshakeTimeout bounds each DTLS handshake (default 10s).
func WithHandshakeTimeout(d time.Duration) ResponderOption {
	return func(c *responderConfig) { c.handshakeTimeout = d }
}

// WithSenderReportInterval sets how often each association sends an RTCP sender report
// (default 1s).
func WithSenderReportInterval(d time.Duration) ResponderOption {
	return func(c *responderConfig) { c.reportInterval = d }
}

// WithDropEvery makes the responder drop every nth RTP packet of each association instead of
// echoing it, so loss accounting can be checked against a known loss; 0 (the default) drops none.
func WithDropEvery(n int) ResponderOption {
	return func(c *responderConfig) { c.dropEvery = n }
}

// WithMaxSessions caps concurrent associations (default 1024); ClientHellos beyond it are ignored.
func WithMaxSessions(n int) ResponderOption {
	return func(c *responderConfig) { c.maxSessions = n }
}

// Responder is a DTLS-SRTP media endpoint on one UDP port: one DTLS association per remote
// address, each echoing the RTP it receives and sending RTCP sender reports.
type Responder struct {
	cfg      responderConfig
	conn     net.PacketConn
	dtlsOpts []dtls.ServerOption
	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	// closeOnce guards shutdown.
	closeOnce sync.Once

	mu      sync.Mutex
	assocs  map[string]*association
	closing bool
}

// NewResponder listens on the UDP address addr ("host:port"; port 0 picks a free one) and serves
// until Close is called or ctx is done.
func NewResponder(ctx context.Context, addr string, opts ...ResponderOption) (*Responder, error) {
	cfg := responderConfig{
		log:              zerolog.Nop(),
		idleTimeout:      30 * time.Second,
		handshakeTimeout: 10 * time.Second,
		reportInterval:   time.Second,
		maxSessions:      1024,
	}
	for _, o := range opts {
		o(&cfg)
	}
	switch {
	case cfg.idleTimeout <= 0:
		return nil, fmt.Errorf("responder: idle timeout %s must be positive", cfg.idleTimeout)
	case cfg.handshakeTimeout <= 0:
		return nil, fmt.Errorf("responder: handshake timeout %s must be positive", cfg.handshakeTimeout)
	case cfg.reportInterval <= 0:
		return nil, fmt.Errorf("responder: sender report interval %s must be positive", cfg.reportInterval)
	case cfg.dropEvery < 0:
		return nil, fmt.Errorf("responder: drop-every %d must not be negative", cfg.dropEvery)
	case cfg.maxSessions <= 0:
		return nil, fmt.Errorf("responder: max sessions %d must be positive", cfg.maxSessions)
	}
	if cfg.cert == nil {
		cert, err := NewCertificate()
		if err != nil {
			return nil, fmt.Errorf("responder: %w", err)
		}
		cfg.cert = &cert
	}
	var lc net.ListenConfig
	conn, err := lc.ListenPacket(ctx, "udp", addr)
	if err != nil {
		return nil, fmt.Errorf("responder: listen on udp %s: %w", addr, err)
	}
	setBuffers(conn)
	r := &Responder{
		cfg:  cfg,
		conn: conn,
		dtlsOpts: []dtls.ServerOption{
			dtls.WithCertificates(*cfg.cert),
			dtls.WithSRTPProtectionProfiles(profiles...),
			dtls.WithExtendedMasterSecret(dtls.RequireExtendedMasterSecret),
			// WebRTC peers always present a certificate; the fingerprint, not a chain, vouches for it.
			dtls.WithClientAuth(dtls.RequireAnyClientCert),
			dtls.WithLoggerFactory(pionlog.Factory(cfg.log, pionLevels)),
		},
		assocs: map[string]*association{},
	}
	r.ctx, r.cancel = context.WithCancel(ctx)
	r.wg.Add(2)
	go r.readLoop()
	go r.reapIdle()
	context.AfterFunc(ctx, r.shutdown)
	cfg.log.Info().Str("listen_addr", conn.LocalAddr().String()).
		Str("fingerprint", Fingerprint(cfg.cert.Certificate[0])).Msg("dtls-srtp responder listening")
	return r, nil
}

// Addr is the UDP address the responder listens on.
func (r *Responder) Addr() net.Addr { return r.conn.LocalAddr() }

// Fingerprint is the SHA-256 fingerprint of the responder's certificate.
func (r *Responder) Fingerprint() string { return Fingerprint(r.cfg.cert.Certificate[0]) }

// Sessions is the number of open associations, handshaking ones included.
func (r *Responder) Sessions() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.assocs)
}

// Close stops the responder and closes every association, sending DTLS close_notify to peers
// whose handshake finished.
func (r *Responder) Close() error {
	r.shutdown()
	r.wg.Wait()
	return nil
}

// shutdown runs once, on Close or when the constructor's ctx is done: associations first, while
// the socket can still carry their close_notify, then the socket.
func (r *Responder) shutdown() {
	r.closeOnce.Do(func() {
		r.mu.Lock()
		r.closing = true
		open := make([]*association, 0, len(r.assocs))
		for _, a := range r.assocs {
			open = append(open, a)
		}
		r.mu.Unlock()
		for _, a := range open {
			a.close("responder closed")
		}
		r.cancel()
		_ = r.conn.Close()
	})
}

func (r *Responder) readLoop() {
	defer r.wg.Done()
	buf := make([]byte, 64*1024)
	for {
		n, from, err := r.conn.ReadFrom(buf)
		if err != nil {
			if r.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			r.cfg.log.Debug().Err(err).Msg("read udp")
			continue
		}
		r.dispatch(buf[:n], from)
	}
}

func (r *Responder) dispatch(b []byte, from net.Addr) {
	k := classify(b)
	a := r.lookup(b, k, from)
	if a == nil {
		return
	}
	a.lastSeen.Store(time.Now().UnixNano())
	switch k {
	case kindDTLS:
		a.dc.push(b)
	case kindRTP:
		a.onRTP(b)
	case kindRTCP:
		a.onRTCP(b)
	}
}

// lookup finds the association of from, opening one for a ClientHello. A ClientHello from the
// address of an established association means the peer started over (a restarted client behind
// the same NAT mapping), so the old association gives way.
func (r *Responder) lookup(b []byte, k kind, from net.Addr) *association {
	hello := k == kindDTLS && isClientHello(b)
	key := from.String()
	r.mu.Lock()
	defer r.mu.Unlock()
	a := r.assocs[key]
	if a != nil && hello && a.established.Load() {
		delete(r.assocs, key)
		go a.close("peer started a new handshake")
		a = nil
	}
	if a != nil || !hello || r.closing {
		return a
	}
	if len(r.assocs) >= r.cfg.maxSessions {
		r.cfg.log.Warn().Str("remote_addr", key).Int("max_sessions", r.cfg.maxSessions).
			Msg("ignoring DTLS ClientHello: too many associations")
		return nil
	}
	a = r.newAssociation(from)
	r.assocs[key] = a
	go a.run()
	return a
}

func (r *Responder) remove(a *association) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.assocs[a.key] == a {
		delete(r.assocs, a.key)
	}
}

func (r *Responder) reapIdle() {
	defer r.wg.Done()
	t := time.NewTicker(max(r.cfg.idleTimeout/4, 10*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-r.ctx.Done():
			return
		case now := <-t.C:
			r.mu.Lock()
			var idle []*association
			for _, a := range r.assocs {
				if now.Sub(time.Unix(0, a.lastSeen.Load())) > r.cfg.idleTimeout {
					idle = append(idle, a)
				}
			}
			r.mu.Unlock()
			for _, a := range idle {
				go a.close("idle")
			}
		}
	}
}

// maxPending bounds the SRTP packets kept while the handshake's keys are being derived: the peer
// may finish its side of the handshake and start sending a moment before this side has its keys.
const maxPending = 32

// association is one peer's DTLS session and its SRTP state.
type association struct {
	r           *Responder
	key         string
	remote      net.Addr
	dc          *dtlsConn
	lastSeen    atomic.Int64
	established atomic.Bool
	closeOnce   sync.Once
	done        chan struct{}

	mu       sync.Mutex
	conn     *dtls.Conn
	closed   bool
	keys     *srtpKeys
	pending  [][]byte
	start    time.Time
	ssrc     uint32
	seq      uint16
	tsBase   uint32
	received uint64
	packets  uint32
	octets   uint32
	rtcpIn   int
	bad      int
	decBuf   []byte
	encBuf   []byte
}

func (r *Responder) newAssociation(remote net.Addr) *association {
	a := &association{
		r:      r,
		key:    remote.String(),
		remote: remote,
		done:   make(chan struct{}),
		start:  time.Now(),
		ssrc:   rand.Uint32(),
		seq:    uint16(rand.Uint32()),
		tsBase: rand.Uint32(),
	}
	a.dc = newDTLSConn(r.conn.LocalAddr(), remote, func(b []byte) (int, error) {
		return r.conn.WriteTo(b, remote)
	})
	a.lastSeen.Store(time.Now().UnixNano())
	return a
}

func (a *association) log() *zerolog.Logger {
	l := a.r.cfg.log.With().Str("remote_addr", a.key).Logger()
	return &l
}

// run handshakes, derives the SRTP keys, then reads the DTLS Conn until the peer closes it: DTLS
// carries no application data here, but reading is what surfaces the peer's close_notify.
func (a *association) run() {
	conn, err := dtls.ServerWithOptions(a.dc, a.remote, a.r.dtlsOpts...)
	if err != nil {
		a.log().Warn().Err(err).Msg("dtls server setup failed")
		a.close("dtls setup failed")
		return
	}
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		_ = conn.Close()
		return
	}
	a.conn = conn
	a.mu.Unlock()

	ctx, cancel := context.WithTimeout(a.r.ctx, a.r.cfg.handshakeTimeout)
	err = conn.HandshakeContext(ctx)
	cancel()
	if err != nil {
		a.log().Info().Err(err).Msg("dtls handshake failed")
		a.close("handshake failed")
		return
	}
	keys, err := keysFromDTLS(conn, false)
	if err != nil {
		a.log().Warn().Err(err).Msg("srtp keying failed")
		a.close("srtp keying failed")
		return
	}
	a.mu.Lock()
	a.keys = keys
	pending := a.pending
	a.pending = nil
	for _, p := range pending {
		a.echoLocked(p)
	}
	a.mu.Unlock()
	a.established.Store(true)
	a.log().Info().Str("srtp_profile", keys.profile).Msg("media association established")

	go a.sendReports()
	buf := make([]byte, 2048)
	for {
		if _, err := conn.Read(buf); err != nil {
			a.close("peer closed dtls")
			return
		}
	}
}

func (a *association) onRTP(b []byte) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.keys == nil {
		if len(a.pending) < maxPending {
			a.pending = append(a.pending, append([]byte(nil), b...))
		}
		return
	}
	a.echoLocked(b)
}

// echoLocked sends the payload of an SRTP packet back under the association's own SSRC, sequence
// and clock, as a media server's outgoing stream would carry it.
func (a *association) echoLocked(b []byte) {
	plain, err := a.keys.remote.DecryptRTP(a.decBuf[:0], b, nil)
	if err != nil {
		a.bad++
		return
	}
	a.decBuf = plain
	var in rtp.Packet
	if err := in.Unmarshal(plain); err != nil {
		a.bad++
		return
	}
	a.received++
	if a.r.cfg.dropEvery > 0 && a.received%uint64(a.r.cfg.dropEvery) == 0 {
		return
	}
	out := rtp.Packet{
		Header: rtp.Header{
			Version:        2,
			PayloadType:    in.PayloadType,
			SequenceNumber: a.seq,
			Timestamp:      a.tsBase + rtpUnits(time.Since(a.start)),
			SSRC:           a.ssrc,
		},
		Payload: in.Payload,
	}
	a.seq++
	raw, err := out.Marshal()
	if err != nil {
		a.bad++
		return
	}
	enc, err := a.keys.local.EncryptRTP(a.encBuf[:0], raw, nil)
	if err != nil {
		a.log().Warn().Err(err).Msg("srtp encrypt failed")
		return
	}
	a.encBuf = enc
	if _, err := a.r.conn.WriteTo(enc, a.remote); err != nil {
		a.log().Debug().Err(err).Msg("write echo")
		return
	}
	a.packets++
	a.octets += uint32(len(in.Payload))
}

func (a *association) onRTCP(b []byte) {
	a.mu.Lock()
	bye := false
	if a.keys != nil {
		plain, err := a.keys.remote.DecryptRTCP(nil, b, nil)
		if err != nil {
			a.bad++
		} else if pkts, err := rtcp.Unmarshal(plain); err == nil {
			a.rtcpIn++
			for _, p := range pkts {
				if _, ok := p.(*rtcp.Goodbye); ok {
					bye = true
				}
			}
		}
	}
	a.mu.Unlock()
	if bye {
		go a.close("peer sent rtcp bye")
	}
}

func (a *association) sendReports() {
	t := time.NewTicker(a.r.cfg.reportInterval)
	defer t.Stop()
	for {
		select {
		case <-a.done:
			return
		case now := <-t.C:
			if err := a.sendReport(now); err != nil {
				a.log().Debug().Err(err).Msg("send rtcp sender report")
			}
		}
	}
}

func (a *association) sendReport(now time.Time) error {
	a.mu.Lock()
	sr := &rtcp.SenderReport{
		SSRC:        a.ssrc,
		NTPTime:     ntpTime(now),
		RTPTime:     a.tsBase + rtpUnits(now.Sub(a.start)),
		PacketCount: a.packets,
		OctetCount:  a.octets,
	}
	raw, err := rtcp.Marshal([]rtcp.Packet{sr, rtcp.NewCNAMESourceDescription(a.ssrc, "livegate-dtlssrtp-responder")})
	if err != nil {
		a.mu.Unlock()
		return fmt.Errorf("marshal sender report: %w", err)
	}
	enc, err := a.keys.local.EncryptRTCP(nil, raw, nil)
	a.mu.Unlock()
	if err != nil {
		return fmt.Errorf("encrypt sender report: %w", err)
	}
	_, err = a.r.conn.WriteTo(enc, a.remote)
	return err
}

func (a *association) close(reason string) {
	a.closeOnce.Do(func() {
		a.r.remove(a)
		close(a.done)
		a.mu.Lock()
		a.closed = true
		conn := a.conn
		echoed, bad := a.packets, a.bad
		a.mu.Unlock()
		if conn != nil {
			_ = conn.Close()
		}
		_ = a.dc.Close()
		a.log().Info().Str("reason", reason).Uint32("packets_echoed", echoed).Int("packets_rejected", bad).
			Msg("media association closed")
	})
}

// ntpEpochOffset is the number of seconds from 1900 (NTP's epoch) to 1970 (Unix's).
const ntpEpochOffset = 2208988800

// ntpTime is t as a 64-bit NTP timestamp: seconds since 1900 in the high half, the fraction in
// the low half.
func ntpTime(t time.Time) uint64 {
	secs := uint64(t.Unix() + ntpEpochOffset)
	frac := uint64(t.Nanosecond()) << 32 / uint64(time.Second)
	return secs<<32 | frac
}

// socketBuffer is the receive and send buffer asked for: one UDP socket carries every association,
// and a reader starved for a moment on a busy host must not turn into loss. The kernel caps it at
// net.core.rmem_max/wmem_max.
const socketBuffer = 4 << 20

func setBuffers(c any) {
	if b, ok := c.(interface{ SetReadBuffer(int) error }); ok {
		_ = b.SetReadBuffer(socketBuffer)
	}
	if b, ok := c.(interface{ SetWriteBuffer(int) error }); ok {
		_ = b.SetWriteBuffer(socketBuffer)
	}
}
