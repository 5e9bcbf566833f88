// Package settings reads the agent's configuration from, lowest to highest precedence: defaults, a
// TOML file (a Kit .kit file's [settings] table is read as it is), LIVEGATE_AGENT_* environment
// variables, native flags and Kit-style flags (--/exts/<ext>/<key>=value). Anything unknown or
// malformed stops start-up with a message naming the setting and where it came from.
package settings

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unicode"

	"github.com/livegate/livegate/pkg/events"
	"github.com/livegate/livegate/pkg/natsconn"
	"github.com/livegate/livegate/pkg/sessionid"
	settingsload "github.com/livegate/livegate/pkg/settings"
)

// EnvPrefix starts every environment variable the agent reads.
const EnvPrefix = "LIVEGATE_AGENT_"

// The Kit extensions whose settings the agent understands.
const (
	SessionExt = "omni.services.livestream.session"
	HTTPExt    = "omni.services.transport.server.http"
)

// The reference app's default ports (docs/agent.md, --signaling-backend and --media-backend).
const (
	DefaultSignalingPort = 49100
	DefaultMediaPort     = 47998
)

// Settings is the agent's whole configuration.
type Settings struct {
	QuitOnSessionEnded       bool
	ResumeTimeoutSeconds     int
	WaitForSessionReadyEvent bool
	Port                     int
	Host                     string

	AppAddr  string
	AppProbe string
	// AppAddrAllowNonLoopback lets the app API listen beyond loopback, an operator's explicit choice.
	AppAddrAllowNonLoopback bool
	// APITokenFile holds the bearer token the session REST API requires (empty = none).
	APITokenFile   string
	OnSessionEnded string

	// NATS is the connection (--nats-url empty: none) and the copy count of the buckets and the
	// event stream this agent creates, defined with the edge's in pkg/natsconn.
	NATS natsconn.Flags

	InstanceID       string
	Pool             string
	SessionID        string
	SignalingBackend string
	MediaBackends    []string
	BackendIP        string
	EdgeID           string
	LeaseTTL         time.Duration
	ShutdownTimeout  time.Duration

	LogLevel  string
	LogFormat string

	// ConfigFile is the TOML file read, if any.
	ConfigFile string
	// Action is OnSessionEnded parsed.
	Action Action
	// Sources says where each setting that is not a default came from.
	Sources settingsload.Sources
}

// Defaults returns the settings before any source is read.
func Defaults() Settings {
	return Settings{
		QuitOnSessionEnded:   true,
		ResumeTimeoutSeconds: 30,
		Port:                 8011,
		AppAddr:              "127.0.0.1:8012",
		OnSessionEnded:       "exit",
		Pool:                 "default",
		SignalingBackend:     fmt.Sprintf(":%d", DefaultSignalingPort),
		MediaBackends:        []string{fmt.Sprintf(":%d", DefaultMediaPort)},
		LeaseTTL:             15 * time.Second,
		ShutdownTimeout:      5 * time.Second,
		LogLevel:             "info",
		LogFormat:            "auto",
	}
}

// def describes one setting and all its spellings.
type def struct {
	// name is the flag, TOML key and (upper-cased, - as _) environment variable suffix.
	name string
	// kit is the Kit path "exts/<ext>/<key>", when the setting has one.
	kit   string
	usage string
	ptr   func(*Settings) any
}

