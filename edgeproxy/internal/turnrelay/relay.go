// Package turnrelay is the edge's TURN relay, built on pion/turn: UDP and TCP on one port, TLS on
// another, short-lived per-session credentials of the TURN REST API scheme (coturn's
// use-auth-secret), and a relay that reaches only the media of the session whose credentials
// made the allocation: the session's public ports on this edge and its media backends.
//
// pion/turn's permission hook sees only the peer's IP, and every session on an edge shares the
// edge's public IP, so the relay inspects CreatePermission and ChannelBind requests itself before
// pion/turn handles them, answering 403 to a peer outside the session's media, and checks every
// datagram an allocation sends or receives against the same set.
package turnrelay

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/livegate/livegate/edgeproxy/internal/portalloc"
	"github.com/livegate/livegate/pkg/logging/pionlog"
	livegatev1 "github.com/livegate/livegate/proto/livegate/v1"
	"github.com/pion/turn/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// pionLevels send pion/turn's own warnings and errors to the edge's logger as warnings, the rest
// at trace level, where they are off unless asked for.
var pionLevels = pionlog.Levels{
	Trace: zerolog.TraceLevel, Debug: zerolog.TraceLevel, Info: zerolog.TraceLevel, Warn: zerolog.WarnLevel, Error: zerolog.WarnLevel,
}

// Config is the relay's configuration.
type Config struct {
	// Listen is the IPv4 address the listeners bind; PublicIP the edge's public address, which
	// allocations are advertised at and which the sessions' public media ports are on.
	Listen   netip.Addr
	PublicIP netip.Addr
	// Port serves TURN over UDP and TCP; TLSPort over TLS. 0 picks a free port.
	Port, TLSPort int
	// CertFile and KeyFile are the TLS certificate (one PEM file holding both may be given as
	// both); TLS is served only with them.
	CertFile, KeyFile string
	Realm             string
	// RelayPorts are the UDP ports allocations get; they must not overlap MediaPorts.
	RelayPorts, MediaPorts portalloc.Range
	SecretFile             string
	// CredentialTTL is how long a published credential is valid; it is renewed at half of it.
	CredentialTTL time.Duration
	// URIs are published with each endpoint.
	URIs []string
	// SecretPoll is how often the secret file is read for a change.
	SecretPoll time.Duration
}

// Validate reports a configuration the relay cannot run with.
func (c Config) Validate() error {
	var errs []error
	if !c.Listen.Is4() {
		errs = append(errs, fmt.Errorf("listen address %q: want an IPv4 address", c.Listen))
	}
	if !c.PublicIP.Is4() {
		errs = append(errs, errors.New("the relay needs the edge's public IPv4 address (--public-ip)"))
	}
	if c.Port < 0 || c.Port > 65535 || c.TLSPort < 0 || c.TLSPort > 65535 || (c.TLSPort == c.Port && c.Port != 0) {
		errs = append(errs, fmt.Errorf("ports %d and %d: want two different ports", c.Port, c.TLSPort))
	}
	if (c.CertFile == "") != (c.KeyFile == "") {
		errs = append(errs, errors.New("TURN over TLS needs both the certificate and its key"))
	}
	if c.RelayPorts.Validate() != nil {
		errs = append(errs, errors.New("relay port range is empty"))
	} else if c.RelayPorts.First <= c.MediaPorts.Last && c.MediaPorts.First <= c.RelayPorts.Last {
		errs = append(errs, fmt.Errorf("relay ports %s overlap the media ports %s", c.RelayPorts, c.MediaPorts))
	}
	for _, p := range []int{c.Port, c.TLSPort} {
		if p > 0 && (c.RelayPorts.Contains(uint16(p)) || c.MediaPorts.Contains(uint16(p))) {
			errs = append(errs, fmt.Errorf("listening port %d is inside the relay or media port range", p))
		}
	}
	if c.Realm == "" {
		errs = append(errs, errors.New("realm is empty"))
	}
	if c.SecretFile == "" {
		errs = append(errs, errors.New("a secret file is needed (--turn-secret-file)"))
	}
	if c.CredentialTTL < time.Minute {
		errs = append(errs, errors.New("credential lifetime must be at least 1m"))
	}
	if len(c.URIs) == 0 {
		errs = append(errs, errors.New("no TURN URI to publish"))
	}
	for _, u := range c.URIs {
		if !strings.HasPrefix(u, "turn:") && !strings.HasPrefix(u, "turns:") {
			errs = append(errs, fmt.Errorf("TURN URI %q: want turn:HOST:PORT or turns:HOST:PORT", u))
		}
	}
	if c.SecretPoll <= 0 {
		errs = append(errs, errors.New("secret poll period must be positive"))
	}
	return errors.Join(errs...)
}

