package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"sync"
	"time"

	"github.com/livegate/livegate/edgeproxy/internal/admin"
	"github.com/livegate/livegate/edgeproxy/internal/drainstate"
	"github.com/livegate/livegate/edgeproxy/internal/haproxy"
	"github.com/livegate/livegate/edgeproxy/internal/media"
	"github.com/livegate/livegate/edgeproxy/internal/portalloc"
	"github.com/livegate/livegate/edgeproxy/internal/reconcile"
	"github.com/livegate/livegate/edgeproxy/internal/tlscert"
	"github.com/livegate/livegate/pkg/events"
	"github.com/livegate/livegate/pkg/kvstore"
	"github.com/livegate/livegate/pkg/logging"
	"github.com/livegate/livegate/pkg/natsconn"
	"github.com/livegate/livegate/pkg/natsembed"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/rs/zerolog"
)

// Command is a subcommand: it parses args and returns the process exit code.
type Command func(ctx context.Context, args []string, stdout, stderr io.Writer) int

// MediaOptions are the media flags.
type MediaOptions struct {
	Ports        portalloc.Range
	PublicIP     netip.Addr
	Quarantine   time.Duration
	SNAT         bool
	BackendCIDRs []netip.Prefix
	BackendPorts portalloc.Range
}

// MediaFactory builds the kernel media plane of --media=on.
type MediaFactory func(ctx context.Context, o MediaOptions, log zerolog.Logger) (media.Plane, error)

// DriverFactory adds a HAProxy driver selected with --driver=<name>: Flags declares its own flags,
// New builds it once they are parsed, for the HAProxy configuration the flags describe. New must
// check its settings and contact nothing: check-config calls it to fail where run would. With such
// a driver the edge neither supervises HAProxy nor writes the map file: whatever the driver talks
// to owns them.
type DriverFactory struct {
	Flags func(*flag.FlagSet)
	New   func(ctx context.Context, c haproxy.Config, log zerolog.Logger) (haproxy.Driver, error)
}

// Hooks plug implementations that live in other packages into the commands.
type Hooks struct {
	KernelMedia MediaFactory
	Drivers     map[string]DriverFactory
}

func (h Hooks) driverFlags() []func(*flag.FlagSet) {
	var out []func(*flag.FlagSet)
	for _, d := range h.Drivers {
		if d.Flags != nil {
			out = append(out, d.Flags)
		}
	}
	return out
}

// parse parses args; it returns a nil settings and the exit code when the command must stop.
func (h Hooks) parse(name string, args []string, stderr io.Writer) (*settings, int) {
	fs, f := newFlagSet(name, stderr, h.driverFlags())
	if err := f.parse(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, 0
		}
		return nil, 2
	}
	s, err := f.settings(h.Drivers)
	if err != nil {
		fmt.Fprintf(stderr, "livegate-edgeproxy %s: invalid configuration:\n%v\n", name, err)
		return nil, 2
	}
	return s, -1
}

// RunCommand is `livegate-edgeproxy run`, the edge itself.
func RunCommand(h Hooks) Command {
	return func(ctx context.Context, args []string, stdout, stderr io.Writer) int {
		s, code := h.parse("run", args, stderr)
		if s == nil {
			return code
		}
		log, err := logging.New(logging.Options{Level: s.log.Level, Format: s.log.Format, Out: stderr})
		if err != nil {
			fmt.Fprintf(stderr, "livegate-edgeproxy run: %v\n", err)
			return 2
		}
		log = log.With().Str("edge_id", s.reconcile.EdgeID).Logger()
		for _, w := range readableSecrets(s) {
			log.Warn().Msg(w)
		}
		if err := run(ctx, s, h, log); err != nil {
			log.Error().Err(err).Msg("edge proxy stopped")
			return 1
		}
		return 0
	}
}

