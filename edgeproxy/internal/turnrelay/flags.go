package turnrelay

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"time"

	"github.com/livegate/livegate/edgeproxy/internal/portalloc"
	"github.com/livegate/livegate/pkg/commalist"
)

// Defaults that documentation and tests refer to.
const (
	DefaultPort       = 3478
	DefaultTLSPort    = 5349
	DefaultRelayPorts = "40000-49999"
	DefaultTTL        = 24 * time.Hour
)

// Flags are the relay's command-line flags.
type Flags struct {
	on                     bool
	listen                 string
	port, tlsPort          int
	secretFile, relayPorts string
	realm, uris            string
	ttl                    time.Duration
}

// Register declares the flags on fs.
func (f *Flags) Register(fs *flag.FlagSet) {
	fs.BoolVar(&f.on, "turn", false, "serve TURN (UDP and TCP on --turn-port, TLS on --turn-tls-port) for the sessions this edge serves; docs/turn.md")
	fs.StringVar(&f.listen, "turn-listen", "0.0.0.0", "IPv4 address the TURN listeners and relay sockets bind")
	fs.IntVar(&f.port, "turn-port", DefaultPort, "TURN port over UDP and TCP")
	fs.IntVar(&f.tlsPort, "turn-tls-port", DefaultTLSPort, "TURN over TLS port, with the signaling certificate (443 where the host allows; 0: no TLS)")
	fs.StringVar(&f.secretFile, "turn-secret-file", "", "file of TURN REST API shared secrets, one a line: the first issues credentials, all are accepted; reread on change and SIGHUP")
	fs.StringVar(&f.relayPorts, "turn-relay-ports", DefaultRelayPorts, "UDP port range of relay allocations; must not overlap --media-ports")
	fs.StringVar(&f.realm, "turn-realm", "livegate", "TURN realm")
	fs.DurationVar(&f.ttl, "turn-credential-ttl", DefaultTTL, "lifetime of a published TURN credential; renewed at half of it")
	fs.StringVar(&f.uris, "turn-uris", "", "comma-separated TURN URIs published with endpoints (default: turn: and turns: URIs of --public-host and the TURN ports)")
}

// Config is the relay configuration the flags describe for an edge reached at publicHost and
// publicIP, with the media port range and the TLS certificate; nil without --turn. source names
// where a flag's value came from ("flag --turn-port", "environment ..."), for its refusal.
func (f *Flags) Config(publicHost string, publicIP netip.Addr, media portalloc.Range, certFile, keyFile string, source func(flag string) string) (*Config, error) {
	if !f.on {
		return nil, nil
	}
	var errs []error
	refuse := func(flag, format string, a ...any) {
		errs = append(errs, fmt.Errorf("%s: %w", source(flag), fmt.Errorf(format, a...)))
	}
	listen, err := netip.ParseAddr(f.listen)
	if err != nil {
		refuse("turn-listen", "value %q: want an IPv4 address", f.listen)
	}
	relay, err := portalloc.ParseRange(f.relayPorts)
	if err != nil {
		refuse("turn-relay-ports", "%v", err)
	}
	if f.port < 1 {
		refuse("turn-port", "value %d: want a port", f.port)
	}
	if f.tlsPort < 0 {
		refuse("turn-tls-port", "value %d: want a port or 0", f.tlsPort)
	}
	c := Config{
		Listen: listen, PublicIP: publicIP, Port: f.port, TLSPort: f.tlsPort, Realm: f.realm,
		RelayPorts: relay, MediaPorts: media, SecretFile: f.secretFile, CredentialTTL: f.ttl,
		URIs: commalist.Split(f.uris), SecretPoll: time.Second,
	}
	if f.tlsPort > 0 {
		c.CertFile, c.KeyFile = certFile, keyFile
		if c.CertFile == "" {
			refuse("turn-tls-port", "value %d needs the edge's certificate (--tls-cert and --tls-key, or --tls-self-signed); 0 turns TLS off", f.tlsPort)
		}
	}
	if len(c.URIs) == 0 {
		hp := func(p int) string { return net.JoinHostPort(publicHost, strconv.Itoa(p)) }
		c.URIs = []string{"turn:" + hp(f.port) + "?transport=udp", "turn:" + hp(f.port) + "?transport=tcp"}
		if f.tlsPort > 0 {
			c.URIs = append(c.URIs, "turns:"+hp(f.tlsPort)+"?transport=tcp")
		}
	}
	if len(errs) == 0 {
		if err := c.Validate(); err != nil {
			refuse("turn", "%v", err)
		}
	}
	return &c, errors.Join(errs...)
}