// listenerBuffer and relayBuffer are the socket receive buffers asked for (the kernel caps them
// at net.core.rmem_max): the UDP listener carries every client's media, a relay socket one
// session's media towards its client, keyframes in bursts.
const (
	listenerBuffer = 4 << 20
	relayBuffer    = 1 << 20
)

func (c Config) tls() bool { return c.CertFile != "" }

// Media is what a served session may relay to: its public UDP ports on this edge and its media
// backends.
type Media struct {
	Ports    []uint16
	Backends []netip.AddrPort
}

// Relay is the TURN server.
type Relay struct {
	cfg    Config
	log    zerolog.Logger
	refLog zerolog.Logger
	m      *metrics
	now    func() time.Time
	sec    secrets
	cert   atomic.Pointer[tls.Certificate]
	// sessions maps each served session to the addresses it may reach; it is replaced whole.
	sessions atomic.Pointer[map[string]map[netip.AddrPort]struct{}]
	onChange func()

	udp   net.PacketConn
	tcp   net.Listener
	tlsLn net.Listener
	// udpGuard reads the UDP listener for pion/turn (see guardedPacketConn).
	udpGuard *guardedPacketConn

	mu sync.Mutex
	// allocs are the relay sockets by local port; clients the allocations by their client's
	// five-tuple (see tuple).
	allocs  map[int]*relayConn
	clients map[string]*relayConn
	// oldKeys holds, per username and client address, the key of a request that verified under a
	// secret other than the current one: pion/turn takes one key per username, so the relay tells
	// it which (see inspect and auth).
	oldKeys map[string]oldKey
}

type oldKey struct {
	key     []byte
	expires time.Time
}

// New checks cfg, reads the secret file and the certificate, and binds the listeners; Run serves.
// onChange, when set, is called after the secrets changed: published credentials need renewing.
func New(cfg Config, reg prometheus.Registerer, log zerolog.Logger, onChange func()) (*Relay, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("turn: %w", err)
	}
	r := &Relay{
		cfg: cfg, log: log, now: time.Now, onChange: onChange,
		refLog: log.Sample(&zerolog.BurstSampler{Burst: 20, Period: time.Second}),
		allocs: map[int]*relayConn{}, clients: map[string]*relayConn{}, oldKeys: map[string]oldKey{},
	}
	empty := map[string]map[netip.AddrPort]struct{}{}
	r.sessions.Store(&empty)
	if _, err := r.sec.load(cfg.SecretFile); err != nil {
		return nil, err
	}
	if cfg.tls() {
		if err := r.loadCert(); err != nil {
			return nil, err
		}
	}
	r.m = newMetrics(reg, r.allocationCount)
	if err := r.listen(); err != nil {
		r.closeListeners()
		return nil, err
	}
	return r, nil
}