func run(ctx context.Context, s *settings, h Hooks, log zerolog.Logger) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if s.memoryLimitMiB > 0 && os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(int64(s.memoryLimitMiB) << 20)
	}
	if err := os.MkdirAll(s.stateDir, 0o750); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	natsCfg := s.nats
	if ap := s.natsEmbedded; ap.IsValid() {
		store := s.natsStoreDir
		srv, err := natsembed.Start(natsembed.Options{Host: ap.Addr().String(), Port: int(ap.Port()), StoreDir: store, ServerName: "livegate-" + s.reconcile.EdgeID})
		if err != nil {
			return err
		}
		defer srv.Shutdown()
		natsCfg.URLs = []string{srv.ClientURL()}
		log.Info().Str("url", srv.ClientURL()).Str("store_dir", store).Msg("embedded nats started")
	}
	nc, err := natsconn.Connect(ctx, natsCfg, log)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	var buckets *kvstore.Buckets
	if err := retry(ctx, log, "create kv buckets and event stream", func(ctx context.Context) error {
		replicas := kvstore.WithReplicas(s.natsReplicas)
		b, err := kvstore.Ensure(ctx, js, replicas)
		if err != nil {
			return err
		}
		buckets = b
		return events.EnsureStream(ctx, js, replicas)
	}); err != nil {
		return err
	}

	plane, err := mediaPlane(ctx, s, h, log)
	if err != nil {
		return err
	}
	// The kernel plane keeps netlink sockets and may be reading the kernel back behind the
	// changes; Close waits for that and closes them.
	if c, ok := plane.(interface{ Close() }); ok {
		defer c.Close()
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	registerProcessMetrics(reg, nc, plane)

	var driver haproxy.Driver
	var opts []reconcile.Option
	var client *haproxy.Client
	if d, ok := h.Drivers[string(s.driver)]; ok && s.driver.External() {
		if driver, err = d.New(ctx, s.haproxy, log.With().Str("component", "driver").Logger()); err != nil {
			return err
		}
	} else {
		client = haproxy.NewClient(socketAddr(s), 10*time.Second)
		rd, err := haproxy.NewRuntimeDriver(client, s.haproxy.MapFile)
		if err != nil {
			return err
		}
		driver = rd
		if s.attached {
			// The operator's HAProxy loads the map file at start; keep it current when it is here.
			if _, err := os.Stat(s.haproxy.MapFile); err == nil {
				opts = append(opts, reconcile.WithMapFile(s.haproxy.MapFile))
			} else {
				log.Warn().Str("map_file", s.haproxy.MapFile).Msg("map file not found here; the operator's HAProxy restarts with whatever its map file holds until the next resync")
			}
		} else {
			opts = append(opts, reconcile.WithMapFile(s.haproxy.MapFile))
		}
	}

	supervise := client != nil && !s.attached
	haproxyUp := make(chan struct{})
	if supervise {
		opts = append(opts, reconcile.WithStartGate(haproxyUp))
	}
	var r *reconcile.Reconciler
	relay, err := turnRelay(s, reg, func() { r.Resync() }, log)
	if err != nil {
		return err
	}
	drain, err := drainstate.Open(filepath.Join(s.f.stateDir, drainstate.FileName), time.Now)
	if err != nil {
		return err
	}
	if d := drain.Get(); d.Draining {
		log.Warn().Time("since", d.Since).Time("deadline", d.Deadline).Msg("draining, as before the restart: no new sessions (livegate-edgeproxy drain --cancel ends it)")
	}
	deps := reconcile.Deps{
		JS: js, Buckets: buckets, Driver: driver, Media: plane, Drain: drain.Get,
		Events:  events.NewPublisher(js, "livegate-edgeproxy/"+s.reconcile.EdgeID).WithLog(log.With().Str("component", "events").Logger()),
		Metrics: reconcile.NewMetrics(reg), Log: log.With().Str("component", "reconcile").Logger(),
	}
	if relay != nil {
		deps.Relay = relay
	}
	if r, err = reconcile.New(s.reconcile, deps, opts...); err != nil {
		return err
	}
	drain.OnChange(r.Resync)
	adm := admin.New(source{r}, reg, log.With().Str("component", "admin").Logger(), drain)
	tokenRestarted, tokenPoll := func() {}, func(context.Context) {}
	if client != nil && s.haproxy.Tokens.On() {
		c := newTokenCounter(client.TokenCounts)
		reg.MustRegister(c)
		tokenRestarted, tokenPoll = c.Restarted, c.Poll
	}
	var sup *haproxy.Supervisor
	if supervise {
		var once sync.Once
		onReady := func() {
			once.Do(func() { close(haproxyUp) })
			tokenRestarted()
			r.Resync()
		}
		if sup, err = supervised(s, client, onReady, log); err != nil {
			return err
		}
	}

	errc := make(chan error, 4)
	var wg sync.WaitGroup
	if sup != nil {
		wg.Go(func() { errc <- sup.Run(ctx) })
		if s.haproxy.Tokens.On() {
			w := newKeyWatcher(s, sup, tokenPoll, reg, log.With().Str("component", "session_tokens").Logger())
			wg.Go(func() { errc <- w.Run(ctx) })
		}
	}
	wg.Go(func() { errc <- r.Run(ctx) })
	wg.Go(func() { errc <- adm.Run(ctx, s.adminAddr) })
	if relay != nil {
		wg.Go(func() { errc <- relay.Run(ctx) })
	}
	banner(log, s, natsCfg.URLs).Msg("edge proxy running")
	var first error
	select {
	case <-ctx.Done():
		stopping := log.Info().Bool("haproxy_stops", supervise && s.haproxyStopOnExit)
		if supervise && s.haproxyStopOnExit {
			stopping.Msg("signal received: stopping, and HAProxy with the edge (--haproxy-stop-on-exit)")
		} else {
			stopping.Msg("signal received: stopping; HAProxy and the media rules stay programmed for the next edge process")
		}
	case first = <-errc:
	}
	cancel()
	wg.Wait()
	if first == nil {
		log.Info().Msg("edge proxy stopped")
	}
	return first
}

