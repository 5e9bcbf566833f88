// Package cli is livegate-edgeproxy's command line, the one home of its subcommands (run,
// check-config, haproxy-config, cleanup, probe, status, token): the flags the edge's commands
// share, the typed settings they turn into, and each command; cmd/livegate-edgeproxy only plugs in
// the drivers.
package cli

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/livegate/livegate/edgeproxy/internal/haproxy"
	"github.com/livegate/livegate/edgeproxy/internal/portalloc"
	"github.com/livegate/livegate/edgeproxy/internal/reconcile"
	"github.com/livegate/livegate/edgeproxy/internal/routes"
	"github.com/livegate/livegate/edgeproxy/internal/turnrelay"
	"github.com/livegate/livegate/pkg/buildinfo"
	"github.com/livegate/livegate/pkg/events"
	"github.com/livegate/livegate/pkg/logging"
	"github.com/livegate/livegate/pkg/natsconn"
	settingsload "github.com/livegate/livegate/pkg/settings"
	"github.com/nats-io/nats.go"
)

// Defaults that documentation and tests refer to.
const (
	DefaultSignalingPort = 48322
	DefaultAdminAddr     = "127.0.0.1:9470"
	DefaultStateDir      = "/var/lib/livegate"
	DefaultHAProxy       = "/usr/sbin/haproxy"
	DefaultBackendCIDRs  = "10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,100.64.0.0/10,fc00::/7"
	DefaultBackendPorts  = "30000-32767"
	DefaultMediaPorts    = "10500-20000"
	DefaultEmbeddedNATS  = "127.0.0.1:4222"
	// DefaultMemoryLimitMiB is the Go runtime's soft memory limit: with 9,500 routes the live
	// heap is about 20 MiB, and without a limit the heap grows to twice that between collections.
	// At 40 the edge holds 9,500 routes in about 54 MiB RSS (62 at 48) with the same cold start
	// (docs/benchmarks.md). It is not applied with --nats-embedded, whose server shares the heap.
	DefaultMemoryLimitMiB = 40
)

// embeddedFlag is --nats-embedded[=ADDR]: a boolean flag that also takes an address.
type embeddedFlag struct{ addr string }

func (f *embeddedFlag) String() string { return f.addr }

// Set reads a boolean as every other boolean flag does (1, t, true, 0, f, false ...), else an
// address.
func (f *embeddedFlag) Set(s string) error {
	if s == "" {
		f.addr = ""
		return nil
	}
	if on, err := strconv.ParseBool(s); err == nil {
		f.addr = ""
		if on {
			f.addr = DefaultEmbeddedNATS
		}
		return nil
	}
	if _, err := netip.ParseAddrPort(s); err != nil {
		return fmt.Errorf("want true, false or ADDR:PORT, e.g. %s", DefaultEmbeddedNATS)
	}
	f.addr = s
	return nil
}

func (f *embeddedFlag) IsBoolFlag() bool { return true }

// limitFlag is --memory-limit-mib. It records whether any source set it, because the default
// is measured for the edge alone and is left off when an embedded NATS server shares the heap.
type limitFlag struct {
	mib int
	set bool
}

func (f *limitFlag) String() string { return strconv.Itoa(f.mib) }

func (f *limitFlag) Set(s string) error {
	n, err := strconv.Atoi(s)
	if err != nil {
		return errors.New("want a whole number of MiB")
	}
	f.mib, f.set = n, true
	return nil
}

// Driver names the HAProxy driver that changes the map: DriverRuntime, the edge's own over the
// runtime socket, or one of Hooks.Drivers.
type Driver string

// DriverRuntime is the driver over HAProxy's runtime API socket.
const DriverRuntime Driver = "runtime"

// External is a driver of Hooks.Drivers: whatever it talks to owns HAProxy and its files.
func (d Driver) External() bool { return d != DriverRuntime }