func (r *Relay) listen() error {
	addr := func(port int) string { return netip.AddrPortFrom(r.cfg.Listen, uint16(port)).String() }
	// With port 0 TCP takes the port UDP got, so that one port serves both; that port may be
	// taken for TCP, so a few are tried.
	for try := 0; ; try++ {
		udp, err := net.ListenPacket("udp4", addr(r.cfg.Port))
		if err != nil {
			return fmt.Errorf("turn udp listener: %w", err)
		}
		tcp, err := net.Listen("tcp4", addr(udp.LocalAddr().(*net.UDPAddr).Port))
		if err == nil {
			// Every UDP client's media arrives on this one socket, read by one goroutine: a
			// default-sized buffer overflows whenever that goroutine waits for a core.
			_ = udp.(*net.UDPConn).SetReadBuffer(listenerBuffer)
			r.udp, r.tcp = udp, tcp
			break
		}
		_ = udp.Close()
		if r.cfg.Port != 0 || try == 10 {
			return fmt.Errorf("turn tcp listener: %w", err)
		}
	}
	if r.cfg.tls() {
		ln, err := net.Listen("tcp4", addr(r.cfg.TLSPort))
		if err != nil {
			return fmt.Errorf("turn tls listener: %w", err)
		}
		r.tlsLn = tls.NewListener(ln, &tls.Config{
			MinVersion:     tls.VersionTLS12,
			GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return r.cert.Load(), nil },
		})
	}
	return nil
}

func (r *Relay) closeListeners() {
	if r.udp != nil {
		_ = r.udp.Close()
	}
	if r.tcp != nil {
		_ = r.tcp.Close()
	}
	if r.tlsLn != nil {
		_ = r.tlsLn.Close()
	}
}

func (r *Relay) loadCert() error {
	c, err := tls.LoadX509KeyPair(r.cfg.CertFile, r.cfg.KeyFile)
	if err != nil {
		return fmt.Errorf("turn tls certificate: %w", err)
	}
	r.cert.Store(&c)
	return nil
}

// Addrs are the bound UDP, TCP and TLS addresses (the TLS one invalid without TLS).
func (r *Relay) Addrs() (udp, tcp, tlsAddr netip.AddrPort) {
	udp = r.udp.LocalAddr().(*net.UDPAddr).AddrPort()
	tcp = r.tcp.Addr().(*net.TCPAddr).AddrPort()
	if r.tlsLn != nil {
		tlsAddr = r.tlsLn.Addr().(*net.TCPAddr).AddrPort()
	}
	return udp, tcp, tlsAddr
}

// Run serves until ctx ends. It rereads the secret file when it changes and on SIGHUP, which
// also reloads the certificate.
func (r *Relay) Run(ctx context.Context) error {
	gen := &generator{r: r}
	r.udpGuard = newGuardedPacketConn(r.udp, r)
	listeners := []turn.ListenerConfig{{Listener: guardedListener{Listener: r.tcp, r: r}, RelayAddressGenerator: gen}}
	if r.tlsLn != nil {
		listeners = append(listeners, turn.ListenerConfig{Listener: guardedListener{Listener: r.tlsLn, r: r}, RelayAddressGenerator: gen})
	}
	srv, err := turn.NewServer(turn.ServerConfig{
		Realm:             r.cfg.Realm,
		AuthHandler:       r.auth,
		LoggerFactory:     pionlog.Factory(r.log, pionLevels),
		PacketConnConfigs: []turn.PacketConnConfig{{PacketConn: r.udpGuard, RelayAddressGenerator: gen}},
		ListenerConfigs:   listeners,
		EventHandler: turn.EventHandler{
			OnAuth:              r.onAuth,
			OnAllocationCreated: r.onAllocationCreated,
			OnAllocationDeleted: r.onAllocationDeleted,
		},
	})
	if err != nil {
		r.closeListeners()
		return fmt.Errorf("turn server: %w", err)
	}
	udp, tcp, tlsAddr := r.Addrs()
	ev := r.log.Info().Str("udp", udp.String()).Str("tcp", tcp.String()).Str("relay_ports", r.cfg.RelayPorts.String()).
		Int("secrets", len(r.sec.all())).Strs("uris", r.cfg.URIs)
	if tlsAddr.IsValid() {
		ev = ev.Str("tls", tlsAddr.String())
	}
	ev.Msg("turn relay serving")

	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	poll := time.NewTicker(r.cfg.SecretPoll)
	defer poll.Stop()
	for {
		select {
		case <-ctx.Done():
			err := srv.Close()
			r.closeAll()
			if err != nil {
				return fmt.Errorf("turn server close: %w", err)
			}
			return nil
		case <-hup:
			r.reload(true)
		case <-poll.C:
			r.reload(false)
			r.sweep()
		}
	}
}