func socketAddr(s *settings) string {
	if s.attached {
		return s.haproxySocket
	}
	return s.haproxy.Socket
}

// supervised prepares the files of the HAProxy the edge runs and returns its supervisor. An
// existing map file is kept: HAProxy comes up with the routes it had.
func supervised(s *settings, client *haproxy.Client, onReady func(), log zerolog.Logger) (*haproxy.Supervisor, error) {
	if err := prepareTLS(s); err != nil {
		return nil, err
	}
	if _, err := os.Stat(s.haproxy.MapFile); errors.Is(err, os.ErrNotExist) {
		if err := haproxy.WriteMapFile(s.haproxy.MapFile, nil); err != nil {
			return nil, err
		}
	}
	changed, err := writeSupervisedConfig(s, s.haproxy)
	if err != nil {
		return nil, err
	}
	pruneKeyCopies(s.stateDir, s.haproxy.Tokens)
	return haproxy.NewSupervisor(s.haproxyBinary, s.configFile, s.pidFile, client,
		log.With().Str("component", "supervisor").Logger(), haproxy.OutputLog(log.With().Str("component", "haproxy").Logger()),
		haproxy.StopOnExit(s.haproxyStopOnExit), haproxy.ReloadAdopted(changed), haproxy.OnReady(onReady)), nil
}

func prepareTLS(s *settings) error {
	if s.selfCert {
		return tlscert.SelfSigned(s.haproxy.CertFile, tlscert.SelfSignedHosts(s.reconcile.PublicHost, s.publicIP), time.Now())
	}
	return tlscert.Combine(s.tlsCert, s.tlsKey, s.haproxy.CertFile)
}

func mediaPlane(ctx context.Context, s *settings, h Hooks, log zerolog.Logger) (media.Plane, error) {
	if !s.mediaOn {
		return media.Off{}, nil
	}
	if h.KernelMedia == nil {
		return nil, errors.New("--media=on: this build has no kernel media plane; run with --media=off")
	}
	return h.KernelMedia(ctx, MediaOptions{
		Ports: s.mediaPorts, PublicIP: s.publicIP, Quarantine: s.portQuarantine, SNAT: s.snat,
		BackendCIDRs: s.reconcile.Policy.BackendCIDRs, BackendPorts: s.reconcile.Policy.BackendPorts,
	}, log.With().Str("component", "media").Logger())
}