var defs = []def{
	{"quit-on-session-ended", "exts/" + SessionExt + "/quitOnSessionEnded", "run --on-session-ended when a session ends, instead of serving the next one", func(s *Settings) any { return &s.QuitOnSessionEnded }},
	{"resume-timeout-seconds", "exts/" + SessionExt + "/resumeTimeoutSeconds", "seconds a session waits for its client to come back (0 = no resumption)", func(s *Settings) any { return &s.ResumeTimeoutSeconds }},
	{"wait-for-session-ready-event", "exts/" + SessionExt + "/waitForSessionReadyEvent", "require the app's session-ready event before a session is ready for connection", func(s *Settings) any { return &s.WaitForSessionReadyEvent }},
	{"port", "exts/" + HTTPExt + "/port", "port of the session REST API", func(s *Settings) any { return &s.Port }},
	{"host", "", "address the session REST API listens on (empty = all)", func(s *Settings) any { return &s.Host }},
	{"app-addr", "", "loopback host:port of the app API", func(s *Settings) any { return &s.AppAddr }},
	{"app-addr-allow-nonloopback", "", "let --app-addr be a non-loopback address (the app API hands out credentials; a warning is logged)", func(s *Settings) any { return &s.AppAddrAllowNonLoopback }},
	{"api-token-file", "", "file holding the bearer token every /v1/streaming/* request but startup and ready must carry (empty = no token)", func(s *Settings) any { return &s.APITokenFile }},
	{"app-probe", "", "host:port; the app counts as ready once it accepts TCP connections", func(s *Settings) any { return &s.AppProbe }},
	{"on-session-ended", "", "exit | signal:PIDFILE:SIGNAL | exec:COMMAND, run when a session ends and quit-on-session-ended is set", func(s *Settings) any { return &s.OnSessionEnded }},
	{"instance-id", "", "this instance's id: route key and event subject token (default: the host name up to its first dot)", func(s *Settings) any { return &s.InstanceID }},
	{"pool", "", "pool of edges that serve this instance", func(s *Settings) any { return &s.Pool }},
	{"session-id", "", "the first session's id (default: a fresh random id per session)", func(s *Settings) any { return &s.SessionID }},
	{"signaling-backend", "", "the app's signaling ip:port; an empty ip means --backend-ip", func(s *Settings) any { return &s.SignalingBackend }},
	{"media-backend", "", "the app's media `ip:port`, repeatable and comma-separated; an empty ip means --backend-ip", func(s *Settings) any { return &s.MediaBackends }},
	{"backend-ip", "", "ip used where a backend has none (default: this host's first global unicast IPv4 address)", func(s *Settings) any { return &s.BackendIP }},
	{"edge-id", "", "ask for this edge instead of any edge of the pool", func(s *Settings) any { return &s.EdgeID }},
	{"lease-ttl", "", "lifetime of the route key without renewal; renewed every third of it", func(s *Settings) any { return &s.LeaseTTL }},
	{"shutdown-timeout", "", "how long stopping may take to flush events and delete the route", func(s *Settings) any { return &s.ShutdownTimeout }},
	{"log-level", "", "trace, debug, info, warn or error", func(s *Settings) any { return &s.LogLevel }},
	{"log-format", "", "auto, json or console", func(s *Settings) any { return &s.LogFormat }},
}

// ErrHelp is returned when -h or --help was asked for; the usage has been written.
var ErrHelp = flag.ErrHelp

// ErrVersion is returned when --version was asked for.
var ErrVersion = errors.New("version asked for")

// loader holds the agent's rules beyond its flags: the Kit-style flags and the Kit file's
// [settings] table.
var loader = settingsload.Loader{
	EnvPrefix: EnvPrefix,
	FlagsOnly: map[string]bool{"version": true},
	Secrets:   secrets(natsconn.Secret),
	Entries:   fileEntries,
	Late:      kitFlag,
	LateName:  "Kit-style flags",
}

// Load reads every source. args are the command-line arguments without the program name; environ
// is os.Environ(); usage receives the help text.
func Load(args, environ []string, usage io.Writer) (*Settings, error) {
	s := Defaults()
	fs, version := newFlagSet(&s, usage)
	src, err := loader.Load(fs, args, environ)
	if err != nil {
		return nil, err
	}
	if *version {
		return nil, ErrVersion
	}
	s.Sources = src
	if err := s.finish(); err != nil {
		return nil, err
	}
	return &s, nil
}