// flags are the raw command-line values.
type flags struct {
	edgeID, pool, publicHost                 string
	signalingPort                            int
	signalingBind                            string
	tlsCert, tlsKey                          string
	tlsSelfSigned                            bool
	stateDir                                 string
	haproxyBinary, haproxySocket, haproxyMap string
	haproxyStopOnExit                        bool
	tunnelTimeout, hardStopAfter             time.Duration
	missLimit                                int
	driver                                   Driver
	backendCIDRs, backendPorts               string
	maxRoutes, maxMedia                      int
	resync, heartbeat, edgeTTL               time.Duration
	claimDelayStep, claimDelayMax            time.Duration
	claimFallback                            time.Duration
	portReservePercent                       int
	mediaMode, mediaPorts, publicIP          string
	portQuarantine                           time.Duration
	snat                                     bool
	nats                                     natsconn.Flags
	natsEmbedded                             embeddedFlag
	natsStoreDir                             string
	adminAddr, logLevel, logFormat           string
	memoryLimit                              limitFlag
	token                                    tokenFlags
	turn                                     turnrelay.Flags
	// loader reads the command's flag set; src says, once it has, where each value came from.
	loader *settingsload.Loader
	src    settingsload.Sources
}

// refuse is the refusal of setting name's value, after where it came from.
func (f *flags) refuse(name, format string, a ...any) error {
	return f.src.Errorf(name, format, a...)
}

func hostname() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "edge"
	}
	return h
}

// tokenFrom turns a host name into a valid edge id: dots and other characters a NATS subject
// token or KV key cannot hold become '-'.
func tokenFrom(s string) string {
	var b strings.Builder
	for _, c := range s {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_':
			b.WriteRune(c)
		default:
			b.WriteByte('-')
		}
	}
	out := b.String()
	if len(out) > 128 {
		out = out[:128]
	}
	return out
}