// retry calls fn until it succeeds or ctx ends: NATS may come up after the edge.
func retry(ctx context.Context, log zerolog.Logger, what string, fn func(context.Context) error) error {
	wait := 250 * time.Millisecond
	for {
		actx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := fn(actx)
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%s: %w", what, ctx.Err())
		}
		log.Warn().Err(err).Dur("retry_in", wait).Msg(what + " failed")
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w", what, ctx.Err())
		case <-time.After(wait):
		}
		wait = min(2*wait, 5*time.Second)
	}
}

type source struct{ r *reconcile.Reconciler }

func (s source) Healthy() error { return s.r.Healthy() }
func (s source) Routes() any    { return s.r.Routes() }

// HAProxyConfigCommand is `livegate-edgeproxy haproxy-config`: it prints the frontend and backend
// an operator's HAProxy needs for attached mode (--full: the whole configuration the edge would
// run itself).
func HAProxyConfigCommand(h Hooks) Command {
	return func(_ context.Context, args []string, stdout, stderr io.Writer) int {
		var full bool
		fs, f := newFlagSet("haproxy-config", stderr, append(h.driverFlags(), func(fs *flag.FlagSet) {
			fs.BoolVar(&full, "full", false, "print the whole configuration of a supervised HAProxy")
		}), "full")
		if err := f.parse(fs, args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return 0
			}
			return 2
		}
		c, err := f.haproxyConfig()
		if err != nil {
			fmt.Fprintf(stderr, "livegate-edgeproxy haproxy-config: %v\n", err)
			return 2
		}
		render := haproxy.RenderSections
		if full {
			render = haproxy.Render
		}
		text, err := render(c)
		if err != nil {
			fmt.Fprintf(stderr, "livegate-edgeproxy haproxy-config: %v\n", err)
			return 1
		}
		_, _ = io.WriteString(stdout, text)
		return 0
	}
}

// CheckConfigCommand is `livegate-edgeproxy check-config`: it validates the flags, the TLS files
// and, for a supervised HAProxy, has HAProxy check the rendered configuration; for another
// --driver it builds the driver, which checks its own settings and files.
func CheckConfigCommand(h Hooks) Command {
	return func(ctx context.Context, args []string, stdout, stderr io.Writer) int {
		s, code := h.parse("check-config", args, stderr)
		if s == nil {
			return code
		}
		if err := unreadableFiles(s); err != nil {
			fmt.Fprintf(stderr, "livegate-edgeproxy check-config: files missing or unreadable:\n%v\n", err)
			return 1
		}
		if err := checkConfig(ctx, s, h); err != nil {
			fmt.Fprintf(stderr, "livegate-edgeproxy check-config: %v\n", err)
			return 1
		}
		for _, w := range readableSecrets(s) {
			fmt.Fprintf(stderr, "livegate-edgeproxy check-config: warning: %s\n", w)
		}
		fmt.Fprintln(stdout, "configuration OK")
		return 0
	}
}

func checkConfig(ctx context.Context, s *settings, h Hooks) error {
	if d, ok := h.Drivers[string(s.driver)]; ok && s.driver.External() {
		_, err := d.New(ctx, s.haproxy, zerolog.Nop())
		return err
	}
	if s.attached {
		return nil
	}
	dir, err := os.MkdirTemp("", "livegate-check-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	c := s.haproxy
	c.CertFile = filepath.Join(dir, "tls.pem")
	c.MapFile = filepath.Join(dir, "sessions.map")
	c.Socket = filepath.Join(dir, "haproxy.sock")
	tmp := *s
	tmp.haproxy = c
	if err := prepareTLS(&tmp); err != nil {
		return err
	}
	if err := haproxy.WriteMapFile(c.MapFile, nil); err != nil {
		return err
	}
	text, err := haproxy.Render(c)
	if err != nil {
		return err
	}
	cfg := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(cfg, []byte(text), 0o600); err != nil {
		return err
	}
	out, err := exec.CommandContext(ctx, s.haproxyBinary, "-c", "-q", "-f", cfg).CombinedOutput()
	if err != nil {
		return fmt.Errorf("haproxy -c: %w: %s", err, out)
	}
	return nil
}