// reload rereads the secret file, and with cert the certificate. A bad file keeps what is held.
func (r *Relay) reload(cert bool) {
	changed, err := r.sec.load(r.cfg.SecretFile)
	if err != nil {
		r.log.Warn().Err(err).Msg("turn secrets not reloaded; the secrets held stay in use")
	} else if changed {
		r.log.Info().Int("secrets", len(r.sec.all())).Msg("turn secrets reloaded")
		if r.onChange != nil {
			r.onChange()
		}
	}
	if cert && r.cfg.tls() {
		if err := r.loadCert(); err != nil {
			r.log.Warn().Err(err).Msg("turn certificate not reloaded; the certificate held stays in use")
		} else {
			r.log.Info().Msg("turn certificate reloaded")
		}
	}
}

// sweep forgets the old-secret keys of expired usernames.
func (r *Relay) sweep() {
	now := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	for k, v := range r.oldKeys {
		if !now.Before(v.expires) {
			delete(r.oldKeys, k)
		}
	}
}

// Credentials is what session's endpoint publishes of the relay at now.
func (r *Relay) Credentials(session string, now time.Time) *livegatev1.TurnRelay {
	c := Issue(r.sec.current(), session, now.Add(r.cfg.CredentialTTL))
	return &livegatev1.TurnRelay{Uris: slices.Clone(r.cfg.URIs), Username: c.Username, Credential: c.Password, ExpiresAt: timestamppb.New(c.Expires)}
}

// Current reports whether published is still what session's endpoint should carry at now (same
// URIs, issued under the current secret, more than half its lifetime left), and when it is due
// for renewal.
func (r *Relay) Current(session string, published *livegatev1.TurnRelay, now time.Time) (bool, time.Time) {
	if published == nil || !slices.Equal(published.GetUris(), r.cfg.URIs) {
		return false, time.Time{}
	}
	exp, s, err := ParseUsername(published.GetUsername())
	if err != nil || s != session || !published.GetExpiresAt().AsTime().Equal(exp) ||
		published.GetCredential() != Password(r.sec.current(), published.GetUsername()) {
		return false, time.Time{}
	}
	renew := exp.Add(-r.cfg.CredentialTTL / 2)
	return now.Before(renew), renew
}

// Serve sets the sessions this edge serves and their media; the allocations of a session no
// longer served are closed at once.
func (r *Relay) Serve(sessions map[string]Media) {
	next := make(map[string]map[netip.AddrPort]struct{}, len(sessions))
	for s, m := range sessions {
		set := next[s]
		if set == nil {
			set = make(map[netip.AddrPort]struct{}, len(m.Ports)+len(m.Backends))
			next[s] = set
		}
		for _, p := range m.Ports {
			set[netip.AddrPortFrom(r.cfg.PublicIP, p)] = struct{}{}
		}
		for _, b := range m.Backends {
			set[netip.AddrPortFrom(b.Addr().Unmap(), b.Port())] = struct{}{}
		}
	}
	r.sessions.Store(&next)
	r.mu.Lock()
	var ended []*relayConn
	for _, c := range r.allocs {
		if s := c.session.Load(); s != nil {
			if _, ok := next[*s]; !ok {
				ended = append(ended, c)
			}
		}
	}
	r.mu.Unlock()
	for _, c := range ended {
		r.log.Info().Str("session_id", *c.session.Load()).Str("relay", c.LocalAddr().String()).Msg("turn allocation closed: session no longer served")
		_ = c.Close()
	}
}

func (r *Relay) served(session string) bool {
	_, ok := (*r.sessions.Load())[session]
	return ok
}