// newFlagSet defines every setting as a flag of s, its default the value s holds.
func newFlagSet(s *Settings, usage io.Writer) (fs *flag.FlagSet, version *bool) {
	fs = flag.NewFlagSet("livegate-agent", flag.ContinueOnError)
	fs.SetOutput(usage)
	for _, d := range defs {
		text := d.usage
		if d.kit != "" {
			text += "; Kit: --/" + d.kit
		}
		switch p := d.ptr(s).(type) {
		case *bool:
			fs.BoolVar(p, d.name, *p, text)
		case *int:
			fs.IntVar(p, d.name, *p, text)
		case *string:
			fs.StringVar(p, d.name, *p, text)
		case *time.Duration:
			fs.DurationVar(p, d.name, *p, text)
		case *[]string:
			fs.Var(settingsload.NewList(p), d.name, text)
		}
	}
	s.NATS.Register(fs, "", "no NATS")
	s.NATS.RegisterReplicas(fs, "agent")
	fs.StringVar(&s.ConfigFile, settingsload.ConfigFlag, "", "TOML settings file; a Kit .kit file's [settings] table is read as it is")
	version = fs.Bool("version", false, "print the version and build, then exit")
	loader.Annotate(fs)
	fs.Usage = loader.Usage(fs, "livegate-agent [flags]", "")
	return fs, version
}

// kitFlag reads a Kit-style flag, --/exts/<ext>/<key>=value.
func kitFlag(arg string) (settingsload.Late, bool, error) {
	rest, ok := strings.CutPrefix(arg, "--/")
	if !ok {
		return settingsload.Late{}, false, nil
	}
	path, val, ok := strings.Cut(rest, "=")
	name := "--/" + path
	if strings.ContainsFunc(name, unicode.IsControl) {
		// Quoted, so that no line of a refusal starts with what was typed.
		name = strconv.Quote(name)
	}
	if !ok {
		return settingsload.Late{}, true, fmt.Errorf("flag %s: Kit-style flags need =value", name)
	}
	d, _ := kitDef(path)
	return settingsload.Late{Source: "flag " + name, Flag: d.name, Value: val, Hint: kitFlagHint()}, true, nil
}

// kitFlagHint names the Kit-style flags there are, for one that names none.
func kitFlagHint() string {
	var flags []string
	for _, d := range defs {
		if d.kit != "" {
			flags = append(flags, "--/"+d.kit)
		}
	}
	return "the Kit-style flags are " + strings.Join(flags, ", ")
}

// kitKeyHint names the keys under extension ext of a .kit file's [settings] there are, for one
// that names none.
func kitKeyHint(ext string) string {
	var keys []string
	for _, d := range defs {
		if k, ok := strings.CutPrefix(d.kit, "exts/"+ext+"/"); ok {
			keys = append(keys, k)
		}
	}
	return fmt.Sprintf("the keys of settings.exts.%q are %s", ext, strings.Join(keys, ", "))
}

// secrets is names as a set.
func secrets(names []string) map[string]bool {
	out := map[string]bool{}
	for _, n := range names {
		out[n] = true
	}
	return out
}

// fileEntries reads a TOML file's values. In a .kit file only [settings] matters, and in it only
// the two extensions the agent stands in for; any other file holds native keys at the top level too.
func fileEntries(path string, doc map[string]any) ([]settingsload.Entry, error) {
	kit := strings.EqualFold(filepath.Ext(path), ".kit")
	var out []settingsload.Entry
	for _, k := range slices.Sorted(maps.Keys(doc)) {
		v := doc[k]
		if k == "settings" {
			entries, err := kitEntries(path, v)
			if err != nil {
				return nil, err
			}
			out = append(out, entries...)
			continue
		}
		if !kit {
			out = append(out, settingsload.Entry{Key: k, Flag: k, Value: v})
		}
	}
	return out, nil
}

func kitEntries(path string, v any) ([]settingsload.Entry, error) {
	settings, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("config %s: settings: want a table", path)
	}
	exts, ok := settings["exts"]
	if !ok {
		return nil, nil
	}
	extTable, ok := exts.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("config %s: settings.exts: want a table", path)
	}
	var out []settingsload.Entry
	for _, ext := range []string{SessionExt, HTTPExt} {
		raw, ok := extTable[ext]
		if !ok {
			continue
		}
		where := fmt.Sprintf("settings.exts.%q", ext)
		table, ok := raw.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("config %s: %s: want a table", path, where)
		}
		for _, k := range slices.Sorted(maps.Keys(table)) {
			d, _ := kitDef("exts/" + ext + "/" + k)
			out = append(out, settingsload.Entry{Key: where + "." + k, Flag: d.name, Value: table[k], Hint: kitKeyHint(ext)})
		}
	}
	return out, nil
}