// newFlagSet is the flag set of a command that reads every setting of run (run, check-config,
// haproxy-config): extra adds the drivers' flags, and the command's own; own names those of them
// that only the command line sets.
func newFlagSet(name string, stderr io.Writer, extra []func(*flag.FlagSet), own ...string) (*flag.FlagSet, *flags) {
	fs := flag.NewFlagSet("livegate-edgeproxy "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	f := defineSettings(fs)
	for _, x := range extra {
		x(fs)
	}
	f.loader = commandLoader(fs, nil, own...)
	fs.Usage = f.loader.Usage(fs, fs.Name()+" [flags]", "")
	return fs, f
}

// defineSettings defines run's settings on fs.
func defineSettings(fs *flag.FlagSet) *flags {
	f := &flags{}
	fs.StringVar(&f.edgeID, "edge-id", "", "this edge's id in livegate_routes, livegate_endpoints and livegate_edges (default: the host name, dots as '-')")
	fs.StringVar(&f.pool, "pool", "default", "the pool this edge serves routes of")
	fs.StringVar(&f.publicHost, "public-host", "", "host name browsers reach this edge by, published in livegate_endpoints (default: the host name)")
	fs.IntVar(&f.signalingPort, "signaling-port", DefaultSignalingPort, "TLS port of the signaling frontend")
	fs.StringVar(&f.signalingBind, "signaling-bind", "0.0.0.0", "address the signaling frontend binds (\"::\" for IPv6 and IPv4)")
	fs.StringVar(&f.tlsCert, "tls-cert", "", "PEM certificate chain of the signaling frontend")
	fs.StringVar(&f.tlsKey, "tls-key", "", "PEM private key of --tls-cert")
	fs.BoolVar(&f.tlsSelfSigned, "tls-self-signed", false, "generate a self-signed certificate for --public-host, --public-ip (when set) and localhost in --state-dir (demos)")
	fs.StringVar(&f.stateDir, "state-dir", DefaultStateDir, "directory for the map file, HAProxy configuration, runtime socket, certificate and embedded NATS data")
	fs.StringVar(&f.haproxyBinary, "haproxy-binary", DefaultHAProxy, "HAProxy binary the edge supervises (ignored with --haproxy-socket)")
	fs.StringVar(&f.haproxySocket, "haproxy-socket", "", "runtime API socket of an HAProxy the operator runs (attached mode); unix path or tcp:HOST:PORT")
	fs.StringVar(&f.haproxyMap, "haproxy-map", "", "session map file as the HAProxy configuration names it (default <state-dir>/sessions.map)")
	fs.BoolVar(&f.haproxyStopOnExit, "haproxy-stop-on-exit", false, "stop the supervised HAProxy when the edge exits (default: leave it serving for the next edge process to adopt)")
	fs.DurationVar(&f.tunnelTimeout, "tunnel-timeout", 8*time.Hour, "how long an idle websocket stays open (HAProxy timeout tunnel)")
	fs.DurationVar(&f.hardStopAfter, "hard-stop-after", time.Hour, "how long old HAProxy workers keep their websockets after a reload")
	fs.IntVar(&f.missLimit, "miss-limit", 20, "requests for unknown sessions one address may make per 10s before it gets 429")
	fs.StringVar((*string)(&f.driver), "driver", string(DriverRuntime), "how the HAProxy map is changed: runtime (its stats socket) or dataplaneapi (a Data Plane API v2 server); --haproxy-driver is another name for it")
	fs.StringVar((*string)(&f.driver), "haproxy-driver", string(DriverRuntime), "another name for --driver; set one of the two")
	fs.StringVar(&f.backendCIDRs, "backend-cidrs", DefaultBackendCIDRs, "comma-separated CIDRs signaling and media backends must be inside")
	fs.StringVar(&f.backendPorts, "backend-ports", DefaultBackendPorts, "port range signaling and media backends must be inside")
	fs.IntVar(&f.maxRoutes, "max-routes", 10000, "most routes this edge serves; it claims no more pool routes beyond")
	fs.IntVar(&f.maxMedia, "max-media-backends", routes.DefaultMaxMedia, "most media backends (public UDP ports) one route may name; a route with more, or with a backend twice, is refused")
	fs.DurationVar(&f.resync, "resync", 30*time.Second, "period of the full read-back of HAProxy's map and repair of drift")
	fs.DurationVar(&f.heartbeat, "heartbeat", 5*time.Second, "period of this edge's heartbeat in livegate_edges")
	fs.DurationVar(&f.edgeTTL, "edge-ttl", 15*time.Second, "lifetime of a heartbeat: an edge silent this long loses its pool routes")
	fs.DurationVar(&f.claimDelayStep, "claim-delay-step", 5*time.Millisecond, "pool claim delay per route this edge serves (least-loaded edge wins)")
	fs.DurationVar(&f.claimDelayMax, "claim-delay-max", time.Second, "cap of the pool claim delay")
	fs.DurationVar(&f.claimFallback, "claim-fallback", time.Second, "how long an edge waits, per edge of its pool with more room, before it claims a new pool route the other has not")
	fs.IntVar(&f.portReservePercent, "port-reserve-percent", 2, "share of the public UDP port range kept free: with this many free ports or fewer the edge claims no new pool route (0: claim to the last port)")
	fs.StringVar(&f.mediaMode, "media", "on", "media plane: on (kernel DNAT of public UDP ports) or off (signaling only)")
	fs.StringVar(&f.mediaPorts, "media-ports", DefaultMediaPorts, "public UDP port range for media")
	fs.StringVar(&f.publicIP, "public-ip", "", "IPv4 address media arrives at on this host (the DNAT match; published in each endpoint for ICE candidates)")
	fs.DurationVar(&f.portQuarantine, "port-quarantine", 60*time.Second, "how long a released public port rests before reuse")
	fs.BoolVar(&f.snat, "snat", true, "SNAT forwarded media so replies come back through the edge")
	f.nats.Register(fs, nats.DefaultURL, "")
	fs.Var(&f.natsEmbedded, "nats-embedded", "run NATS with JetStream in-process on ADDR (default "+DefaultEmbeddedNATS+"); --nats-url is then ignored")
	f.nats.RegisterReplicas(fs, "edge")
	fs.StringVar(&f.natsStoreDir, "nats-store-dir", "", "JetStream directory of the embedded NATS (default <state-dir>/nats)")
	registerAdminAddr(fs, &f.adminAddr)
	registerLog(fs, &f.logLevel, &f.logFormat)
	f.memoryLimit.mib = DefaultMemoryLimitMiB
	fs.Var(&f.memoryLimit, "memory-limit-mib", "soft limit of the Go runtime's memory in `MiB`: near it the garbage collector runs more often instead of the heap growing; 0 keeps the runtime's default; with --nats-embedded the default is left off (the server shares the heap) and only a value from a flag, variable or file applies; GOMEMLIMIT, when set, wins")
	f.token.register(fs)
	f.turn.Register(fs)
	registerConfig(fs)
	return f
}

// registerAdminAddr defines --admin-addr, which run listens on and drain calls.
func registerAdminAddr(fs *flag.FlagSet, p *string) {
	fs.StringVar(p, "admin-addr", DefaultAdminAddr, "address of GET /healthz, /readyz, /metrics, /v1/routes and POST/DELETE /v1/drain (keep it on loopback or a protected network)")
}

// registerLog defines --log-level and --log-format, as the agent's.
func registerLog(fs *flag.FlagSet, level, format *string) {
	fs.StringVar(level, "log-level", "info", "trace, debug, info, warn or error")
	fs.StringVar(format, "log-format", "auto", "auto, json or console")
}

// registerConfig defines --config.
func registerConfig(fs *flag.FlagSet) {
	fs.String(configFlag, "", "TOML file of settings, keyed by flag name (nats-url = \"nats://...\"); flags and environment variables override it")
}

// parse reads args, then fills what they left unset from the environment and the --config file.
func (f *flags) parse(fs *flag.FlagSet, args []string) error {
	src, err := load(fs, f.loader, args)
	f.src = src
	return err
}

// load reads args, then fills what they left unset from the environment and the --config file,
// by l's rules. A refusal is written to fs's output, one line per error (for the command line
// with a pointer to -h, not the whole usage); -h writes the usage.
func load(fs *flag.FlagSet, l *settingsload.Loader, args []string) (settingsload.Sources, error) {
	src, err := l.Load(fs, args, os.Environ())
	switch {
	case errors.Is(err, flag.ErrHelp):
		return nil, err
	case err != nil:
		settingsload.Report(fs.Output(), fs.Name(), err)
		return nil, err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	for name, def := range hostDefaults {
		if !set[name] && fs.Lookup(name) != nil {
			if err := fs.Set(name, def(hostname())); err != nil {
				return nil, fmt.Errorf("--%s: %w", name, err)
			}
		}
	}
	return src, nil
}

// hostDefaults are the flags whose default is this host's name. They are filled in once no
// source set them, so that -h describes the default instead of printing one machine's name
// beside the description; a value set empty on purpose stays empty (and is refused).
var hostDefaults = map[string]func(host string) string{
	"edge-id":     tokenFrom,
	"public-host": func(host string) string { return host },
}

// settings are the validated flags: every command reads these typed fields, never the flags.
type settings struct {
	// f is kept for the session token keys, which are read again when they change.
	f          *flags
	reconcile  reconcile.Config
	haproxy    haproxy.Config
	driver     Driver
	attached   bool
	configFile string
	pidFile    string
	selfCert   bool
	stateDir   string
	// haproxyBinary, haproxySocket (attached mode's, as given) and haproxyStopOnExit are the
	// supervised or attached HAProxy's.
	haproxyBinary     string
	haproxySocket     string
	haproxyStopOnExit bool
	tlsCert, tlsKey   string
	mediaOn           bool
	mediaPorts        portalloc.Range
	publicIP          netip.Addr
	portQuarantine    time.Duration
	snat              bool
	nats              natsconn.Config
	natsReplicas      int
	// natsEmbedded is the address of the in-process NATS server; invalid without one.
	natsEmbedded netip.AddrPort
	natsStoreDir string
	adminAddr    string
	log          logging.Options
	// memoryLimitMiB is the soft memory limit to set; 0 sets none.
	memoryLimitMiB int
	// turn is the TURN relay's configuration; nil without --turn.
	turn *turnrelay.Config
}

// settings checks the flags and turns them into typed settings. Every refusal names where the
// value at fault came from (flag --x, environment LIVEGATE_EDGEPROXY_X, config PATH: x), one a
// line, all at once.
func (f *flags) settings(drivers map[string]DriverFactory) (*settings, error) {
	var errs []error
	refuse := func(name, format string, a ...any) { errs = append(errs, f.refuse(name, format, a...)) }
	s := &settings{
		f: f, driver: f.driver, attached: f.haproxySocket != "", stateDir: f.stateDir,
		haproxyBinary: f.haproxyBinary, haproxySocket: f.haproxySocket, haproxyStopOnExit: f.haproxyStopOnExit,
		tlsCert: f.tlsCert, tlsKey: f.tlsKey, mediaOn: f.mediaMode == "on", portQuarantine: f.portQuarantine, snat: f.snat,
		natsReplicas: f.nats.Replicas, natsStoreDir: f.natsStoreDir, adminAddr: f.adminAddr,
		log: logging.Options{Level: f.logLevel, Format: f.logFormat},
	}
	if f.natsEmbedded.addr != "" {
		s.natsEmbedded = netip.MustParseAddrPort(f.natsEmbedded.addr)
		if s.natsStoreDir == "" {
			s.natsStoreDir = filepath.Join(f.stateDir, "nats")
		}
	}
	if !filepath.IsAbs(f.stateDir) {
		refuse("state-dir", "value %q: must be an absolute path", f.stateDir)
	}
	s.configFile = filepath.Join(f.stateDir, "haproxy.cfg")
	s.pidFile = filepath.Join(f.stateDir, "haproxy.pid")
	switch {
	case drivers[string(f.driver)].New != nil && f.driver.External() && (f.tlsCert == "" || f.tlsSelfSigned):
		refuse("driver", "%s sets up the frontend on the operator's HAProxy: it needs --tls-cert, the PEM (chain and key) as that host names it", f.driver)
	case f.tlsSelfSigned && (f.tlsCert != "" || f.tlsKey != ""):
		refuse("tls-self-signed", "--tls-self-signed and --tls-cert/--tls-key exclude each other")
	case f.tlsSelfSigned:
		s.selfCert = true
	case (f.tlsCert == "" || f.tlsKey == "") && !s.attached && !f.driver.External():
		errs = append(errs, errors.New("the signaling frontend needs --tls-cert and --tls-key, or --tls-self-signed"))
	}
	hc, err := f.haproxyConfig()
	if err != nil {
		errs = append(errs, err)
	}
	s.haproxy = hc
	if _, ok := drivers[string(f.driver)]; !ok && f.driver.External() {
		refuse("driver", "value %q: not available (runtime%s)", f.driver, driverNames(drivers))
	}
	cidrs, err := routes.ParsePrefixes(f.backendCIDRs)
	if err != nil {
		refuse("backend-cidrs", "%v", err)
	}
	ports, err := portalloc.ParseRange(f.backendPorts)
	if err != nil {
		refuse("backend-ports", "%v", err)
	}
	if s.mediaPorts, err = portalloc.ParseRange(f.mediaPorts); err != nil {
		refuse("media-ports", "%v", err)
	}
	switch f.mediaMode {
	case "off":
	case "on":
		if s.publicIP, err = netip.ParseAddr(f.publicIP); err != nil || !s.publicIP.Is4() {
			refuse("public-ip", "value %q: the media plane needs this host's IPv4 address (or --media=off)", f.publicIP)
		}
	default:
		refuse("media", "value %q: want on or off", f.mediaMode)
	}
	if f.maxMedia < 1 {
		refuse("max-media-backends", "value %d: must be at least 1", f.maxMedia)
	}
	if s.turn, err = turnConfig(f, s); err != nil {
		errs = append(errs, err)
	}
	if f.portQuarantine < 0 {
		refuse("port-quarantine", "value %s: must not be negative", f.portQuarantine)
	}
	switch {
	case f.memoryLimit.mib < 0:
		refuse("memory-limit-mib", "value %d: must not be negative", f.memoryLimit.mib)
	case f.natsEmbedded.addr != "" && !f.memoryLimit.set:
		// The default is sized for the edge's own heap: with the NATS server's on top the
		// collector would run all the time. An explicit value is the operator's choice.
	default:
		s.memoryLimitMiB = f.memoryLimit.mib
	}
	if _, err := logging.New(logging.Options{Level: f.logLevel, Out: io.Discard}); err != nil {
		refuse("log-level", "%v", err)
	}
	if _, err := logging.New(logging.Options{Format: f.logFormat, Out: io.Discard}); err != nil {
		refuse("log-format", "%v", err)
	}
	// The route loop's settings, each checked here under its source; reconcile's own check
	// below is the backstop and finds nothing once these pass.
	n := len(errs)
	if err := events.ValidateToken("edge id", f.edgeID); err != nil {
		refuse("edge-id", "%v", err)
	}
	if err := events.ValidateToken("pool", f.pool); err != nil {
		refuse("pool", "%v", err)
	}
	if err := checkHost(f.publicHost); err != nil {
		refuse("public-host", "value %q: %v", f.publicHost, err)
	}
	if f.maxRoutes < 1 {
		refuse("max-routes", "value %d: must be at least 1", f.maxRoutes)
	}
	for name, d := range map[string]time.Duration{"resync": f.resync, "heartbeat": f.heartbeat} {
		if d <= 0 {
			refuse(name, "value %s: must be positive", d)
		}
	}
	if f.edgeTTL < time.Second || f.edgeTTL <= f.heartbeat {
		refuse("edge-ttl", "value %s: must be at least 1s and longer than --heartbeat (%s)", f.edgeTTL, f.heartbeat)
	}
	for name, d := range map[string]time.Duration{"claim-delay-step": f.claimDelayStep, "claim-delay-max": f.claimDelayMax, "claim-fallback": f.claimFallback} {
		if d < 0 {
			refuse(name, "value %s: must not be negative", d)
		}
	}
	if f.portReservePercent < 0 || f.portReservePercent > 50 {
		refuse("port-reserve-percent", "value %d: want 0 to 50", f.portReservePercent)
	}
	s.reconcile = reconcile.Config{
		EdgeID: f.edgeID, Pool: f.pool, PublicHost: f.publicHost, SignalingPort: uint16(min(max(f.signalingPort, 0), 65535)),
		Policy:    routes.Policy{BackendCIDRs: cidrs, BackendPorts: ports, MaxMedia: f.maxMedia},
		MaxRoutes: f.maxRoutes, Resync: f.resync, Heartbeat: f.heartbeat, EdgeTTL: f.edgeTTL,
		ClaimDelayStep: f.claimDelayStep, MaxClaimDelay: f.claimDelayMax, Version: buildinfo.Version,
		ClaimFallback: f.claimFallback, PortReserve: float64(min(max(f.portReservePercent, 0), 50)) / 100,
	}
	if s.publicIP.IsValid() {
		s.reconcile.PublicIP = s.publicIP.String()
	}
	if len(errs) == n {
		if err := s.reconcile.Validate(); err != nil {
			errs = append(errs, err)
		}
	}
	if _, _, err := net.SplitHostPort(f.adminAddr); err != nil {
		refuse("admin-addr", "value %q: %v", f.adminAddr, err)
	}
	s.nats = f.nats.Config("livegate-edgeproxy/" + f.edgeID)
	// A dead server is left in time for the heartbeat to go on through another.
	s.nats.StaleAfter = f.edgeTTL / 3
	for _, r := range f.nats.Check(true) {
		refuse(r.Flag, "%v", r.Err)
	}
	return s, errors.Join(errs...)
}

// haproxyConfig is the HAProxy configuration the flags describe. The edge joins --tls-cert and
// --tls-key into <state-dir>/tls.pem for the HAProxy it supervises; an operator's HAProxy loads
// --tls-cert itself (a PEM with the key, or the key beside it as <cert>.key). Each value is
// checked under its source; what HAProxy's own check says of the rest has no source of its own.
func (f *flags) haproxyConfig() (haproxy.Config, error) {
	var errs []error
	socket := f.haproxySocket
	socketFlag := "haproxy-socket"
	if socket == "" {
		socket, socketFlag = filepath.Join(f.stateDir, "haproxy.sock"), "state-dir"
	}
	socket = strings.TrimPrefix(socket, "tcp:")
	mapFile, mapFlag := f.haproxyMap, "haproxy-map"
	if mapFile == "" {
		mapFile, mapFlag = filepath.Join(f.stateDir, "sessions.map"), "state-dir"
	}
	cert, certFlag := filepath.Join(f.stateDir, "tls.pem"), "state-dir"
	if (f.haproxySocket != "" || f.driver.External()) && f.tlsCert != "" {
		cert, certFlag = f.tlsCert, "tls-cert"
	}
	c := haproxy.Config{
		Socket: socket, MapFile: mapFile, CertFile: cert, BindAddr: f.signalingBind, Port: f.signalingPort,
		TunnelTimeout: f.tunnelTimeout, HardStopAfter: f.hardStopAfter, MissLimit: f.missLimit,
	}
	tokens, err := f.tokens()
	errs = append(errs, err)
	c.Tokens = tokens
	// Each value alone in a configuration otherwise valid: HAProxy's check says what is wrong,
	// the source says where it came from.
	good := haproxy.Config{Socket: "/s", MapFile: "/m", CertFile: "/c", BindAddr: "0.0.0.0", Port: DefaultSignalingPort,
		TunnelTimeout: time.Second, HardStopAfter: time.Second, MissLimit: 1}
	for _, v := range []struct {
		flag string
		set  func(*haproxy.Config)
	}{
		{socketFlag, func(g *haproxy.Config) { g.Socket = c.Socket }},
		{mapFlag, func(g *haproxy.Config) { g.MapFile = c.MapFile }},
		{certFlag, func(g *haproxy.Config) { g.CertFile = c.CertFile }},
		{"signaling-bind", func(g *haproxy.Config) { g.BindAddr = c.BindAddr }},
		{"signaling-port", func(g *haproxy.Config) { g.Port = c.Port }},
		{"tunnel-timeout", func(g *haproxy.Config) { g.TunnelTimeout = c.TunnelTimeout }},
		{"hard-stop-after", func(g *haproxy.Config) { g.HardStopAfter = c.HardStopAfter }},
		{"miss-limit", func(g *haproxy.Config) { g.MissLimit = c.MissLimit }},
	} {
		g := good
		v.set(&g)
		if err := g.Validate(); err != nil {
			errs = append(errs, f.refuse(v.flag, "%v", err))
		}
	}
	if errors.Join(errs...) == nil {
		// The backstop, for what HAProxy's check adds to the above.
		errs = append(errs, c.Validate())
	}
	return c, errors.Join(errs...)
}

// checkHost accepts an IP address or a DNS name: the public host goes as it is into the wss://
// URL browsers are given and into the self-signed certificate, so a space, slash or line break
// in it would break or redirect every client.
func checkHost(h string) error {
	if ip, err := netip.ParseAddr(h); err == nil {
		if ip.Zone() != "" {
			return errors.New("an address with a zone is not reachable from the internet")
		}
		return nil
	}
	if h == "" || len(h) > 253 {
		return errors.New("want an IP address or a DNS name of 1 to 253 characters")
	}
	for label := range strings.SplitSeq(h, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("DNS label %q: want 1 to 63 letters, digits or inner hyphens", label)
		}
		for i := 0; i < len(label); i++ {
			if c := label[i]; !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return fmt.Errorf("DNS label %q: character %q is not a letter, digit or hyphen", label, c)
			}
		}
	}
	return nil
}

func driverNames(drivers map[string]DriverFactory) string {
	var b strings.Builder
	for name := range drivers {
		b.WriteString(", ")
		b.WriteString(name)
	}
	return b.String()
}