// permits reports whether session may exchange datagrams with addr.
func (r *Relay) permits(session string, addr net.Addr) bool {
	ua, ok := addr.(*net.UDPAddr)
	if !ok {
		return false
	}
	ap := ua.AddrPort()
	_, ok = (*r.sessions.Load())[session][netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())]
	return ok
}

// auth is pion/turn's AuthHandler: the key of username's requests, or a refusal.
func (r *Relay) auth(username, realm string, src net.Addr) ([]byte, bool) {
	session, refused := Check(username, r.now(), r.served)
	if refused != "" {
		r.refuse(refused, session, src, "authentication refused")
		return nil, false
	}
	r.mu.Lock()
	old, ok := r.oldKeys[username+"\x00"+src.String()]
	r.mu.Unlock()
	if ok {
		return old.key, true
	}
	return Key(r.sec.current(), username, realm), true
}

func (r *Relay) onAuth(src, _ net.Addr, _, username, _, method string, verdict bool) {
	if !verdict {
		_, session, _ := ParseUsername(username)
		r.refuse(RefusedIntegrity, session, src, "authentication refused: message integrity ("+method+")")
	}
}

// refuse counts and logs a refusal; logs are sampled, since refusals can come in floods.
func (r *Relay) refuse(reason, session string, src net.Addr, msg string) {
	r.m.refusals.WithLabelValues(reason).Inc()
	ev := r.refLog.Info().Str("reason", reason).Str("client", src.String())
	if session != "" {
		ev = ev.Str("session_id", session)
	}
	ev.Msg(msg)
}

// tuple names an allocation by its client's address and the server address it reached.
func tuple(src, dst net.Addr) string { return src.Network() + " " + src.String() + " " + dst.String() }

func (r *Relay) onAllocationCreated(src, dst net.Addr, _, username, _ string, relay net.Addr, _ int) {
	_, session, err := ParseUsername(username)
	ua, ok := relay.(*net.UDPAddr)
	if err != nil || !ok {
		return
	}
	r.mu.Lock()
	c := r.allocs[ua.Port]
	if c != nil {
		c.session.Store(&session)
		r.clients[tuple(src, dst)] = c
		// pion/turn makes a UDP client's allocation on the listener's goroutine, the one that
		// will write to it.
		if src.Network() == "udp" {
			c.batch = r.udpGuard
		}
	}
	r.mu.Unlock()
	if c == nil {
		return
	}
	r.m.allocations.Inc()
	r.log.Info().Str("session_id", session).Str("client", src.String()).Str("transport", transport(src, dst, r)).
		Str("relay", relay.String()).Msg("turn allocation created")
	if !r.served(session) {
		// The session ended between the authentication and now: Serve did not see this socket.
		_ = c.Close()
	}
}

func (r *Relay) onAllocationDeleted(src, dst net.Addr, _, username, _ string) {
	r.mu.Lock()
	_, ok := r.clients[tuple(src, dst)]
	delete(r.clients, tuple(src, dst))
	r.mu.Unlock()
	if ok {
		_, session, _ := ParseUsername(username)
		r.log.Info().Str("session_id", session).Str("client", src.String()).Msg("turn allocation deleted")
	}
}

func transport(src, dst net.Addr, r *Relay) string {
	if src.Network() == "udp" {
		return "udp"
	}
	if ta, ok := dst.(*net.TCPAddr); ok && r.tlsLn != nil && ta.Port == r.tlsLn.Addr().(*net.TCPAddr).Port {
		return "tls"
	}
	return "tcp"
}

func (r *Relay) allocationCount() float64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return float64(len(r.clients))
}

// closeAll closes the relay sockets left when the server stops.
func (r *Relay) closeAll() {
	r.mu.Lock()
	conns := make([]*relayConn, 0, len(r.allocs))
	for _, c := range r.allocs {
		conns = append(conns, c)
	}
	r.mu.Unlock()
	for _, c := range conns {
		_ = c.Close()
	}
}