func kitDef(path string) (def, bool) {
	for _, d := range defs {
		if d.kit == path {
			return d, true
		}
	}
	return def{}, false
}

// finish fills derived defaults and validates the result. Every refusal names the setting's
// source (pkg/settings Sources.Errorf), one a line, all at once.
func (s *Settings) finish() error {
	var errs []error
	bad := func(name, format string, a ...any) {
		errs = append(errs, s.Sources.Errorf(name, format, a...))
	}
	if s.Port < 1 || s.Port > 65535 {
		bad("port", "%d is not a port from 1 to 65535", s.Port)
	}
	if s.ResumeTimeoutSeconds < 0 || s.ResumeTimeoutSeconds > 86400 {
		bad("resume-timeout-seconds", "%d is not from 0 to 86400", s.ResumeTimeoutSeconds)
	}
	if s.Host != "" {
		if _, err := netip.ParseAddr(s.Host); err != nil {
			bad("host", "%q is not an IP address", s.Host)
		}
	}
	if s.AppAddrAllowNonLoopback {
		if _, err := hostPort(s.AppAddr); err != nil {
			bad("app-addr", "%v", err)
		}
	} else if err := checkLoopback(s.AppAddr); err != nil {
		bad("app-addr", "%v (set app-addr-allow-nonloopback to allow it)", err)
	}
	if s.AppProbe != "" {
		if _, err := hostPort(s.AppProbe); err != nil {
			bad("app-probe", "%v", err)
		}
	}
	action, err := ParseAction(s.OnSessionEnded)
	if err != nil {
		bad("on-session-ended", "%v", err)
	}
	s.Action = action
	var hostErr error
	if s.InstanceID == "" {
		var host string
		host, hostErr = os.Hostname()
		s.InstanceID, _, _ = strings.Cut(host, ".")
	}
	if hostErr != nil {
		bad("instance-id", "not set, and the host name is unknown: %v", hostErr)
	} else if err := events.ValidateToken("instance id", s.InstanceID); err != nil {
		bad("instance-id", "%v", err)
	}
	if err := events.ValidateToken("pool", s.Pool); err != nil {
		bad("pool", "%v", err)
	}
	if s.EdgeID != "" {
		if err := events.ValidateToken("edge id", s.EdgeID); err != nil {
			bad("edge-id", "%v", err)
		}
	}
	if s.SessionID != "" {
		if err := sessionid.Validate(s.SessionID); err != nil {
			bad("session-id", "%v", err)
		}
	}
	if s.LeaseTTL < time.Second || s.LeaseTTL > time.Hour {
		bad("lease-ttl", "%s is not from 1s to 1h", s.LeaseTTL)
	}
	if s.ShutdownTimeout <= 0 {
		bad("shutdown-timeout", "%s is not positive", s.ShutdownTimeout)
	}
	if s.NATS.URL == "" {
		return errors.Join(errs...)
	}
	for _, r := range s.NATS.Check(true) {
		bad(r.Flag, "%v", r.Err)
	}
	if s.BackendIP != "" {
		if _, err := netip.ParseAddr(s.BackendIP); err != nil {
			bad("backend-ip", "%q is not an IP address", s.BackendIP)
			// Every backend without an ip would be refused for it again.
			return errors.Join(errs...)
		}
	}
	if s.SignalingBackend, err = s.backend(s.SignalingBackend); err != nil {
		bad("signaling-backend", "%v", err)
	}
	if len(s.MediaBackends) == 0 {
		bad("media-backend", "at least one media backend is needed")
	}
	for i, b := range s.MediaBackends {
		if s.MediaBackends[i], err = s.backend(b); err != nil {
			bad("media-backend", "%v", err)
		}
	}
	return errors.Join(errs...)
}

// backend checks an "ip:port" backend, filling an empty ip from backend-ip.
func (s *Settings) backend(b string) (string, error) {
	host, port, err := net.SplitHostPort(b)
	if err != nil {
		return "", fmt.Errorf("%q is not ip:port", b)
	}
	if host == "" {
		if s.BackendIP == "" {
			ip, err := firstGlobalIPv4()
			if err != nil {
				return "", fmt.Errorf("%q has no ip and %w; set backend-ip", b, err)
			}
			s.BackendIP = ip.String()
		}
		host = s.BackendIP
	}
	ap, err := netip.ParseAddrPort(net.JoinHostPort(host, port))
	if err != nil || ap.Port() == 0 {
		return "", fmt.Errorf("%q is not ip:port", b)
	}
	return ap.String(), nil
}

func firstGlobalIPv4() (netip.Addr, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return netip.Addr{}, fmt.Errorf("interface addresses: %w", err)
	}
	for _, a := range addrs {
		pfx, err := netip.ParsePrefix(a.String())
		if err != nil {
			continue
		}
		if ip := pfx.Addr(); ip.Is4() && ip.IsGlobalUnicast() {
			return ip, nil
		}
	}
	return netip.Addr{}, errors.New("this host has no global unicast IPv4 address")
}

func hostPort(hp string) (netip.AddrPort, error) {
	host, port, err := net.SplitHostPort(hp)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%q is not host:port", hp)
	}
	if host == "localhost" {
		host = "127.0.0.1"
	}
	ap, err := netip.ParseAddrPort(net.JoinHostPort(host, port))
	if err != nil || ap.Port() == 0 {
		return netip.AddrPort{}, fmt.Errorf("%q is not ip:port", hp)
	}
	return ap, nil
}

// checkLoopback insists that the app API, which hands out credentials, is reachable only locally.
func checkLoopback(hp string) error {
	ap, err := hostPort(hp)
	if err != nil {
		return err
	}
	if !ap.Addr().IsLoopback() {
		return fmt.Errorf("%q is not a loopback address; the app API hands out credentials", hp)
	}
	return nil
}

// ActionKind is what happens when a session ends and the instance is recycled.
type ActionKind int

// The on-session-ended actions.
const (
	ActionExit ActionKind = iota
	ActionSignal
	ActionExec
)

// Action is a parsed --on-session-ended.
type Action struct {
	Kind    ActionKind
	PIDFile string
	Signal  syscall.Signal
	Command string
}

var signals = map[string]syscall.Signal{
	"HUP": syscall.SIGHUP, "INT": syscall.SIGINT, "QUIT": syscall.SIGQUIT, "KILL": syscall.SIGKILL,
	"USR1": syscall.SIGUSR1, "USR2": syscall.SIGUSR2, "TERM": syscall.SIGTERM,
}

// ParseAction reads "exit", "signal:PIDFILE:SIGNAL" or "exec:COMMAND".
func ParseAction(s string) (Action, error) {
	switch {
	case s == "exit":
		return Action{Kind: ActionExit}, nil
	case strings.HasPrefix(s, "signal:"):
		rest := strings.TrimPrefix(s, "signal:")
		i := strings.LastIndex(rest, ":")
		if i <= 0 {
			return Action{}, fmt.Errorf("%q: want signal:PIDFILE:SIGNAL", s)
		}
		name := strings.TrimPrefix(strings.ToUpper(rest[i+1:]), "SIG")
		sig, ok := signals[name]
		if !ok {
			n, err := strconv.Atoi(name)
			if err != nil || n < 1 || n > 64 {
				return Action{}, fmt.Errorf("%q: unknown signal %q", s, rest[i+1:])
			}
			sig = syscall.Signal(n)
		}
		return Action{Kind: ActionSignal, PIDFile: rest[:i], Signal: sig}, nil
	case strings.HasPrefix(s, "exec:") && strings.TrimSpace(strings.TrimPrefix(s, "exec:")) != "":
		return Action{Kind: ActionExec, Command: strings.TrimPrefix(s, "exec:")}, nil
	}
	return Action{}, fmt.Errorf("%q: want exit, signal:PIDFILE:SIGNAL or exec:COMMAND", s)
}

// Names lists every native setting name, for documentation checks.
func Names() []string {
	out := make([]string, len(defs))
	for i, d := range defs {
		out[i] = d.name
	}
	return out
}
